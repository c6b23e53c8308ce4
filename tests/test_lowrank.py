"""LowRankLinear and rank allocation: exact numbers on real and random matrices."""

import math

import pytest
import torch
from torch import nn

from makd_fairseq.lowrank import (
    LowRankLinear,
    Matrix,
    RankError,
    allocate_ranks,
    factorize_,
    find_targets,
)


def _linear(d_in=48, d_out=32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


def test_full_rank_factorization_reproduces_linear_output():
    linear = _linear()
    low = LowRankLinear.from_linear(linear, rank=32)
    x = torch.randn(5, 7, 48)
    assert torch.allclose(low(x), linear(x), atol=1e-5)
    assert low.up.bias is not None and torch.equal(low.up.bias, linear.bias)


def test_truncated_factors_are_the_best_rank_r_approximation():
    linear = _linear()
    u, s, vh = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
    low = LowRankLinear.from_linear(linear, rank=5)
    best = (u[:, :5] * s[:5]) @ vh[:5]
    assert torch.allclose(low.merged_weight(), best, atol=1e-5)
    # the residual the makd-init table prints is the Frobenius residual of that product
    m = Matrix("w", 32, 48, s)
    direct = (linear.weight - best).norm() / linear.weight.norm()
    assert m.residual(5) == pytest.approx(direct.item(), rel=1e-4)
    assert low.down.weight.shape == (5, 48) and low.up.weight.shape == (32, 5)


def test_half_precision_factors_keep_dtype_and_output():
    linear = _linear().half()
    low = LowRankLinear.from_linear(linear, rank=32)
    assert low.up.weight.dtype == low.down.weight.dtype == torch.float16
    x = torch.randn(4, 48).half()
    assert torch.allclose(low(x).float(), linear(x).float(), atol=2e-2)


def test_rank_above_min_dim_is_refused():
    with pytest.raises(RankError, match="outside"):
        LowRankLinear(48, 32, rank=33)


def _matrices():
    torch.manual_seed(0)
    shapes = [("a", 64, 64), ("b", 256, 64), ("c", 64, 256), ("d", 64, 64)]
    out = []
    for name, d_out, d_in in shapes:
        # different spectra: some matrices matter more than others
        w = torch.randn(d_out, d_in) @ torch.diag(torch.logspace(0, -2 if name in "ab" else -0.5, d_in))
        out.append(Matrix(name, d_out, d_in, torch.linalg.svdvals(w)))
    return out


@pytest.mark.parametrize("allocation", ["uniform", "spectrum"])
@pytest.mark.parametrize("budget", [0.5, 0.3])
def test_budget_is_met_within_one_percent(allocation, budget):
    matrices = _matrices()
    total = sum(m.dense_params for m in matrices) + 5000  # embeddings, norms, biases
    ranks = allocate_ranks(matrices, total, param_budget=budget, allocation=allocation)
    student = total - sum(m.dense_params for m in matrices) + sum(m.params(ranks[m.name]) for m in matrices)
    assert student <= budget * total
    assert student == pytest.approx(budget * total, rel=0.01)


def test_spectrum_allocation_keeps_more_energy_than_uniform():
    matrices = _matrices()
    total = sum(m.dense_params for m in matrices)

    def kept(ranks):
        return sum(1 - m.residual(ranks[m.name]) ** 2 for m in matrices)

    uniform = allocate_ranks(matrices, total, param_budget=0.3, allocation="uniform")
    spectrum = allocate_ranks(matrices, total, param_budget=0.3, allocation="spectrum")
    assert kept(spectrum) > kept(uniform)
    # a fast-decaying spectrum holds its energy in few directions, so it needs fewer ranks
    assert spectrum["a"] < spectrum["d"]


def test_uniform_allocation_compresses_every_matrix_alike():
    matrices = _matrices()
    ranks = allocate_ranks(matrices, sum(m.dense_params for m in matrices), param_budget=0.5)
    shares = [m.params(ranks[m.name]) / m.dense_params for m in matrices]
    assert max(shares) - min(shares) < 0.05


def test_impossible_budget_names_the_smallest_achievable():
    matrices = _matrices()
    total = sum(m.dense_params for m in matrices) + 5000
    smallest = (5000 + sum(m.params(1) for m in matrices)) / total
    with pytest.raises(RankError, match=f"smallest achievable budget is {smallest:.4f}"):
        allocate_ranks(matrices, total, param_budget=smallest - 0.01)


def test_rank_flags_are_exclusive_and_checked():
    matrices = _matrices()
    with pytest.raises(RankError, match="exactly one"):
        allocate_ranks(matrices, 10**6, rank=4, rank_ratio=0.5)
    with pytest.raises(RankError, match="outside"):
        allocate_ranks(matrices, 10**6, rank=65)
    assert allocate_ranks(matrices, 10**6, rank_ratio=0.5) == {"a": 32, "b": 32, "c": 32, "d": 32}


def test_targets_match_leaf_names_and_full_patterns():
    from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
    from fairseq.models.transformer import TransformerConfig

    cfg = TransformerConfig()
    cfg.encoder.embed_dim, cfg.encoder.ffn_embed_dim, cfg.encoder.attention_heads = 16, 32, 2
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.layers = nn.ModuleList([TransformerEncoderLayerBase(cfg) for _ in range(2)])
    assert len(find_targets(model)) == 12
    assert list(find_targets(model, ["encoder.layers.1.fc*"])) == ["encoder.layers.1.fc1", "encoder.layers.1.fc2"]
    factorize_(model, {"encoder.layers.0.self_attn.q_proj": 4})
    assert model.encoder.layers[0].self_attn.skip_embed_dim_check  # fused path off where factorized
    assert not model.encoder.layers[1].self_attn.skip_embed_dim_check
    assert math.isclose(model.encoder.layers[0].self_attn.q_proj.rank, 4)
