"""Inference preparation (``make_generation_fast_``: merge past break-even, one down-projection product per input)
changes neither what a student trains nor what it saves: same parameters, same state_dict keys, same gradients."""

import pytest
import torch

from conftest import load, valid_batch
from makd_fairseq.checkpoint import load_checkpoint
from makd_fairseq.lowrank import SharedInputLowRankLinear, share_inputs_

SHARED_DOWNS = ("q_proj.down.weight", "k_proj.down.weight", "v_proj.down.weight")


def _logits(model, sample):
    with torch.no_grad():
        return model(**sample["net_input"])[0]


def _nll(model, sample, pad):
    """Summed nll of the targets, with gradients (a training step's loss)."""
    lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    target = sample["target"]
    return -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[target.ne(pad)].sum()


def _trained(path, data, seed=1):
    """The student at ``path`` with every weight moved, as training would move it."""
    model, task = load(path, data)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=generator))
    return model, task


def _prepared(model):
    model.make_generation_fast_()
    assert any(isinstance(m, SharedInputLowRankLinear) for m in model.modules())
    return model


@pytest.mark.parametrize("prepare", ["make_generation_fast_", "share_inputs_"])
def test_a_prepared_student_still_trains_every_factor(prepare, half_student, mt_data):
    """After make_generation_fast_ (which leaves the model in eval mode; fairseq's guard refuses ``train()``) or
    share_inputs_ alone (then trained in train mode, dropout on), a backward gives every parameter the gradient the
    unprepared student gets, the shared q/k/v down-projections included: none is silently frozen."""
    plain, task = load(half_student, mt_data)
    prepared, _ = load(half_student, mt_data)
    if prepare == "make_generation_fast_":
        _prepared(prepared)
    else:
        assert share_inputs_(prepared)
        plain.train(), prepared.train()
    sample = valid_batch(task, max_sentences=8)
    grads = {}
    for key, model in (("plain", plain), ("prepared", prepared)):
        torch.manual_seed(0)  # the same dropout masks
        _nll(model, sample, task.target_dictionary.pad()).backward()
        grads[key] = {n: p.grad for n, p in model.named_parameters()}
    assert grads["prepared"].keys() == grads["plain"].keys()
    downs = [n for n in grads["plain"] if n.endswith(SHARED_DOWNS) and ".encoder_attn.q_proj." not in n]
    assert len(downs) == 2 * 3 + 2 * (3 + 2)  # 2 encoder layers: q, k, v; 2 decoder layers: q, k, v and k, v
    for name in downs:
        assert grads["prepared"][name] is not None and grads["prepared"][name].abs().sum() > 0, name
    for name, grad in grads["plain"].items():
        assert torch.allclose(grads["prepared"][name], grad, rtol=1e-5, atol=1e-7), name


def test_a_prepared_students_state_dict_loads_into_an_unprepared_student(half_student, mt_data, tmp_path):
    """A trained student prepared for inference (as fairseq-generate and the hub prepare it) saves the keys of the
    unprepared one: strict loading into a freshly built student, directly or through a checkpoint file and fairseq's
    loader, gives the prepared student's outputs."""
    prepared, task = _trained(half_student, mt_data)
    _prepared(prepared)
    sample = valid_batch(task)
    expected = _logits(prepared, sample)

    fresh, _ = load(half_student, mt_data)
    assert not torch.allclose(_logits(fresh, sample), expected, atol=1e-3)  # the weights moved: a load shows
    fresh.load_state_dict(prepared.state_dict(), strict=True)
    assert torch.allclose(_logits(fresh, sample), expected, atol=1e-5)

    state = load_checkpoint(str(half_student))
    state["model"] = prepared.state_dict()
    torch.save(state, tmp_path / "prepared.pt")
    loaded, _ = load(tmp_path / "prepared.pt", mt_data)  # fairseq's loader: a strict load_state_dict
    assert torch.allclose(_logits(loaded, sample), expected, atol=1e-5)


def test_a_prepared_student_follows_weights_loaded_or_converted_after_preparation(half_student, mt_data):
    """The shared down-projection product is rebuilt when a member's weight changes: after a strict
    ``load_state_dict`` of other weights, and after a dtype conversion, the prepared student's outputs are those of an
    unprepared student with the same weights."""
    prepared, task = load(half_student, mt_data)
    _prepared(prepared)
    sample = valid_batch(task)
    before = _logits(prepared, sample)  # the shared products are built and kept

    trained, _ = _trained(half_student, mt_data)
    prepared.load_state_dict(trained.state_dict(), strict=True)
    after = _logits(prepared, sample)
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.allclose(after, _logits(trained, sample), atol=1e-5)

    prepared.double(), trained.double()
    assert _logits(prepared, sample).dtype == torch.float64
    assert torch.allclose(_logits(prepared, sample), _logits(trained, sample), atol=1e-10)
