"""One incremental decoding step of a fairseq Transformer decoder as plain products: issue 35's batch-1 probe.

At batch 1 a decoding step is bound by the operators it dispatches, not by its FLOPs or the weights it reads
(``benchmarks/results/step_ops.json``). ``LeanDecoder`` computes what fairseq's ``TransformerDecoder`` computes for one
new token of every hypothesis — embedding and positions, each layer's self-attention over a preallocated key/value
cache, cross-attention over keys and values computed once per source sentence, the feed-forward block, the output
projection and log-softmax — with no incremental-state dictionaries, module hooks or per-call checks in between. A
factorized matrix stays two products. ``python3 -m benchmarks.lean_step`` times it against fairseq's decoder; it is not
yet what the tasks' generators decode with.

Supported: post- or pre-norm layers with sinusoidal positions, dense or low-rank (``LowRankLinear``) projections and
output projection; anything else (learned positions, scaled attention or heads, an extra FFN layer norm, a key bias,
...) is refused at construction with the feature named.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lowrank.layers import Factors

Products = List[Tuple[Tensor, Optional[Tensor]]]


def products(proj: nn.Module) -> Products:
    """A projection as the matrix products it applies in order: ``[(W, b)]`` for a Linear, ``[(down, None), (up, b)]``
    for a factorized one."""
    if isinstance(proj, Factors):
        return [(proj.down.weight, None), (proj.up.weight, proj.up.bias)]
    if isinstance(proj, nn.Linear):
        return [(proj.weight, proj.bias)]
    raise ValueError(f"LeanDecoder: cannot apply a {type(proj).__name__} as products")


def apply(x: Tensor, steps: Products) -> Tensor:
    for weight, bias in steps:
        x = F.linear(x, weight, bias)
    return x


def _refuse(decoder) -> Optional[str]:
    """What of ``decoder`` LeanDecoder does not compute, or None."""
    from fairseq.modules import SinusoidalPositionalEmbedding

    if not isinstance(decoder.embed_positions, SinusoidalPositionalEmbedding):
        return f"positions {type(decoder.embed_positions).__name__} (sinusoidal only)"
    if decoder.project_in_dim is not None or decoder.project_out_dim is not None:
        return "an input or output projection of the embedding dimension"
    if getattr(decoder, "adaptive_softmax", None) is not None:
        return "an adaptive softmax"
    if getattr(decoder, "alignment_layer", None) is not None and getattr(decoder, "alignment_heads", None):
        return "alignment heads"
    for i, layer in enumerate(decoder.layers):
        for name in ("attn_ln", "c_attn", "ffn_layernorm", "w_resid"):
            if getattr(layer, name, None) is not None:
                return f"layer {i}: {name}"
        if getattr(layer, "cross_self_attention", False) or layer.encoder_attn is None:
            return f"layer {i}: no separate cross-attention"
        for attn in (layer.self_attn, layer.encoder_attn):
            if attn.bias_k is not None or attn.add_zero_attn:
                return f"layer {i}: a key/value bias or zero attention"
    return None


class LeanDecoder:
    """Incremental decoding of ``decoder`` (a fairseq ``TransformerDecoder`` in eval mode) for ``sentences × beam``
    hypotheses: ``start`` once per batch, then ``step`` per token and ``reorder`` as the beam search reorders its
    hypotheses. Log-probabilities equal fairseq's decoder's up to float rounding
    (``tests/test_lean_step.py``)."""

    def __init__(self, decoder):
        why = _refuse(decoder)
        if why:
            raise NotImplementedError(f"LeanDecoder does not compute {why}")
        self.decoder = decoder
        self.layers = [{
            "q": products(layer.self_attn.q_proj), "k": products(layer.self_attn.k_proj),
            "v": products(layer.self_attn.v_proj), "o": products(layer.self_attn.out_proj),
            "cq": products(layer.encoder_attn.q_proj), "ck": products(layer.encoder_attn.k_proj),
            "cv": products(layer.encoder_attn.v_proj), "co": products(layer.encoder_attn.out_proj),
            "f1": products(layer.fc1), "f2": products(layer.fc2), "act": layer.activation_fn,
            "ln1": layer.self_attn_layer_norm, "ln2": layer.encoder_attn_layer_norm, "ln3": layer.final_layer_norm,
            "pre": layer.normalize_before, "heads": layer.self_attn.num_heads, "scaling": layer.self_attn.scaling,
            "cross_heads": layer.encoder_attn.num_heads, "cross_scaling": layer.encoder_attn.scaling,
        } for layer in decoder.layers]
        self.output = products(decoder.output_projection)
        self.positions = decoder.embed_positions

    def start(self, encoder_out: Tensor, padding: Optional[Tensor], beam: int, max_len: int):
        """``encoder_out`` (S x sentences x d) and its padding mask (sentences x S) of each source sentence once;
        caches for ``max_len`` steps of ``sentences × beam`` hypotheses (hypothesis i of sentence i // beam)."""
        n, d = encoder_out.size(1), encoder_out.size(2)
        self.beam, self.t, self.rows = beam, 0, n * beam
        enc = encoder_out.transpose(0, 1)  # n x S x d
        self.mask = None if padding is None or not padding.any() else padding.view(n, 1, 1, -1)
        self.cache = []
        for layer in self.layers:
            h, ch = layer["heads"], layer["cross_heads"]
            # n x H x S x hd: each sentence's keys and values, once
            cross = [apply(enc, layer[k]).view(n, -1, ch, d // ch).transpose(1, 2) for k in ("ck", "cv")]
            self.cache.append({"k": enc.new_zeros(self.rows, h, max_len, d // h),
                               "v": enc.new_zeros(self.rows, h, max_len, d // h), "ck": cross[0], "cv": cross[1]})

    def reorder(self, order: Tensor):
        """Hypothesis i takes over the self-attention caches of hypothesis ``order[i]`` (of the same sentence)."""
        for c in self.cache:
            c["k"], c["v"] = c["k"].index_select(0, order), c["v"].index_select(0, order)

    def step(self, tokens: Tensor) -> Tensor:
        """Log-probabilities (rows x V) of the next token after ``tokens`` (rows: each hypothesis's last token)."""
        x = self.decoder.embed_scale * self.decoder.embed_tokens(tokens) + self.positions.weights[
            self.positions.padding_idx + 1 + self.t]
        if self.decoder.layernorm_embedding is not None:
            x = self.decoder.layernorm_embedding(x)
        for layer, c in zip(self.layers, self.cache):
            for block, norm in ((self._self_attention, layer["ln1"]), (self._cross_attention, layer["ln2"]),
                                (self._feed_forward, layer["ln3"])):
                x = x + block(layer, c, norm(x)) if layer["pre"] else norm(x + block(layer, c, x))
        if self.decoder.layer_norm is not None:
            x = self.decoder.layer_norm(x)
        self.t += 1
        return F.log_softmax(apply(x, self.output), dim=-1)

    def _self_attention(self, layer, c, y):
        """Attention of each hypothesis over its own tokens so far; this step's key and value go into the cache."""
        t, rows, h, d = self.t, self.rows, layer["heads"], y.size(-1)
        q = apply(y, layer["q"]).mul_(layer["scaling"]).view(rows, h, 1, d // h)
        c["k"][:, :, t] = apply(y, layer["k"]).view(rows, h, d // h)
        c["v"][:, :, t] = apply(y, layer["v"]).view(rows, h, d // h)
        a = torch.softmax(q @ c["k"][:, :, :t + 1].transpose(-1, -2), dim=-1)
        return apply((a @ c["v"][:, :, :t + 1]).view(rows, d), layer["o"])

    def _cross_attention(self, layer, c, y):
        """Attention of every beam of a sentence over that sentence's keys and values (computed once, in start)."""
        n, beam, ch, d = self.rows // self.beam, self.beam, layer["cross_heads"], y.size(-1)
        q = apply(y, layer["cq"]).mul_(layer["cross_scaling"]).view(n, beam, ch, d // ch).transpose(1, 2)
        scores = q @ c["ck"].transpose(-1, -2)  # n x H x beam x S
        if self.mask is not None:
            scores = scores.masked_fill(self.mask, float("-inf"))
        ctx = torch.softmax(scores, dim=-1) @ c["cv"]  # n x H x beam x hd
        return apply(ctx.transpose(1, 2).reshape(self.rows, d), layer["co"])

    @staticmethod
    def _feed_forward(layer, c, y):
        return apply(layer["act"](apply(y, layer["f1"])), layer["f2"])
