"""Low-rank factorization: the ``LowRankLinear`` layer and factorizing a model to a budget.

A target ``nn.Linear`` with weight ``W`` (d_out x d_in) becomes ``up(down(x))`` with
``up.weight = U_r Σ_r^½`` (d_out x r, keeps the bias) and ``down.weight = Σ_r^½ V_rᵀ`` (r x d_in),
the truncated SVD of ``W``. Modules are swapped by name, fairseq's model code is not edited.

The vocabulary matrix ``E`` (V x d) is a target too (``embed_tokens``, ``output_projection``): the output projection
becomes a ``LowRankLinear`` (d -> r -> V) and each token embedding a ``LowRankEmbedding`` reading row i of
``up·down`` from the same two factors. Uses that share one weight (fairseq's ``--share-all-embeddings``,
``--share-decoder-input-output-embed``) stay shared: they are one target, named by the output projection.

Data-aware (whitened) factors, as SVD-LLM (arXiv 2403.07378): with the Gram matrix ``G = Σ x xᵀ`` of the
layer's inputs and its Cholesky factor ``G = S Sᵀ``, the SVD ``W S = U Σ Vᵀ`` gives ``up = U_r Σ_r^½`` and
``down = Σ_r^½ V_rᵀ S⁻¹``; for rank r they minimise ``‖(W − up·down) X‖_F`` on those inputs, and the error
left is exactly ``Σ_{i>r} σ_i²`` of ``W S``.
"""

import fnmatch
import json
import logging
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
VOCABULARY_TARGETS = ("embed_tokens", "output_projection")  # opt-in: --targets ...,embed_tokens,output_projection
ALLOCATIONS = ("uniform", "spectrum")


class RankError(ValueError):
    """A rank request that cannot be met (bad rank, impossible budget, no targets)."""


class LowRankLinear(nn.Module):
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
    def from_linear(cls, linear: nn.Module, rank: int, fact: Optional["Factorization"] = None) -> "LowRankLinear":
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

    def merged_weight(self) -> Tensor:
        return self.up.weight @ self.down.weight

    @property
    def past_break_even(self) -> bool:
        """True when the two factors cost at least the dense matrix: r ≥ d_in·d_out / (d_in + d_out)."""
        return past_break_even(self.rank, self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankEmbedding(nn.Module):
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

    def merged_weight(self) -> Tensor:
        return self.up.weight @ self.down.weight

    @property
    def past_break_even(self) -> bool:
        return past_break_even(self.rank, self.num_embeddings, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, padding_idx={self.padding_idx}"


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


def shared_uses(model: nn.Module, name: str) -> List[str]:
    """The other paths that use the weight of the matrix ``name`` (tied embeddings / output projection)."""
    uses = _weighted(model)
    return [n for n, m in uses.items() if m.weight is uses[name].weight and n != name]


def _weighted(model: nn.Module) -> Dict[str, nn.Module]:
    """Every use (path) of a target-able module: Linear layers of the encoder/decoder, and token embeddings."""
    return {name: m for name, m in model.named_modules(remove_duplicate=False)
            if name.startswith(("encoder.", "decoder."))
            and (isinstance(m, nn.Linear) or (isinstance(m, nn.Embedding) and name.endswith(".embed_tokens")))}


def find_targets(model: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS) -> Dict[str, nn.Module]:
    """Matrices of the encoder/decoder matched by ``targets``: Linear layers, and token embeddings (``embed_tokens``).

    A pattern without a dot names the module's own attribute (``fc1``); a pattern with dots is
    an fnmatch over the full name (``decoder.layers.*.fc1``). Uses of one shared weight (tied embeddings and output
    projection) are one target, named by its first Linear use (``decoder.output_projection``), matched by any use.
    """
    uses: Dict[int, List[Tuple[str, nn.Module]]] = {}
    for name, module in _weighted(model).items():
        uses.setdefault(id(module.weight), []).append((name, module))
    found = {}
    for group in uses.values():
        def matched(name):
            leaf = name.rsplit(".", 1)[-1]
            return any(fnmatch.fnmatchcase(name if "." in p else leaf, p) for p in targets)

        if any(matched(name) for name, _ in group):
            name, module = next(((n, m) for n, m in group if isinstance(m, nn.Linear)), group[0])
            found[name] = module
    return found


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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


def factorize_(model: nn.Module, ranks: Dict[str, int], facts: Optional[Dict[str, Factorization]] = None) -> nn.Module:
    """Replace each matrix named in ``ranks`` by its factors (``facts[name]``, default the truncated SVD), in place:
    a Linear by a ``LowRankLinear``, a token embedding by a ``LowRankEmbedding``; every use of a shared weight by
    views of the same two factors."""
    from fairseq.modules import MultiheadAttention

    modules, uses = dict(model.named_modules()), _weighted(model)
    for name, rank in ranks.items():
        target = modules.get(name)
        if not isinstance(target, (nn.Linear, nn.Embedding)) or name not in uses:
            raise RankError(f"{name} is not a Linear layer or token embedding of this model")
        if rank > min(target.weight.shape):
            raise RankError(f"rank {rank} for {name} exceeds min(d_out, d_in)={min(target.weight.shape)}")
        layer = LowRankLinear.from_linear(target, rank, (facts or {}).get(name))
        new: Dict[int, nn.Module] = {}  # a module used at two paths (shared embeddings) stays one module
        for path, module in uses.items():
            if module.weight is target.weight:
                _replace(model, path, new.setdefault(id(module), layer if isinstance(module, nn.Linear) else
                                                     LowRankEmbedding(layer, module.padding_idx)))
    for module in model.modules():
        if isinstance(module, MultiheadAttention) and any(
            isinstance(c, LowRankLinear) for c in module.children()
        ):
            # the fused path reads q_proj.weight etc. directly; make attention call the modules
            module._set_skip_embed_dim_check()
    return model


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


def merge_past_break_even_(model: nn.Module) -> List[str]:
    """Inference: replace each ``LowRankLinear`` (and ``LowRankEmbedding``) past break-even by the dense layer of its
    product, in place; uses that shared factors share the dense weight.

    Such factors are no cheaper than the dense matrix, so the dense one is at least as fast. An attention
    module left with no factorized projection goes back to fairseq's fused path. Returns the merged paths.
    """
    from fairseq.modules import MultiheadAttention

    factored = [(n, m) for n, m in model.named_modules(remove_duplicate=False)
                if isinstance(m, (LowRankLinear, LowRankEmbedding)) and m.past_break_even]
    dense: Dict[int, nn.Parameter] = {}  # id(up) -> the merged weight
    done: Dict[int, nn.Module] = {}  # a module used at two paths gets one replacement
    for name, m in factored:
        if id(m) in done:
            _replace(model, name, done[id(m)])
            continue
        weight = dense.setdefault(id(m.up), nn.Parameter((m.up.weight @ m.down.weight).detach()))
        if isinstance(m, LowRankLinear):
            new = nn.Linear(m.in_features, m.out_features, bias=m.up.bias is not None)
            new.weight = weight
            if m.up.bias is not None:
                new.bias = m.up.bias
        else:
            new = nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx)
            new.weight = weight
        _replace(model, name, done.setdefault(id(m), new.to(device=weight.device, dtype=weight.dtype)))
    for parent in {model.get_submodule(n.rpartition(".")[0]) for n, _ in factored}:
        if isinstance(parent, MultiheadAttention) and not any(
            isinstance(c, LowRankLinear) for c in parent.children()
        ):
            parent.skip_embed_dim_check = False  # undo factorize_'s switch: all dense again
    return [n for n, _ in factored]


class SharedDown(nn.Module):
    """Inference: the down-projections of factorized matrices that read the same input, as one matrix product.

    ``parts(x)`` returns every member's ``down(x)``; a second member called with the very same tensor (as fairseq's
    attention calls q, k and v) reuses the product instead of multiplying again. The input is held, so a new tensor
    can never be mistaken for it."""

    def __init__(self, downs: List[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.cat([d.weight.detach() for d in downs]), requires_grad=False)
        self.sizes = [d.out_features for d in downs]
        self._input, self._parts = None, None

    def parts(self, x: Tensor) -> Tuple[Tensor, ...]:
        if x is not self._input:
            self._input, self._parts = x, F.linear(x, self.weight).split(self.sizes, dim=-1)
        return self._parts


class SharedInputLowRankLinear(nn.Module):
    """A ``LowRankLinear`` whose down-projection is one part of a ``SharedDown`` (inference only)."""

    def __init__(self, layer: LowRankLinear, shared: SharedDown, index: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = layer.in_features, layer.out_features, layer.rank
        self.up, self.index = layer.up, index
        self.shared = [shared]  # a list: the owner of the SharedDown is the attention module, not each projection

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.shared[0].parts(x)[self.index])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, shared down #{self.index}"


def share_inputs_(model: nn.Module) -> List[str]:
    """Inference: in each attention module, the factorized projections that read one input (q, k and v of
    self-attention; k and v of cross-attention, once per source) get one down-projection product. Returns the
    attention modules changed. Outputs are those of the separate factors, up to float rounding."""
    from fairseq.modules import MultiheadAttention

    changed = []
    for name, module in model.named_modules():
        if not isinstance(module, MultiheadAttention):
            continue
        names = ("q_proj", "k_proj", "v_proj") if module.self_attention else (
            ("k_proj", "v_proj") if module.encoder_decoder_attention else ())
        group = [n for n in names if isinstance(getattr(module, n), LowRankLinear)]
        if len(group) < 2:
            continue
        module.shared_down = SharedDown([getattr(module, n).down for n in group])
        for i, n in enumerate(group):
            setattr(module, n, SharedInputLowRankLinear(getattr(module, n), module.shared_down, i))
        changed.append(name)
    return changed


def dumps_ranks(ranks: Dict[str, int]) -> str:
    return json.dumps(ranks, sort_keys=True, separators=(",", ":"))
