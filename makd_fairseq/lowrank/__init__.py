"""Low-rank factorization: the ``LowRankLinear`` layer and factorizing a model to a budget.

A target matrix ``W`` (d_out x d_in) becomes two factors ``up·down`` of rank r, from its truncated SVD or the SVD
whitened by its inputs; ranks are chosen to meet a parameter budget. One concept per module:

- ``layers``: ``LowRankLinear`` / ``LowRankEmbedding``, the factors with the contract of the layer they replace;
- ``factorization``: the factors of one matrix (SVD, whitening) and the ranks of many (``allocate_ranks``);
- ``surgery``: finding a model's targets by name and swapping them for their factors (``factorize_``);
- ``inference``: preparing a factorized model for generation (merge past break-even, shared down-projections, the
  latent self-attention cache).
"""

from .factorization import (
    ALLOCATIONS,
    Factorization,
    Matrix,
    RankError,
    allocate_ranks,
    past_break_even,
    relative_error,
    svd_matrices,
    whitening,
)
from .inference import (
    LatentSelfAttention,
    SharedDown,
    SharedInputLowRankLinear,
    latent_cache_,
    merge_past_break_even_,
    share_inputs_,
)
from .layers import LowRankEmbedding, LowRankLinear
from .surgery import (
    DEFAULT_TARGETS,
    VOCABULARY_TARGETS,
    count_params,
    dumps_ranks,
    factorize_,
    find_targets,
    shared_uses,
)

__all__ = [
    "ALLOCATIONS", "DEFAULT_TARGETS", "VOCABULARY_TARGETS",
    "LowRankLinear", "LowRankEmbedding", "past_break_even",
    "Factorization", "Matrix", "RankError", "allocate_ranks", "relative_error", "svd_matrices", "whitening",
    "count_params", "dumps_ranks", "factorize_", "find_targets", "shared_uses",
    "SharedDown", "SharedInputLowRankLinear", "merge_past_break_even_", "share_inputs_", "LatentSelfAttention",
    "latent_cache_",
]
