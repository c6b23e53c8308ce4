"""Hazards of the training path that would go wrong silently: activation checkpointing, autocast in a recomputed
backward, taps failing midway, the student's shape, terms of weight 0, reduced precision."""

import pytest
import torch

from conftest import TINY_ARCH, TRAIN_COMMON, USER_DIR, batch_of, run
from makd_fairseq.aspects import attention_kl, mse, recomputed_mse
from makd_fairseq.criterions import makd as makd_module
from makd_fairseq.criterions.makd import COMPONENTS, MakdConfig, MakdCriterion
from makd_fairseq.taps import Feature, Recomputable, Taps, shape_of


def _task(teacher, data):
    import makd_fairseq  # noqa: F401
    from makd_fairseq.tasks.makd_translation import MakdTranslationConfig, MakdTranslationTask

    task = MakdTranslationTask.setup_task(MakdTranslationConfig(
        data=str(data), teacher_path=str(teacher), source_lang="en", target_lang="de",
        train_subset="train", dataset_impl=None, required_seq_len_multiple=1))
    task.load_dataset("valid")
    return task


def _student(task, path, **overrides):
    from fairseq import checkpoint_utils

    models, _ = checkpoint_utils.load_model_ensemble([str(path)], arg_overrides=overrides, task=task)
    return models[0]


def _grads(criterion, model, sample):
    model.zero_grad()
    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    return loss.item(), {k: log[k].item() for k in COMPONENTS}, {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


ONLY_INSIDE = dict(ce_weight=0.0, model_weight=0.0, layer_weight=0.0, matrix_layers="all")
ONLY_OUTSIDE = dict(matrix_weight=0.0, attn_weight=0.0, layer_layers="all", hidn_embeddings=True)


def test_checkpoint_activations_refuse_the_terms_read_inside_a_layer(teacher, half_student, mt_data):
    """fairseq's checkpoint_wrapper runs a layer's first forward under no_grad: q/k/v/out, fc1/fc2 and attention maps
    tapped there would carry no gradient (the student would not move), so the criterion refuses them."""
    task = _task(teacher, mt_data)
    model = _student(task, half_student, checkpoint_activations=True).train()
    assert any(hasattr(m, "precheckpoint_forward") for m in model.modules())
    criterion = MakdCriterion(task, MakdConfig(sentence_avg=False, **ONLY_INSIDE), student_shape=shape_of(model))
    with pytest.raises(ValueError, match="--checkpoint-activations does not combine with loss_ffn, loss_mha:"):
        criterion(model, batch_of(task, range(8)))


def test_checkpoint_activations_give_the_same_update_for_terms_outside_the_layers(teacher, half_student, mt_data):
    """Layer outputs (loss_hidn), the output distribution and cross-entropy are outside the checkpointed region:
    the same loss, components and gradients with and without --checkpoint-activations."""
    task = _task(teacher, mt_data)
    sample = batch_of(task, range(12))
    results = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = _student(task, half_student, checkpoint_activations=checkpointed, dropout=0.0).train()
        criterion = MakdCriterion(task, MakdConfig(sentence_avg=False, **ONLY_OUTSIDE), student_shape=shape_of(model))
        results.append(_grads(criterion, model, sample))
    (a_loss, a_log, a_grads), (b_loss, b_log, b_grads) = results
    assert a_log["loss_hidn"] > 0 and a_log["loss_model"] > 0
    assert b_loss == pytest.approx(a_loss, rel=1e-6) and b_log == pytest.approx(a_log, rel=1e-6, abs=1e-8)
    assert a_grads.keys() == b_grads.keys() and len(a_grads) > 0
    scale = max(g.abs().max() for g in a_grads.values())
    for name, g in a_grads.items():
        # float rounding only: the checkpointed backward sums in another order (key biases have a zero gradient)
        assert (b_grads[name] - g).abs().max() <= 1e-6 * scale, name


def test_fairseq_train_with_checkpoint_activations_and_the_default_aspects_exits_with_one_line(
        teacher, half_student, mt_data, tmp_path):
    proc = run("fairseq-train", mt_data, "--user-dir", USER_DIR, "--task", "makd_translation", "--teacher-path",
               teacher, "--arch", "lowrank_transformer", "--finetune-from-model", half_student, *TINY_ARCH,
               "--criterion", "makd", "--checkpoint-activations", *TRAIN_COMMON, "--max-update", "1",
               "--save-dir", tmp_path, check=False)
    assert proc.returncode != 0
    assert "ValueError: --checkpoint-activations does not combine with loss_attn, loss_ffn, loss_mha:" in proc.stderr
    assert not (tmp_path / "checkpoint_last.pt").exists()


def test_recomputed_teacher_feature_backward_runs_under_the_forwards_autocast_state():
    """Under autocast the teacher's feature is a bf16 product; the backward (outside autocast, in autograd's thread)
    must recompute that same feature, not an fp32 one, so the gradient is the one of the value computed."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 48)
    x, s = torch.randn(6, 3, 32), torch.randn(6, 3, 48, requires_grad=True)
    w = torch.rand(3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            t = lin(x)
        assert t.dtype == torch.bfloat16
        plain = mse(s, t, w)
        recomputed = recomputed_mse(s, Recomputable(x, lin), w)
    assert recomputed.item() == pytest.approx(plain.item(), rel=1e-6)
    (g_plain,) = torch.autograd.grad(plain, s)
    (g_recomputed,) = torch.autograd.grad(recomputed, s)
    # the fp32 recomputation differs from the bf16 feature by ~1e-2 relative: far outside this tolerance
    assert torch.allclose(g_recomputed, g_plain, rtol=1e-5, atol=1e-6)


def test_taps_failing_midway_leave_the_model_as_it_was(teacher, mt_data, monkeypatch):
    from conftest import load

    model, _ = load(teacher, mt_data)
    paths = {n: m.skip_embed_dim_check for n, m in model.named_modules() if hasattr(m, "skip_embed_dim_check")}
    features = [Feature("decoder", i, name, "self_attn") for i in (0, 1) for name in ("q", "attn")]
    features += [Feature("decoder", 1, "fc2")]

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot register here")

    monkeypatch.setattr(model.decoder.layers[1].fc2, "register_forward_hook", refuse)
    with pytest.raises(RuntimeError, match="cannot register here"):
        with Taps(model, features):
            pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert {n: m.skip_embed_dim_check for n, m in model.named_modules()
            if hasattr(m, "skip_embed_dim_check")} == paths


def test_the_criterion_needs_the_students_shape(teacher, mt_data):
    """fairseq builds the criterion from the task after the student: the shape must come from that student. A task
    that built none is an error (it used to fall back to the teacher's shape, silently)."""
    import makd_fairseq  # noqa: F401
    from fairseq import criterions
    from omegaconf import OmegaConf

    task = _task(teacher, mt_data)
    cfg = OmegaConf.structured(MakdConfig(sentence_avg=False))
    cfg._name = "makd"
    with pytest.raises(ValueError, match="needs the student's shape"):
        criterions.build_criterion(cfg, task)
    # a student with one decoder layer: the table follows it, not the teacher's two
    model = task.build_model(_student_args(teacher, decoder_layers=1))
    built = criterions.build_criterion(cfg, task)
    assert built.rows and {r.student.layer for r in built.rows if r.student.stack == "decoder"} == {0}
    assert shape_of(model)["decoder"]["layers"] == 1


def _student_args(teacher, **changes):
    from makd_fairseq.checkpoint import load_checkpoint, model_args

    args = model_args(load_checkpoint(str(teacher)))
    for k, v in changes.items():
        setattr(args, k, v)
    return args


def test_terms_of_weight_zero_are_neither_computed_nor_tapped(teacher, half_student, mt_data, monkeypatch):
    task = _task(teacher, mt_data)
    model = _student(task, half_student)
    calls = []
    monkeypatch.setattr(makd_module, "output_kl", lambda *a, **k: calls.append(1))
    criterion = MakdCriterion(task, MakdConfig(sentence_avg=False, model_weight=0.0, attn_weight=0.0,
                                               layer_layers="all", matrix_layers="all"),
                              student_shape=shape_of(model))
    assert not any(f.name == "attn" for f in criterion.student_features | criterion.teacher_features)
    seen = []  # every module a tap hooks during the criterion's call
    register = torch.nn.Module.register_forward_pre_hook

    def spy(module, hook, *args, **kwargs):
        seen.append(module)
        return register(module, hook, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "register_forward_pre_hook", spy)
    _, _, log = criterion(model, batch_of(task, range(6)))
    assert calls == []  # the output KL was not computed
    assert log["loss_model"].item() == 0 and log["loss_attn"].item() == 0 and log["loss_mha"].item() > 0
    dropouts = {id(layer.self_attn.dropout_module) for m in (model, task.teacher)
                for stack in (m.encoder, m.decoder) for layer in stack.layers}
    assert seen and not any(id(m) in dropouts for m in seen)  # no attention map was tapped


def test_attention_kl_keeps_no_fp32_copy_of_half_precision_maps():
    torch.manual_seed(0)
    p_t = torch.randn(8, 5, 7).softmax(-1).half()
    logits = torch.randn(8, 5, 7, dtype=torch.half, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, t.numel())) or t, lambda t: t):
        p_s = logits.softmax(-1)
        value = attention_kl(p_s, p_t, torch.ones(2, 5), heads=4)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    maps = [d for d, n in saved if n >= p_t.numel()]
    assert maps and all(d == torch.half for d in maps), saved  # no fp32 copy of a map is kept for the backward
    value.backward()
    assert logits.grad.dtype == torch.half and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("mode", ["bf16 model and teacher", "autocast"])
def test_bf16_criterion_stays_finite_and_close_to_fp32(mode, teacher, half_student, mt_data):
    """Losses within 2% (or 2e-3 absolute) of fp32 and every gradient within 5% in norm and direction (cosine ≥ 0.99):
    bf16 keeps 8 bits of mantissa."""
    task = _task(teacher, mt_data)
    sample = batch_of(task, range(12))
    cfg = MakdConfig(sentence_avg=False, matrix_layers="all", layer_layers="all", hidn_embeddings=True)
    model = _student(task, half_student, dropout=0.0).train()
    criterion = MakdCriterion(task, cfg, student_shape=shape_of(model))
    ref_loss, ref_log, ref_grads = _grads(criterion, model, sample)
    if mode == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, log, grads = _grads(criterion, model, sample)
    else:
        model.bfloat16()
        loss, log, grads = _grads(criterion, model, sample)
        assert next(task.teacher.parameters()).dtype == torch.bfloat16  # the teacher follows the student
    assert all(torch.isfinite(torch.tensor(v)) for v in log.values())
    assert loss == pytest.approx(ref_loss, rel=2e-2)
    for name in COMPONENTS:
        assert log[name] == pytest.approx(ref_log[name], rel=2e-2, abs=2e-3), name
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        g, r = g.float().flatten(), ref_grads[name].flatten()
        assert torch.isfinite(g).all(), name
        assert g.norm().item() == pytest.approx(r.norm().item(), rel=5e-2, abs=1e-6), name
        if r.norm() > 1e-6:
            assert torch.nn.functional.cosine_similarity(g, r, dim=0) >= 0.99, name
