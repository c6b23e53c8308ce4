"""Encoder states once per source sentence during beam search, for any fairseq encoder-decoder model.

fairseq's ``SequenceGenerator`` copies the encoder output and its padding mask for every beam, and every decoder
layer's cross-attention computes and caches its keys and values per beam; all of them are reordered
(``index_select``) at every step although the beams of one sentence share them. ``PerSentenceEnsemble`` keeps them
once per sentence:

- the encoder output and padding mask are not expanded to the beams, and are gathered by sentence only when the
  batch shrinks (finished sentences leave it);
- each decoder layer's cross-attention then reads keys of ``sentences`` rows for queries of ``sentences·beam`` rows
  (fairseq's attention supports it: BART's beamable cross-attention): keys and values are computed once per sentence;
  its cache is gathered by sentence only when the batch shrinks (fairseq's ``reorder_incremental_state`` with the
  beam size set for that call only: the models are left as they were).

Each decoding step is then ``LeanDecoder``'s (``makd_fairseq/lean_step.py``: plain products, preallocated caches, the
latent cache of a prepared student) for a single model it computes; an ensemble, another decoder or a model in
training mode gets fairseq's own step.

The tasks of this plugin build their generators with it (``PerSentenceGeneratorMixin``; ``--encoder-states-per-beam``
restores fairseq's behaviour, ``--fairseq-decoder-step`` keeps fairseq's step); hypotheses and scores are those of
fairseq's generator up to float rounding.
"""

import logging
from typing import Dict, List, Optional

import torch
from fairseq.sequence_generator import EnsembleModel
from torch import Tensor

from .lean_step import LeanDecoder, refusal

logger = logging.getLogger(__name__)


class PerSentenceEnsemble(EnsembleModel):
    """fairseq's ``EnsembleModel`` keeping encoder states once per source sentence (see the module docstring)."""

    beam_size = 1
    _expanded = True  # until forward_encoder: every reorder indexes beams
    _cross_attention = ()

    def __init__(self, models, lean: bool = True):
        super().__init__(models)
        # LeanDecoder's step for one model it computes (its cache in the generator's incremental state)
        why = None if not lean else ("an ensemble" if len(models) > 1 else refusal(models[0].decoder))
        self.lean = lean and why is None
        if why:
            logger.info(f"decoding with fairseq's decoder step: LeanDecoder does not compute {why}")

    def _lean(self, incremental_states) -> Optional[LeanDecoder]:
        return incremental_states[0].get("lean") if self.lean else None  # type: ignore[return-value]

    @torch.jit.unused
    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):
        if not self.lean or self.single_model.training:  # dropout: fairseq's step
            return super().forward_decoder(tokens, encoder_outs, incremental_states, temperature)
        lean = self._lean(incremental_states)
        if lean is None:  # the first step of a batch: keys and values of each source sentence, caches
            enc = encoder_outs[0]
            lean = LeanDecoder(self.single_model.decoder)
            lean.start(enc["encoder_out"][0], (enc["encoder_padding_mask"] or [None])[0], self.beam_size)
            incremental_states[0]["lean"] = lean  # type: ignore[assignment]
        return lean.step(tokens[:, -1], temperature), lean.attn

    def set_decoder_beam_size(self, beam_size: int):
        self.beam_size = beam_size
        self._cross_attention = [m for model in self.models for m in model.decoder.modules()
                                 if getattr(m, "encoder_decoder_attention", False) and hasattr(m, "set_beam_size")]

    @torch.jit.unused
    def reorder_incremental_state(self, incremental_states, new_order: Tensor):
        """fairseq's cross-attention keeps a cache of one row per sentence and gathers it by sentence when told the
        beam size; told only for this call, so that the models stay as they were for any other generator."""
        lean = self._lean(incremental_states)
        if lean is not None:
            return lean.reorder(new_order)
        before = [m.beam_size for m in self._cross_attention]
        for m in self._cross_attention:
            m.set_beam_size(self.beam_size)
        try:
            super().reorder_incremental_state(incremental_states, new_order)
        finally:
            for m, size in zip(self._cross_attention, before):
                m.set_beam_size(size)

    @torch.jit.unused
    def forward_encoder(self, net_input: Dict[str, Tensor]):
        self._expanded = False  # the next reorder is the generator's copy of each sentence for its beams
        return super().forward_encoder(net_input)

    @torch.jit.unused
    def reorder_encoder_out(self, encoder_outs: Optional[List[Dict[str, List[Tensor]]]], new_order: Tensor):
        if not self._expanded:  # sentence i for each of its beams: the states stay one per sentence
            self._expanded = True
            return encoder_outs
        # new_order indexes beams (sentence·beam + k) and keeps each in its sentence: the sentences kept, in order
        sentences = new_order.view(-1, self.beam_size)[:, 0] // self.beam_size
        rows = encoder_outs[0]["encoder_out"][0].size(1) if encoder_outs and encoder_outs[0]["encoder_out"] else -1
        if sentences.numel() == rows and torch.equal(sentences, torch.arange(rows, device=sentences.device)):
            return encoder_outs
        return super().reorder_encoder_out(encoder_outs, sentences)


def per_sentence(models, args) -> bool:
    """Whether ``PerSentenceEnsemble`` applies: beam search over encoder-decoder models with incremental decoders
    (fairseq's scorer and its alignment generator take their own ensembles)."""
    return (not getattr(args, "score_reference", False) and not getattr(args, "print_alignment", False)
            and all(getattr(m, "encoder", None) is not None and hasattr(m.decoder, "set_beam_size") for m in models))


class PerSentenceGeneratorMixin:
    """A fairseq task whose generators keep encoder states once per sentence unless ``cfg.encoder_states_per_beam``,
    and decode with ``LeanDecoder``'s step unless ``cfg.fairseq_decoder_step``."""

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        if (seq_gen_cls is None and not getattr(self.cfg, "encoder_states_per_beam", False)
                and not isinstance(models, EnsembleModel) and per_sentence(models, args)):
            models = PerSentenceEnsemble(models, lean=not getattr(self.cfg, "fairseq_decoder_step", False))
        return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)
