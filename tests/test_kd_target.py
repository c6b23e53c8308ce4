"""The KD target flags of the makd criterion (issue 34, diagnosis 1c/1d): --kd-alpha (convex CE/KD), --kd-topk (the
teacher's top K tokens, renormalized), --kd-select-ratio (selective KD on the hardest tokens), --anneal-updates (the
matrix and layer aspects annealed to 0). Exact math on small tensors, then each flag in the criterion on the
fixtures, then one real fairseq-train run with all four."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_ARCH, USER_DIR, batch_of, run
from makd_fairseq.aspects import TERMS, anneal_factor, hardest_tokens, output_kl
from makd_fairseq.criterions.makd import COMPONENTS, MakdConfig, MakdCriterion
from makd_fairseq.taps import shape_of


# --- the math, on small tensors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_of_the_whole_vocabulary_is_the_full_kl_value_and_gradient(temperature):
    torch.manual_seed(0)
    s = torch.randn(2, 3, 11, requires_grad=True)
    t = torch.randn(2, 3, 11)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    full = output_kl(s, t, mask, temperature)
    (g_full,) = torch.autograd.grad(full, s)
    for k in (11, 50):  # K = V, and K beyond V (clamped)
        top = output_kl(s, t, mask, temperature, topk=k)
        assert top.item() == pytest.approx(full.item(), rel=1e-6)
        (g_top,) = torch.autograd.grad(top, s)
        assert torch.allclose(g_top, g_full, rtol=1e-5, atol=1e-7)
    assert output_kl(s, t, mask, temperature, topk=3).item() != pytest.approx(full.item(), rel=1e-3)


def test_topk_kl_equals_the_renormalized_teacher_computed_by_hand():
    T = 2.0
    teacher = [2.0, -1.0, 1.0, 0.0, 0.5]  # top 2: tokens 0 and 2
    student = [0.3, 1.2, -0.4, 0.0, 2.0]
    value = output_kl(torch.tensor([[student]]), torch.tensor([[teacher]]), torch.ones(1, 1), T, topk=2)
    z = math.exp(2.0 / T) + math.exp(1.0 / T)
    p = {0: math.exp(2.0 / T) / z, 2: math.exp(1.0 / T) / z}
    log_norm = math.log(sum(math.exp(x / T) for x in student))
    lp_s = {i: student[i] / T - log_norm for i in p}
    expected = T ** 2 * sum(p[i] * (math.log(p[i]) - lp_s[i]) for i in p)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # the student's log-probabilities are over the whole vocabulary, not renormalized over the K tokens
    z_s = math.exp(student[0] / T) + math.exp(student[2] / T)
    renormalized = T ** 2 * sum(p[i] * (math.log(p[i]) - (student[i] / T - math.log(z_s))) for i in p)
    assert abs(expected - renormalized) > 0.1


def test_hardest_tokens_are_the_highest_cross_entropy_ones_ties_to_the_earlier_position():
    nll = torch.tensor([[5.0, 1.0, 3.0, 100.0],
                        [3.0, 9.0, 0.0, 2.0]])
    mask = torch.tensor([[True, True, True, False],  # position (0, 3) is padding: never chosen, whatever its value
                         [True, True, True, True]])
    chosen = hardest_tokens(nll, mask, 3 / 7)  # 3 of the 7 tokens: 9, 5, then the first of the two 3s
    assert chosen.tolist() == [[True, False, True, False], [False, True, False, False]]
    assert hardest_tokens(nll, mask, 0.5).sum() == 4  # 3.5 rounded
    assert hardest_tokens(nll, mask, 0.01).tolist() == [[False] * 4, [False, True, False, False]]  # at least one
    assert torch.equal(hardest_tokens(nll, mask, 1.0), mask)
    # the output KL over the chosen tokens is the sum of their per-token KLs
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    per_token = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    value = output_kl(s, t, chosen.float(), 1.0)
    assert value.item() == pytest.approx(per_token[chosen].sum().item(), rel=1e-6)


def test_anneal_factor_is_linear_to_zero_at_n_updates():
    assert anneal_factor(0, 100) == 1.0
    assert anneal_factor(50, 100) == 0.5
    assert anneal_factor(100, 100) == 0.0
    assert anneal_factor(250, 100) == 0.0
    assert anneal_factor(10 ** 6, 0) == 1.0  # 0: off


# --- each flag in the criterion, on the fixtures -----------------------------------------------------------------

def _setup(teacher, student, data, **overrides):
    import makd_fairseq  # noqa: F401
    from fairseq import checkpoint_utils
    from makd_fairseq.tasks.makd_translation import MakdTranslationConfig, MakdTranslationTask

    task = MakdTranslationTask.setup_task(MakdTranslationConfig(
        data=str(data), teacher_path=str(teacher), source_lang="en", target_lang="de",
        train_subset="train", dataset_impl=None, required_seq_len_multiple=1))
    task.load_dataset("valid")
    model = checkpoint_utils.load_model_ensemble([str(student)], task=task)[0][0].eval()
    return task, model, _criterion(task, model, **overrides)


def _criterion(task, model, **overrides):
    return MakdCriterion(task, MakdConfig(sentence_avg=False, **overrides), student_shape=shape_of(model))


def _call(criterion, model, sample):
    """(loss, {component: value}, the logging output), all per target token."""
    loss, sample_size, log = criterion(model, sample)
    return loss.item() / sample_size, {k: log[k].item() / sample_size for k in COMPONENTS}, log


def _logits(task, model, sample):
    with torch.no_grad():
        return model(**sample["net_input"])[0], task.teacher(**sample["net_input"])[0]


@pytest.fixture(scope="module")
def setup(teacher, half_student, mt_data):
    task, model, _ = _setup(teacher, half_student, mt_data)
    return task, model, batch_of(task, range(12))


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_kd_alpha_gives_the_convex_combination_plus_the_intermediate_terms(alpha, setup):
    task, model, sample = setup
    loss, values, _ = _call(_criterion(task, model, kd_alpha=alpha), model, sample)
    assert values["loss_model"] > 1e-3 and values["loss_mha"] > 1e-3 and values["loss_attn"] > 1e-3
    expected = (1 - alpha) * values["loss_ce"] + alpha * values["loss_model"] + sum(values[t] for t in TERMS)
    assert loss == pytest.approx(expected, rel=1e-6)
    # the components themselves are today's (only their weights changed)
    assert values == pytest.approx(_call(_criterion(task, model), model, sample)[1], rel=1e-6)


def test_kd_alpha_refuses_weights_it_would_override_and_values_outside_zero_one(setup):
    task, model, _ = setup
    with pytest.raises(ValueError, match=r"--kd-alpha sets the weights .* drop --ce-weight 2.0$"):
        _criterion(task, model, kd_alpha=0.5, ce_weight=2.0)
    with pytest.raises(ValueError, match="drop --ce-weight 0.5 and --model-weight 3.0"):
        _criterion(task, model, kd_alpha=0.5, ce_weight=0.5, model_weight=3.0)
    for bad in (1.5, -0.5):
        with pytest.raises(ValueError, match=r"--kd-alpha must be in \[0, 1\]"):
            _criterion(task, model, kd_alpha=bad)
    with pytest.raises(ValueError, match="--kd-topk must be >= 0"):
        _criterion(task, model, kd_topk=-1)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"--kd-select-ratio must be in \(0, 1\]"):
            _criterion(task, model, kd_select_ratio=bad)
    with pytest.raises(ValueError, match="--anneal-updates must be >= 0"):
        _criterion(task, model, anneal_updates=-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_topk_gives_the_truncated_kl_of_the_models_logits(temperature, setup):
    task, model, sample = setup
    s, t = _logits(task, model, sample)
    mask = sample["target"].ne(task.target_dictionary.pad()).float()
    vocab = len(task.target_dictionary)
    top8 = _call(_criterion(task, model, kd_topk=8, kd_temperature=temperature), model, sample)[1]["loss_model"]
    full = _call(_criterion(task, model, kd_temperature=temperature), model, sample)[1]["loss_model"]
    whole = _call(_criterion(task, model, kd_topk=vocab, kd_temperature=temperature), model, sample)[1]["loss_model"]
    n = mask.sum().item()
    assert top8 == pytest.approx(output_kl(s, t, mask, temperature, topk=8).item() / n, rel=1e-5)
    assert whole == pytest.approx(full, rel=1e-5)
    assert top8 != pytest.approx(full, rel=1e-3)


def test_kd_select_ratio_distils_only_the_tokens_of_highest_student_cross_entropy(setup):
    task, model, sample = setup
    pad = task.target_dictionary.pad()
    target = sample["target"]
    mask = target.ne(pad)
    s, t = _logits(task, model, sample)
    lp_s = F.log_softmax(s.float(), -1)
    nll = -lp_s.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    kl = F.kl_div(lp_s, F.log_softmax(t.float(), -1), log_target=True, reduction="none").sum(-1)
    positions = sorted((p for p in zip(*torch.nonzero(mask, as_tuple=True))), key=lambda p: -nll[p].item())
    n = len(positions)
    hardest = positions[:(n + 1) // 2]  # half, rounded up

    loss, values, log = _call(_criterion(task, model, kd_select_ratio=0.5), model, sample)
    assert log["kd_tokens"].item() == len(hardest)
    assert values["loss_model"] * n == pytest.approx(sum(kl[p].item() for p in hardest), rel=1e-5)
    # the selection takes loss_model only: the other components are unchanged, and 1.0 is exactly today's criterion
    today_loss, today, today_log = _call(_criterion(task, model), model, sample)
    assert values["loss_model"] < today["loss_model"]
    assert {k: v for k, v in values.items() if k != "loss_model"} == pytest.approx(
        {k: v for k, v in today.items() if k != "loss_model"}, rel=1e-6)
    loss_1, values_1, log_1 = _call(_criterion(task, model, kd_select_ratio=1.0), model, sample)
    assert (loss_1, values_1) == (today_loss, today) and "kd_tokens" not in log_1


def _hooks_registered(monkeypatch):
    """Every module a forward (pre-)hook is registered on from now on."""
    seen = []
    for name in ("register_forward_hook", "register_forward_pre_hook"):
        original = getattr(torch.nn.Module, name)

        def spy(module, hook, *args, _original=original, **kwargs):
            seen.append(module)
            return _original(module, hook, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, name, spy)
    return seen


def test_anneal_updates_scales_the_intermediate_terms_and_taps_nothing_at_zero(setup, monkeypatch):
    task, model, sample = setup
    criterion = _criterion(task, model, anneal_updates=10)
    seen = _hooks_registered(monkeypatch)
    full_loss, full, log = _call(criterion, model, sample)  # no update yet: factor 1
    assert seen and log["aspect_factor"] == log["sample_size"]
    assert full_loss == pytest.approx(_call(_criterion(task, model), model, sample)[0], rel=1e-7)
    terms = sum(full[t] for t in TERMS)
    assert terms > 1e-3

    criterion.set_num_updates(5)
    half_loss, half, log = _call(criterion, model, sample)
    assert log["aspect_factor"] / log["sample_size"] == 0.5
    assert half == pytest.approx(full, rel=1e-6)  # logged unweighted
    assert half_loss == pytest.approx(half["loss_ce"] + half["loss_model"] + 0.5 * terms, rel=1e-6)

    for updates in (10, 11):  # at N and past it: no term computed, no feature tapped
        criterion.set_num_updates(updates)
        seen.clear()
        loss, values, log = _call(criterion, model, sample)
        assert seen == [] and log["aspect_factor"] == 0
        assert all(values[t] == 0 for t in TERMS)
        assert loss == pytest.approx(values["loss_ce"] + values["loss_model"], rel=1e-6)


# --- fairseq-train with all four ------------------------------------------------------------------------------

def test_fairseq_train_runs_with_all_four_flags_and_logs_them(mt_data, teacher, half_student, tmp_path):
    """4 updates, the intermediate terms annealed over 2: the task hands fairseq's update count to the criterion
    (factor 1, 0.5, then 0 with the terms not computed), selective KD logs the share of tokens it distils."""
    proc = run("fairseq-train", mt_data, "--user-dir", USER_DIR, "--task", "makd_translation",
               "--teacher-path", teacher, "--arch", "lowrank_transformer", "--finetune-from-model", half_student,
               *TINY_ARCH, "--dropout", "0", "--criterion", "makd", "--kd-alpha", "0.5", "--kd-topk", "8",
               "--kd-select-ratio", "0.5", "--anneal-updates", "2", "--cpu", "--seed", "1", "--optimizer", "adam",
               "--lr", "0.001", "--max-tokens", "512", "--max-update", "4", "--log-format", "simple",
               "--log-interval", "1", "--num-workers", "0", "--no-progress-bar", "--save-dir", tmp_path,
               "--no-epoch-checkpoints")
    log = proc.stdout + proc.stderr

    def values(line):  # train_inner lines say name=value, the validation line name value
        return {k: float(v) for k, v in re.findall(r"\b(\w+)[= ]([-\d.e]+)", line)}

    steps = [values(line) for line in log.splitlines() if "train_inner" in line]
    assert [s["aspect_factor"] for s in steps] == [1.0, 0.5, 0.0, 0.0]
    for s in steps:
        assert 45 <= s["kd_selected"] <= 55  # half the tokens of each batch, rounded
        terms = sum(s[t] for t in TERMS)
        # logged loss is in bits, the components in nats, rounded to 3 and 4 decimals
        assert s["loss"] * math.log(2) == pytest.approx(
            0.5 * s["loss_ce"] + 0.5 * s["loss_model"] + s["aspect_factor"] * terms, abs=2e-3)
    assert steps[0]["loss_mha"] > 0 and all(s[t] == 0 for s in steps[2:] for t in TERMS)
    valid = [values(line) for line in log.splitlines() if "| valid |" in line]
    assert valid and valid[-1]["aspect_factor"] == 0.0 and "kd_selected" in valid[-1]
