"""The factors of one matrix and the ranks of many: truncated (optionally whitened) SVD and rank allocation.

A matrix ``W`` (d_out x d_in) of rank r is stored as ``up = U_r Σ_r^½`` (d_out x r) and ``down = Σ_r^½ V_rᵀ``
(r x d_in), from the SVD ``W = U Σ Vᵀ``; ``up·down`` is the best rank-r approximation, and the relative error left
is ``sqrt(Σ_{i>r} σ_i² / Σ_i σ_i²)``.

Data-aware (whitened) factors, as SVD-LLM (arXiv 2403.07378): with the Gram matrix ``G = Σ x xᵀ`` of the
layer's inputs and its Cholesky factor ``G = S Sᵀ``, the SVD ``W S = U Σ Vᵀ`` gives ``up = U_r Σ_r^½`` and
``down = Σ_r^½ V_rᵀ S⁻¹``; for rank r they minimise ``‖(W − up·down) X‖_F`` on those inputs, and the error
left is exactly ``Σ_{i>r} σ_i²`` of ``W S``.

Rank r costs ``r (d_out + d_in)`` numbers; at or past break-even, ``r ≥ d_in·d_out / (d_in + d_out)``, the factors
cost at least the dense matrix. A budget (a fraction of the dense model's parameters) is spent ``uniform``ly (every
matrix compressed by the same factor) or by ``spectrum`` (the singular values with the most energy per parameter,
across all matrices); no matrix gets a rank past break-even.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

ALLOCATIONS = ("uniform", "spectrum")


class RankError(ValueError):
    """A rank request that cannot be met (bad rank, impossible budget, no targets)."""


def past_break_even(rank: int, d_out: int, d_in: int) -> bool:
    """Factors of this rank hold (and multiply) at least as many numbers as the dense matrix."""
    return rank * (d_out + d_in) >= d_out * d_in


class Factorization:
    """``W ≈ U diag(s) Vh`` — the SVD of ``W`` — or, whitened, ``W = (U diag(s) Vh) S⁻¹`` with ``W S = U diag(s) Vh``.

    ``s`` are the singular values a truncation drops from the end: of the weight (plain) or of its output on the
    calibration inputs (whitened), so ``residual`` and the ``spectrum`` allocation measure the error that matters.
    """

    def __init__(self, weight: Tensor, gram: Optional[Tensor] = None):
        w = weight.detach().double()
        self.root = None if gram is None else whitening(gram)  # S, lower triangular, S Sᵀ = G
        self.u, self.s, self.vh = torch.linalg.svd(w if self.root is None else w @ self.root, full_matrices=False)

    @property
    def whitened(self) -> bool:
        return self.root is not None

    def factors(self, rank: int) -> Tuple[Tensor, Tensor]:
        """(up d_out x r, down r x d_in) in float64."""
        root = self.s[:rank].sqrt()
        up, down = self.u[:, :rank] * root, root[:, None] * self.vh[:rank]
        if self.root is not None:  # down · S⁻¹, by a triangular solve of X S = down
            down = torch.linalg.solve_triangular(self.root, down, upper=False, left=False)
        return up, down


def whitening(gram: Tensor) -> Tensor:
    """Lower-triangular ``S`` with ``S Sᵀ = G`` (float64); a growing jitter on the diagonal where ``G`` is not
    positive definite (inputs that span fewer directions than the layer's width)."""
    g = gram.double()
    scale = g.diagonal().mean().item()
    if not scale > 0:
        raise RankError("whitening needs calibration inputs: this layer's Gram matrix is zero")
    eye = torch.eye(g.size(0), dtype=g.dtype, device=g.device)
    for jitter in [0.0] + [scale * 10.0 ** k for k in range(-10, 0)]:
        root, info = torch.linalg.cholesky_ex(g + jitter * eye)
        if info.item() == 0:
            return root
    raise RankError("whitening: the calibration Gram matrix is not positive definite even with a jitter")


def relative_error(weight: Tensor, approx: Tensor, gram: Optional[Tensor] = None) -> float:
    """‖W − W_r‖_F / ‖W‖_F, or with ``gram`` of inputs X the output error ‖(W − W_r) X‖_F / ‖W X‖_F."""
    w = weight.detach().double()
    e = w - approx.detach().double()
    if gram is None:
        return (e.norm() / w.norm().clamp_min(1e-300)).item()
    g = gram.double()
    return math.sqrt(max(((e @ g) * e).sum().item(), 0.0) / max(((w @ g) * w).sum().item(), 1e-300))


@dataclass
class Matrix:
    """One target matrix as the allocator sees it; ``spectrum`` holds the singular values of its factorization."""

    name: str
    d_out: int
    d_in: int
    spectrum: Optional[Tensor] = None

    @property
    def full_rank(self) -> int:
        return min(self.d_out, self.d_in)

    @property
    def dense_params(self) -> int:
        return self.d_out * self.d_in

    @property
    def break_even(self) -> int:
        """Largest rank whose two factors are no bigger than the dense matrix."""
        return max(1, self.dense_params // (self.d_out + self.d_in))

    def params(self, rank: int) -> int:
        return rank * (self.d_out + self.d_in)

    def past_break_even(self, rank: int) -> bool:
        """Factors of rank ``rank`` cost at least the dense matrix: merged back to dense at inference."""
        return past_break_even(rank, self.d_out, self.d_in)

    def inference_params(self, rank: int) -> int:
        """Parameters at inference, where a rank past break-even is merged back to dense."""
        return self.dense_params if self.past_break_even(rank) else self.params(rank)

    def residual(self, rank: int) -> float:
        """The relative error rank ``rank`` leaves, exact from the spectrum: ‖W − W_r‖_F / ‖W‖_F for a plain SVD,
        ‖(W − W_r) X‖_F / ‖W X‖_F on the calibration inputs for a whitened one."""
        energy = self.spectrum.double().pow(2)
        return math.sqrt(energy[rank:].sum().item() / max(energy.sum().item(), 1e-300))


def allocate_ranks(
    matrices: List[Matrix],
    total_params: int,
    *,
    rank: Optional[int] = None,
    rank_ratio: Optional[float] = None,
    param_budget: Optional[float] = None,
    allocation: str = "uniform",
) -> Dict[str, int]:
    """Ranks for ``matrices`` from exactly one of ``rank``, ``rank_ratio`` or ``param_budget``.

    ``param_budget`` is a fraction of ``total_params`` (the dense model's parameters, embeddings
    included). ``uniform`` compresses every matrix by the same factor; ``spectrum`` spends the
    budget on the singular values that carry the most energy per parameter, across all matrices.
    """
    if not matrices:
        raise RankError("no target matrix found: check --targets against the model's Linear layers")
    if sum(x is not None for x in (rank, rank_ratio, param_budget)) != 1:
        raise RankError("give exactly one of --rank, --rank-ratio, --param-budget")
    if rank is not None:
        for m in matrices:
            if not 1 <= rank <= m.full_rank:
                raise RankError(
                    f"--rank {rank} is outside [1, min(d_out, d_in)={m.full_rank}] for {m.name} "
                    f"({m.d_out}x{m.d_in})"
                )
        return {m.name: rank for m in matrices}
    if rank_ratio is not None:
        if not 0 < rank_ratio <= 1:
            raise RankError(f"--rank-ratio must be in (0, 1], got {rank_ratio}")
        return {m.name: max(1, round(rank_ratio * m.full_rank)) for m in matrices}

    if allocation not in ALLOCATIONS:
        raise RankError(f"--allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    fixed = total_params - sum(m.dense_params for m in matrices)
    available = param_budget * total_params - fixed
    smallest = (fixed + sum(m.params(1) for m in matrices)) / total_params
    if param_budget <= 0 or available < sum(m.params(1) for m in matrices):
        raise RankError(
            f"--param-budget {param_budget:g} cannot be met: the smallest achievable budget is "
            f"{smallest:.4f} (every target at rank 1; {fixed} parameters are not factorized)"
        )
    if allocation == "uniform":
        ranks = _uniform(matrices, available)
    else:
        if any(m.spectrum is None for m in matrices):
            raise RankError("--allocation spectrum needs the teacher's weights (use makd-init)")
        ranks = _spectrum(matrices, available)
    return ranks


def _uniform(matrices: List[Matrix], available: float) -> Dict[str, int]:
    def ranks_at(alpha):
        return {m.name: max(1, math.floor(alpha * m.break_even)) for m in matrices}

    def cost(ranks):
        return sum(m.params(ranks[m.name]) for m in matrices)

    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection on the shared compression factor
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(ranks_at(mid)) <= available else (lo, mid)
    ranks = ranks_at(lo)
    spent = cost(ranks)
    # hand the remainder out one rank at a time, least-served matrices first
    for m in sorted(matrices, key=lambda m: ranks[m.name] / m.break_even):
        if ranks[m.name] < m.break_even and spent + m.params(1) <= available:
            ranks[m.name] += 1
            spent += m.params(1)
    return ranks


def _spectrum(matrices: List[Matrix], available: float) -> Dict[str, int]:
    ranks = {m.name: 1 for m in matrices}
    spent = sum(m.params(1) for m in matrices)
    candidates: List[Tuple[float, int, Matrix]] = []
    for m in matrices:
        energy = m.spectrum.double().pow(2)
        share = energy / energy.sum().clamp_min(1e-300)
        for j in range(1, m.break_even):
            candidates.append((share[j].item() / (m.d_out + m.d_in), j, m))
    # singular values are sorted, so the global order keeps every matrix's choice a prefix
    candidates.sort(key=lambda c: (-c[0], c[1]))
    for _, j, m in candidates:
        if ranks[m.name] == j and spent + m.params(1) <= available:
            ranks[m.name] += 1
            spent += m.params(1)
    return ranks


def svd_matrices(targets: Dict[str, nn.Linear], with_spectrum: bool,
                 grams: Optional[Dict[str, Tensor]] = None) -> Tuple[List[Matrix], Dict[str, Factorization]]:
    """Allocator view of ``targets``; with ``with_spectrum`` also their factorizations, computed once
    (whitened by the input Gram matrices ``grams`` where given, else plain SVDs)."""
    matrices, facts = [], {}
    for name, lin in targets.items():
        spectrum = None
        if with_spectrum:
            facts[name] = Factorization(lin.weight, (grams or {}).get(name))
            spectrum = facts[name].s
        matrices.append(Matrix(name, *lin.weight.shape, spectrum))
    return matrices, facts
