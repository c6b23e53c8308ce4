"""The low-rank layers: a matrix as two factors, with the contract of the layer it replaces.

A target ``nn.Linear`` with weight ``W`` (d_out x d_in) becomes ``up(down(x))`` with ``up.weight = U_r Σ_r^½``
(d_out x r, keeps the bias) and ``down.weight = Σ_r^½ V_rᵀ`` (r x d_in): ``LowRankLinear``.

The vocabulary matrix ``E`` (V x d) is a target too (``embed_tokens``, ``output_projection``): the output projection
becomes a ``LowRankLinear`` (d -> r -> V) and each token embedding a ``LowRankEmbedding`` reading row i of
``up·down`` from the same two factors, so a tied embedding and output projection train one pair of factors.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .factorization import Factorization, RankError, past_break_even


class Factors(nn.Module):
    """Two factors ``up`` (d_out x r) and ``down`` (r x d_in) standing for the matrix ``up·down``."""

    def merged_weight(self) -> Tensor:
        return self.up.weight @ self.down.weight

    @property
    def past_break_even(self) -> bool:
        """True when the two factors cost at least the dense matrix: r ≥ d_in·d_out / (d_in + d_out)."""
        return past_break_even(self.rank, self.up.weight.size(0), self.down.weight.size(1))


class LowRankLinear(Factors):
    """``nn.Linear`` contract (B x * x d_in -> B x * x d_out, bias kept) through two factors."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise RankError(
                f"rank {rank} is outside [1, min(d_out, d_in)={min(in_features, out_features)}]"
            )
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)  # Σ_r^½ V_rᵀ
        self.up = nn.Linear(rank, out_features, bias=bias)  # U_r Σ_r^½, plus the original bias

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))

    @classmethod
    def from_linear(cls, linear: nn.Module, rank: int, fact: Optional[Factorization] = None) -> "LowRankLinear":
        """Rank-``rank`` factors of ``linear`` (an ``nn.Linear``, or an ``nn.Embedding`` read as the Linear d -> V) from
        ``fact`` (default: the truncated SVD of its weight)."""
        w = linear.weight.detach()
        bias = getattr(linear, "bias", None)
        layer = cls(w.size(1), w.size(0), rank, bias=bias is not None)
        up, down = (fact or Factorization(w)).factors(rank)
        with torch.no_grad():
            layer.up.weight.copy_(up.to(w))
            layer.down.weight.copy_(down.to(w))
            if bias is not None:
                layer.up.bias.copy_(bias.detach())
        return layer.to(device=w.device, dtype=w.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankEmbedding(Factors):
    """``nn.Embedding`` contract (tokens B x T -> B x T x d): row ``i`` of ``up·down`` (V x d), i.e. ``up.weight[i] @
    down.weight``. ``up`` and ``down`` are the modules of a ``LowRankLinear`` over the vocabulary: a tied output
    projection and this embedding train one pair of factors."""

    def __init__(self, factors: LowRankLinear, padding_idx: Optional[int] = None):
        super().__init__()
        self.up, self.down, self.rank = factors.up, factors.down, factors.rank
        self.num_embeddings, self.embedding_dim = factors.out_features, factors.in_features
        self.padding_idx = padding_idx

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.up.weight, self.padding_idx) @ self.down.weight

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, padding_idx={self.padding_idx}"
