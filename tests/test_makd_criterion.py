"""The makd criterion on real batches: zero at full rank, descent, padding/batch invariance, half precision."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import batch_of, per_token
from makd_fairseq.aspects import (
    TERMS, attention_kl, build_table, map_layers, mse, output_kl, recomputed_mse, select_layers,
)
from makd_fairseq.criterions.makd import COMPONENTS, MakdConfig, MakdCriterion
from makd_fairseq.taps import RECOMPUTABLE, Feature, Recomputable, Taps, shape_of

DISTILL = ("loss_model", *TERMS)


def _setup(teacher, student, data, **overrides):
    import makd_fairseq  # noqa: F401
    from fairseq import checkpoint_utils
    from makd_fairseq.tasks.makd_translation import MakdTranslationConfig, MakdTranslationTask

    task = MakdTranslationTask.setup_task(MakdTranslationConfig(
        data=str(data), teacher_path=str(teacher), source_lang="en", target_lang="de",
        train_subset="train", dataset_impl=None, required_seq_len_multiple=1))
    models, _ = checkpoint_utils.load_model_ensemble([str(student)], task=task)
    cfg = MakdConfig(sentence_avg=False, **{"matrix_layers": "all", "layer_layers": "all",
                                            "hidn_embeddings": True, **overrides})
    task.load_dataset("valid")
    return task, models[0].eval(), MakdCriterion(task, cfg, student_shape=shape_of(models[0]))


def test_full_rank_student_has_zero_distillation_terms_and_gradients(teacher, full_rank_student, mt_data):
    task, model, criterion = _setup(teacher, full_rank_student, mt_data)
    sample = batch_of(task, range(12))
    assert {row.term for row in criterion.rows} == set(TERMS)
    values = per_token(criterion, model, sample)[0]
    for term in DISTILL:
        assert abs(values[term]) <= 1e-6, (term, values[term])
    # gradient of the distillation terms alone (cross-entropy is not zero at full rank)
    crit = MakdCriterion(task, MakdConfig(sentence_avg=False, ce_weight=0.0, matrix_layers="all",
                                          layer_layers="all", hidn_embeddings=True), student_shape=shape_of(model))
    model.zero_grad()
    loss, sample_size, _ = crit(model, sample)
    loss.backward()
    # per token, as fairseq applies it (it divides by sample_size); float rounding only
    worst = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None) / sample_size
    assert worst < 1e-5
    assert all(not p.requires_grad for p in task.teacher.parameters())


@pytest.mark.parametrize("term", DISTILL)
def test_perturbed_student_term_is_positive_and_one_sgd_step_lowers_it(term, teacher, half_student, mt_data):
    only = {name: 0.0 for name in ("ce_weight", "model_weight", "mha_weight", "ffn_weight", "attn_weight",
                                   "hidn_weight")}
    only[{"loss_model": "model_weight", "loss_mha": "mha_weight", "loss_ffn": "ffn_weight",
          "loss_attn": "attn_weight", "loss_hidn": "hidn_weight"}[term]] = 1.0
    task, model, criterion = _setup(teacher, half_student, mt_data, **only)
    sample = batch_of(task, range(12))
    before, loss, _ = per_token(criterion, model, sample)
    assert before[term] > 1e-4
    loss.backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad / max(p.grad.norm().item(), 1e-12)
    after = per_token(criterion, model, sample)[0]
    assert after[term] < before[term]


def _pad(sample, pad, extra_src=3, extra_tgt=2):
    """The same sentences with more padding: left on the source (fairseq's default), right on the target."""
    padded = copy.deepcopy(sample)
    net = padded["net_input"]
    b = net["src_tokens"].size(0)
    net["src_tokens"] = torch.cat([net["src_tokens"].new_full((b, extra_src), pad), net["src_tokens"]], 1)
    for key, where in ((net, "prev_output_tokens"), (padded, "target")):
        key[where] = torch.cat([key[where], key[where].new_full((b, extra_tgt), pad)], 1)
    return padded


def test_padding_changes_no_term(teacher, half_student, mt_data):
    task, model, criterion = _setup(teacher, half_student, mt_data)
    sample = batch_of(task, range(10))
    plain = per_token(criterion, model, sample)[0]
    padded = per_token(criterion, model, _pad(sample, task.source_dictionary.pad()))[0]
    for name in COMPONENTS:
        assert padded[name] == pytest.approx(plain[name], rel=1e-5, abs=1e-7), name


def test_splitting_a_batch_gives_the_same_per_token_values(teacher, half_student, mt_data):
    task, model, criterion = _setup(teacher, half_student, mt_data)
    whole = criterion(model, batch_of(task, range(16)))
    halves = [criterion(model, batch_of(task, ids)) for ids in (range(0, 7), range(7, 16))]
    sample_size = sum(h[1] for h in halves)
    assert sample_size == whole[1]
    for name in COMPONENTS:
        split = sum(h[2][name].item() for h in halves) / sample_size
        assert split == pytest.approx(whole[2][name].item() / whole[1], rel=1e-5, abs=1e-7), name


def test_half_precision_inputs_give_finite_values_close_to_fp32(teacher, half_student, mt_data):
    """Features read from the real models, cast to fp16: every loss stays finite and within 1% (or 1e-3)."""
    task, model, criterion = _setup(teacher, half_student, mt_data)
    sample = batch_of(task, range(8))
    from makd_fairseq.aspects import position_weights, positions_of

    weights = position_weights(sample, task.source_dictionary.pad())
    with Taps(model, criterion.student_features) as s, Taps(task.teacher, criterion.teacher_features) as t:
        s_logits = model(**sample["net_input"])[0]
        with torch.no_grad():
            t_logits = task.teacher(**sample["net_input"])[0]
    for row in criterion.rows:
        a, b = s.values[row.student].detach(), t.values[row.teacher]
        w = weights[positions_of(row.student)]
        if row.loss == "kl":
            ref, half = attention_kl(a, b, w, 4), attention_kl(a.half(), b.half(), w, 4)
        else:
            ref, half = mse(a, b, w), mse(a.half(), b.half(), w)
        assert half.dtype == torch.float32 and torch.isfinite(half)
        assert half.item() == pytest.approx(ref.item(), rel=1e-2, abs=1e-3), row
    mask = sample["target"].ne(task.source_dictionary.pad()).float()
    ref = output_kl(s_logits.detach(), t_logits, mask, 2.0)
    half = output_kl(s_logits.detach().half(), t_logits.half(), mask, 2.0)
    assert torch.isfinite(half) and half.item() == pytest.approx(ref.item(), rel=1e-2)


def test_fully_masked_attention_rows_never_give_nan():
    # a query row whose keys are all masked has NaN probabilities after softmax(-inf...)
    scores = torch.randn(2 * 3, 4, 5)
    scores[:, 3, :] = float("-inf")
    p_t = torch.softmax(scores, -1)
    p_s = torch.softmax(scores + 0.1 * torch.randn_like(scores), -1).requires_grad_()
    weight = torch.ones(2, 4)
    weight[:, 3] = 0  # that query is padding
    value = attention_kl(p_s, p_t, weight, heads=3)
    value.backward()
    assert torch.isnan(p_t[:, 3]).all()  # the case this test is about
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(p_s.grad).all()  # the fully masked row included
    assert (p_s.grad[:, 3] == 0).all() and (p_s.grad[:, :3] != 0).any()


def test_taps_read_what_the_model_computes(teacher, mt_data):
    from conftest import load, valid_batch

    model, task = load(teacher, mt_data)
    sample = valid_batch(task, max_sentences=6)
    last = len(model.decoder.layers) - 1
    features = [Feature("decoder", last, "attn", "encoder_attn"), Feature("encoder", 1, "hidden"),
                Feature("decoder", 0, "fc2")]
    with torch.no_grad(), Taps(model, features) as taps:
        net = sample["net_input"]
        enc = model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
        _, extra = model.decoder(net["prev_output_tokens"], encoder_out=enc)
    probs = taps.values[features[0]]
    b, t, s = extra["attn"][0].shape
    # fairseq returns the last layer's cross-attention averaged over heads: our per-head tap agrees
    assert torch.allclose(probs.view(b, -1, t, s).mean(1), extra["attn"][0], atol=1e-6)
    assert torch.equal(taps.values[features[1]], enc["encoder_out"][0])
    assert taps.values[features[2]].shape == (t, b, 64)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_query_tap_is_the_projection_output_although_fairseq_scales_it_in_place(teacher, mt_data):
    from conftest import load, valid_batch

    model, task = load(teacher, mt_data)
    sample = valid_batch(task, max_sentences=6)
    mha = model.decoder.layers[0].encoder_attn
    f = Feature("decoder", 0, "q", "encoder_attn")
    copies = []
    mha.q_proj.register_forward_hook(lambda m, a, out: copies.append(out.clone()))  # before q *= scaling
    with torch.no_grad(), Taps(model, [f]) as taps:
        model(**sample["net_input"])
    assert not torch.allclose(taps.values[f], copies[0])  # the recorded tensor was scaled after the hook
    assert taps.scales[f] == mha.head_dim ** 0.5
    assert torch.allclose(taps.values[f] * taps.scales[f], copies[0], atol=1e-6)


def test_recomputable_taps_give_the_recorded_features(teacher, mt_data):
    """q, k, v (self- and cross-attention) and fc1 held as their module's input: recomputing gives exactly what the
    plain tap records (the scaled query, the activation)."""
    from conftest import load, valid_batch

    model, task = load(teacher, mt_data)
    sample = valid_batch(task, max_sentences=6)
    features = [Feature(stack, 1, name, attention) for stack, attentions in (
        ("encoder", ("self_attn",)), ("decoder", ("self_attn", "encoder_attn")))
        for attention in attentions for name in ("q", "k", "v")]
    features += [Feature("encoder", 0, "fc1"), Feature("decoder", 1, "fc1")]
    with torch.no_grad(), Taps(model, features) as plain:
        model(**sample["net_input"])
    with torch.no_grad(), Taps(model, features, recompute=True) as held:
        model(**sample["net_input"])
    assert {f.name for f in features} == set(RECOMPUTABLE)
    for f in features:
        assert isinstance(held.values[f], Recomputable) and held.scales[f] == plain.scales[f]
        assert held.values[f].input.size(-1) == 64  # the layer's width, not the FFN's
        with torch.no_grad():
            assert torch.allclose(held.values[f](), plain.values[f], atol=1e-6), f
    inputs = {id(held.values[Feature("decoder", 1, n, "self_attn")].input) for n in ("q", "k", "v")}
    assert len(inputs) == 1  # q, k and v of a self-attention hold one tensor


def _graph_nodes(loss):
    """Names of the autograd nodes behind ``loss``."""
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [n for n, _ in node.next_functions]
    return {type(n).__name__ for n in seen}


def test_recomputed_teacher_features_change_no_loss_and_no_gradient(teacher, half_student, mt_data):
    """--recompute-teacher holds teacher q/k/v/fc1 as inputs and recomputes them: the same loss, components and
    gradients as with the features themselves (the default)."""
    results = []
    for recompute in (True, False):
        task, model, criterion = _setup(teacher, half_student, mt_data, recompute_teacher=recompute)
        sample = batch_of(task, range(12))
        model.zero_grad()
        loss, _, log = criterion(model, sample)
        assert ("_RecomputedMSEBackward" in _graph_nodes(loss)) == recompute
        loss.backward()
        results.append((loss.item(), {k: log[k].item() for k in COMPONENTS},
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (a_loss, a_log, a_grads), (b_loss, b_log, b_grads) = results
    assert a_loss == pytest.approx(b_loss, rel=1e-6) and a_log == pytest.approx(b_log, rel=1e-5, abs=1e-7)
    assert a_log["loss_mha"] > 0 and a_log["loss_ffn"] > 0
    assert len(a_grads) == len(b_grads)
    for a, b in zip(a_grads, b_grads):  # float rounding: the order of the sums differs
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_layer_selection_and_mapping():
    assert select_layers("shallow", 6, "encoder") == [0, 1, 2]
    assert select_layers("deep", 6, "encoder") == [3, 4, 5]
    assert select_layers("encoder:0,4;decoder:1", 6, "decoder") == [1]
    assert select_layers("encoder:0,4", 6, "decoder") == []
    with pytest.raises(ValueError, match="has 6 layers"):
        select_layers("7", 6, "encoder")
    assert map_layers("skip", 3, 6, "encoder") == {0: 1, 1: 3, 2: 5}
    assert map_layers("last", 2, 6, "encoder") == {0: 4, 1: 5}
    assert map_layers("0:2,1:5", 2, 6, "encoder") == {0: 2, 1: 5}


def test_default_table_puts_matrix_on_shallow_and_layer_on_deep_layers():
    cfg = MakdConfig(sentence_avg=False)
    rows = build_table(cfg, {"encoder": 2, "decoder": 2}, {"encoder": 2, "decoder": 2})
    by = {(r.student.stack, r.student.layer, r.term) for r in rows}
    assert {t for s, i, t in by if i == 0} == {"loss_mha", "loss_ffn"}
    assert {t for s, i, t in by if i == 1} == {"loss_attn", "loss_hidn"}
    # encoder: 4 projections + 2 FFN + 1 attention + 1 hidden; decoder: 8 + 2 + 2 (self, cross) + 1
    assert len(rows) == (4 + 2 + 1 + 1) + (8 + 2 + 2 + 1)
    assert not build_table(MakdConfig(sentence_avg=False, layer_weight=0, matrix_weight=0),
                           {"encoder": 2, "decoder": 2}, {"encoder": 2, "decoder": 2})


def test_bad_criterion_settings_are_clear_errors(teacher, half_student, mt_data):
    with pytest.raises(ValueError, match="kd-temperature must be > 0"):
        _setup(teacher, half_student, mt_data, kd_temperature=0.0)
    with pytest.raises(ValueError, match="has 2 layers"):
        _setup(teacher, half_student, mt_data, matrix_layers="3")
    with pytest.raises(ValueError, match="needs a task with a teacher"):
        MakdCriterion(SimpleNamespace(target_dictionary=None), MakdConfig(sentence_avg=False), student_shape={})


def test_malformed_layer_settings_name_the_expected_forms():
    with pytest.raises(ValueError, match="expected shallow, deep, all"):
        select_layers("middle", 6, "encoder")
    with pytest.raises(ValueError, match="expected skip, last"):
        map_layers("uniform", 3, 6, "encoder")
    with pytest.raises(ValueError, match="more than the teacher's 2"):
        map_layers("skip", 3, 2, "decoder")


def test_losses_equal_their_textbook_definitions():
    """The fused forms in aspects.py against torch's own kl_div / plain arithmetic, values and gradients."""
    torch.manual_seed(0)
    b, heads, t, s = 3, 2, 5, 7
    lengths = torch.tensor([7, 4, 6])
    key_mask = torch.arange(s)[None, :] < lengths[:, None]  # B x S, padded keys get probability 0

    def probs():
        scores = torch.randn(b, heads, t, s).masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1).view(b * heads, t, s)

    p_s, p_t = probs().requires_grad_(), probs()
    weight = torch.rand(b, t)
    value = attention_kl(p_s, p_t, weight, heads)
    log_p_s = p_s.masked_fill(p_s == 0, 1.0).log()  # 0 · log 0 = 0: any finite log at masked keys
    kl = F.kl_div(log_p_s, p_t, reduction="none").sum(-1).view(b, heads, t).mean(1)
    reference = (kl * weight).sum()
    assert torch.allclose(value, reference, rtol=1e-5)
    (grad,) = torch.autograd.grad(value, p_s)
    (ref_grad,) = torch.autograd.grad(reference, p_s)
    assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)

    x, y = torch.randn(4, b, 8, requires_grad=True), torch.randn(4, b, 8)
    w = torch.rand(b, 4)
    assert torch.allclose(mse(x, y, w), (((x - y) ** 2).mean(-1) * w.t()).sum(), rtol=1e-6)
    # against a teacher feature recomputed from its module's input: mse's value and gradient, plain and relative
    lin, inputs = torch.nn.Linear(6, 8), torch.randn(4, b, 6)
    with torch.no_grad():
        y = lin(inputs).relu()
    for relative in (False, True):
        (g,) = torch.autograd.grad(mse(x, y, w, relative), x)
        value = recomputed_mse(x, Recomputable(inputs, lambda z: lin(z).relu()), w, relative)
        assert torch.allclose(value, mse(x, y, w, relative), rtol=1e-6)
        assert torch.allclose(torch.autograd.grad(value, x)[0], g, rtol=1e-5, atol=1e-7)


def test_relative_mse_is_scale_free_and_exactly_one_for_a_silent_student():
    torch.manual_seed(0)
    t, s = torch.randn(7, 3, 16), torch.randn(7, 3, 16)
    weight = torch.rand(3, 7)
    # every position of a student that outputs zeros has relative error ‖0 − t‖² / ‖t‖² = 1
    assert mse(torch.zeros_like(t), t, weight, relative=True).item() == pytest.approx(weight.sum().item(), rel=1e-6)
    assert mse(t, t, weight, relative=True).item() == 0
    for scale in (1e-3, 1e3):  # activations of any magnitude give the same value
        assert mse(scale * s, scale * t, weight, relative=True).item() == pytest.approx(
            mse(s, t, weight, relative=True).item(), rel=1e-5)
    per_position = ((s - t) ** 2).sum(-1) / (t ** 2).sum(-1)
    assert mse(s, t, weight, relative=True).item() == pytest.approx((per_position.t() * weight).sum().item(), rel=1e-5)


def test_teacher_feature_norm_gives_per_term_means_of_relative_errors(teacher, full_rank_student, half_student,
                                                                      mt_data):
    task, model, criterion = _setup(teacher, full_rank_student, mt_data, feature_norm="teacher")
    sample = batch_of(task, range(12))
    values = per_token(criterion, model, sample)[0]
    assert all(abs(values[term]) <= 1e-6 for term in TERMS), values
    task, model, criterion = _setup(teacher, half_student, mt_data, feature_norm="teacher")
    values = per_token(criterion, model, sample)[0]
    raw = per_token(_setup(teacher, half_student, mt_data, feature_norm="none")[2], model, sample)[0]
    for term in ("loss_mha", "loss_ffn", "loss_hidn"):  # relative errors of a 50% factorization, averaged
        assert 0 < values[term] < 1, (term, values[term])
    n_attn = sum(row.term == "loss_attn" for row in criterion.rows)
    assert values["loss_attn"] == pytest.approx(raw["loss_attn"] / n_attn, rel=1e-5)  # the KL rows, averaged
    with pytest.raises(ValueError, match="--feature-norm"):
        _setup(teacher, half_student, mt_data, feature_norm="layer")
