"""``lowrank_transformer``: fairseq's Transformer with its target projections factorized.

The ranks are part of the model config (``--lowrank-ranks``, a JSON object name -> rank), so a
checkpoint rebuilds itself in ``fairseq-generate``. They come from, in this order:
``--lowrank-ranks`` (JSON text, a JSON file, or a checkpoint holding them), ``--rank`` /
``--rank-ratio`` / ``--param-budget`` (uniform allocation, for training from scratch), or the
checkpoint given by ``--finetune-from-model`` (a ``makd-init`` student).
"""

import json
import logging
import os
from dataclasses import dataclass, field, fields
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.bart.model import bart_base_architecture
from fairseq.models.transformer.transformer_legacy import (
    TransformerModel,
    base_architecture,
    transformer_iwslt_de_en,
    transformer_vaswani_wmt_en_de_big,
    transformer_wmt_en_de,
)

from ..checkpoint import load_checkpoint, model_args
from ..student import shape_from_student
from ..lowrank import (
    ALLOCATIONS,
    DEFAULT_TARGETS,
    allocate_ranks,
    count_params,
    dumps_ranks,
    factorize_,
    find_targets,
    latent_cache_,
    merge_past_break_even_,
    share_inputs_,
    svd_matrices,
)

logger = logging.getLogger(__name__)


@dataclass
class RankConfig(FairseqDataclass):
    """The flags that choose ranks: the one definition makd-init, ``lowrank_transformer`` and
    ``lowrank_transformer_lm`` take them from (argparse flags through fairseq's ``gen_parser_from_dataclass``)."""

    rank: Optional[int] = field(default=None, metadata={"help": "the same rank for every target matrix"})
    rank_ratio: Optional[float] = field(default=None, metadata={
        "help": "rank = F * min(d_out, d_in) for every target matrix"})
    param_budget: Optional[float] = field(default=None, metadata={
        "help": "student parameters as a fraction of the dense model's (embeddings included)"})
    allocation: ChoiceEnum(ALLOCATIONS) = field(default="uniform", metadata={
        "help": "how --param-budget is spread: uniform (same compression for every matrix) or spectrum (by "
                "singular-value energy, needs trained weights)"})
    lowrank_targets: str = field(default=",".join(DEFAULT_TARGETS), metadata={
        "argparse_alias": "--targets",
        "help": "comma-separated matrices to factorize: a leaf name (fc1) or an fnmatch pattern over the full name "
                "(decoder.layers.*.fc1); the vocabulary matrix too with embed_tokens and/or output_projection (tied "
                "ones are one matrix: naming either factorizes both)"})


@dataclass
class LowRankConfig(RankConfig):
    """A low-rank model's config: the ranks themselves, or the flags that choose them."""

    lowrank_ranks: Optional[str] = field(default=None, metadata={
        "help": "per-matrix ranks: JSON text, a .json file, or a student checkpoint"})
    no_latent_cache: bool = field(default=False, metadata={
        "help": "inference: keep fairseq's self-attention cache of keys and values (d wide each) instead of the "
                "factorized keys' and values' latents (r wide), e.g. fairseq-generate --model-overrides "
                "\"{'no_latent_cache': True}\""})


def add_rank_args(parser):
    """``RankConfig``'s flags on an argparse parser (makd-init's)."""
    gen_parser_from_dataclass(parser, RankConfig())


def read_ranks(spec: str) -> dict:
    """Ranks from JSON text, a JSON file, or a checkpoint whose model config holds them."""
    if spec.lstrip().startswith("{"):
        return json.loads(spec)
    if not os.path.isfile(spec):
        raise ValueError(f"--lowrank-ranks {spec}: neither JSON nor an existing file")
    if spec.endswith(".json"):
        with open(spec) as f:
            return json.load(f)
    ranks = getattr(model_args(load_checkpoint(spec)), "lowrank_ranks", None)
    if not ranks:
        raise ValueError(f"{spec}: this checkpoint holds no low-rank student (no lowrank_ranks)")
    return json.loads(ranks)


def choose_ranks(args, model) -> dict:
    """Ranks for the dense ``model`` built from ``args`` (see the module docstring for the order)."""
    if getattr(args, "lowrank_ranks", None):
        return read_ranks(args.lowrank_ranks)
    if any(getattr(args, k, None) is not None for k in ("rank", "rank_ratio", "param_budget")):
        targets = find_targets(model, args.lowrank_targets.split(","))
        matrices, _ = svd_matrices(targets, with_spectrum=args.allocation == "spectrum")
        return allocate_ranks(
            matrices, count_params(model), rank=args.rank, rank_ratio=args.rank_ratio,
            param_budget=args.param_budget, allocation=args.allocation,
        )
    init = getattr(args, "finetune_from_model", None)
    if init and os.path.isfile(init):
        logger.info(f"low-rank model: ranks from --finetune-from-model {init}")
        return read_ranks(init)
    raise ValueError(
        "a low-rank model needs ranks: give --lowrank-ranks (a makd-init student checkpoint or "
        "JSON), --rank, --rank-ratio or --param-budget, or --finetune-from-model a makd-init student"
    )


class LowRankMixin:
    """Factorizes the dense model its base class builds, and merges factors past break-even at inference."""

    @classmethod
    def build_model(cls, args, task):
        model = super().build_model(args, task)
        ranks = choose_ranks(args, model)
        factorize_(model, ranks)
        args.lowrank_ranks = dumps_ranks(ranks)  # saved with every checkpoint: it rebuilds itself
        model.latent_cache = not getattr(args, "no_latent_cache", False)  # read by make_generation_fast_
        return model

    def make_generation_fast_(self, **kwargs):
        """Inference only (fairseq-generate/-interactive/eval-lm and the hub call it once, through
        ``prepare_for_inference_``): factors at or past break-even become dense matrices again; the projections
        reading one input share one down-projection product; decoder self-attention caches the latents of factorized
        keys and values (``latent_cache_``) unless the model was built with ``no_latent_cache``."""
        if not self._is_generation_fast:
            merged = merge_past_break_even_(self)
            if merged:
                logger.info(f"inference: {len(merged)} factorized matrices at or past break-even merged back "
                            f"to dense ({', '.join(merged[:4])}{', ...' if len(merged) > 4 else ''})")
            shared = share_inputs_(self)
            if shared:
                logger.info(f"inference: one down-projection product for the projections sharing an input in "
                            f"{len(shared)} attention modules")
            latent = latent_cache_(self) if getattr(self, "latent_cache", True) else []
            if latent:
                logger.info(f"inference: {len(latent)} decoder self-attention modules cache the latents of their "
                            "factorized keys and values")
        super().make_generation_fast_(**kwargs)


@register_model("lowrank_transformer")
class LowRankTransformerModel(LowRankMixin, TransformerModel):
    """A Transformer whose chosen Linear layers are ``LowRankLinear`` (see ``makd_fairseq.lowrank``)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, LowRankConfig())


def lowrank_defaults(args):
    """``LowRankConfig``'s defaults for the fields ``args`` lacks, for any low-rank architecture."""
    for f in fields(LowRankConfig):
        if not hasattr(args, f.name):
            setattr(args, f.name, f.default)


def lowrank_base_architecture(args):
    shape_from_student(args)
    lowrank_defaults(args)
    base_architecture(args)


register_model_architecture("lowrank_transformer", "lowrank_transformer")(lowrank_base_architecture)

# presets mirror fairseq's: the dense preset fills its defaults, then ours fill the rest
PRESETS = {
    "transformer_iwslt_de_en": transformer_iwslt_de_en,
    "transformer_wmt_en_de": transformer_wmt_en_de,
    "transformer_vaswani_wmt_en_de_big": transformer_vaswani_wmt_en_de_big,
    "bart_base": bart_base_architecture,
}


def preset(dense_arch, ours=lowrank_base_architecture):
    """The low-rank twin of the dense arch preset ``dense_arch``: a student's shape first (before the dense preset
    fills its defaults), then the dense preset, then ``ours``."""
    def fill(args):
        shape_from_student(args)
        dense_arch(args)
        ours(args)

    return fill


for _name, _dense in PRESETS.items():
    register_model_architecture("lowrank_transformer", "lowrank_" + _name)(preset(_dense))
