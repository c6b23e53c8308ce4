"""Faster decoding (issue 35): the latent self-attention cache of factorized students (``LatentSelfAttention``) and
encoder states once per source sentence (``PerSentenceEnsemble``, the makd tasks' generators) give the hypotheses
of fairseq's own beam search, scores within 1e-4, and really take their paths."""

import argparse
import re

import pytest
import torch

from conftest import TINY_ARCH, TRAIN_COMMON, USER_DIR, load, makd_init, run, shared, valid_batch
from makd_fairseq.generation import PerSentenceEnsemble
from makd_fairseq.lowrank import DEFAULT_TARGETS, VOCABULARY_TARGETS, LatentSelfAttention

VOCAB = ",".join(DEFAULT_TARGETS + VOCABULARY_TARGETS)
BEAM = argparse.Namespace(beam=4, max_len_a=1.2, max_len_b=10)


@pytest.fixture(scope="module")
def sum_teacher(other_vocab_data, tmp_path_factory):
    """A small summarization teacher (conftest's summarization data) trained by fairseq-train (once per test run)."""
    return shared(tmp_path_factory, "sum_teacher", lambda d: run(
        "fairseq-train", other_vocab_data, "--arch", "transformer", *TINY_ARCH, *TRAIN_COMMON,
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--truncate-source",
        "--max-source-positions", "256", "--skip-invalid-size-inputs-valid-test",
        "--max-update", "40", "--save-dir", d)) / "checkpoint_last.pt"


STUDENTS = [("translation", 0.5, None), ("translation", 0.25, VOCAB), ("translation", 0.5, VOCAB),
            ("summarization", 0.5, None), ("summarization", 0.3, VOCAB)]


@pytest.fixture(scope="module", params=STUDENTS, ids=lambda s: f"{s[0]}-{s[1]}{'-vocab' if s[2] else ''}")
def student(request, teacher, mt_data, sum_teacher, other_vocab_data, tmp_path_factory):
    """(student checkpoint, its data) made by makd-init from the task's fixture teacher."""
    task, budget, targets = request.param
    source, data = (teacher, mt_data) if task == "translation" else (sum_teacher, other_vocab_data)
    name = f"latent_{task}_{budget}_{'vocab' if targets else 'default'}"
    flags = ["--targets", targets] if targets else []
    path = shared(tmp_path_factory, name, lambda d: makd_init(
        "--teacher", source, "--param-budget", budget, *flags, "--out", d / "student.pt")) / "student.pt"
    return path, data


def _prepared(path, data, latent=True):
    model, task = load(path, data)
    model.latent_cache = latent  # what --model-overrides "{'no_latent_cache': True}" sets when the model is built
    model.make_generation_fast_()
    return model, task


def _beam(model, task, sample, generator_models=None):
    generator = task.build_generator(generator_models or [model], BEAM)
    with torch.no_grad():
        return task.inference_step(generator, [model], sample)


def _assert_same_hypotheses(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert [h["tokens"].tolist() for h in a] == [h["tokens"].tolist() for h in b]
        for x, y in zip(a, b):
            assert abs(x["score"].item() - y["score"].item()) <= 1e-4


def test_latent_cache_decodes_the_hypotheses_of_fairseqs_cache(student):
    """Beam search (beam 4, 16 sentences) with the latent cache: every hypothesis identical and scores within 1e-4 of
    the same student decoding with fairseq's k/v cache."""
    path, data = student
    latent, task = _prepared(path, data)
    plain, _ = _prepared(path, data, latent=False)
    assert sum(isinstance(m, LatentSelfAttention) for m in latent.modules()) == 2  # both decoder layers
    assert not any(isinstance(m, LatentSelfAttention) for m in plain.modules())
    sample = valid_batch(task, max_sentences=16)
    _assert_same_hypotheses(_beam(latent, task, sample), _beam(plain, task, sample))


def _decoder_steps(model, sample):
    """Incremental decoding of the sample's target prefixes, one token at a time: (logits B x T x V, the state)."""
    tokens = sample["net_input"]["prev_output_tokens"]
    encoder_out = model.encoder(sample["net_input"]["src_tokens"], src_lengths=sample["net_input"]["src_lengths"])
    state, steps = {}, []
    with torch.no_grad():
        for t in range(tokens.size(1)):
            steps.append(model.decoder(tokens[:, : t + 1], encoder_out=encoder_out, incremental_state=state)[0])
    return torch.cat(steps, dim=1), state


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "separate"])
def test_incremental_decoding_with_latents_equals_the_full_forward(fold, half_student, mt_data):
    """Decoding the reference prefix token by token through the latent cache gives the full (teacher-forced) forward's
    logits within 1e-4 (at the target's real tokens; fairseq's own cache differs there at pads, and is matched there), with U_k and U_v folded into the neighbouring matrices and kept separate; the cache holds
    r_k + r_v wide latents and no keys or values. After loading other weights, the latent path follows them."""
    model, task = _prepared(half_student, mt_data)
    attns = [m for m in model.modules() if isinstance(m, LatentSelfAttention)]
    assert len(attns) == 2
    for attn in attns:
        attn.fold = fold
    sample = valid_batch(task, max_sentences=8)
    with torch.no_grad():
        full = model(**sample["net_input"])[0]
    steps, state = _decoder_steps(model, sample)
    real = sample["net_input"]["prev_output_tokens"].ne(task.target_dictionary.pad())  # pad queries differ anyway
    assert torch.allclose(steps[real], full[real], atol=1e-4), (steps - full)[real].abs().max()
    plain, _ = _prepared(half_student, mt_data, latent=False)
    assert torch.allclose(steps, _decoder_steps(plain, sample)[0], atol=1e-4)  # fairseq's cache, pad rows included
    for attn in attns:
        buffer = attn._get_input_buffer(state)
        assert "prev_key" not in buffer and "prev_value" not in buffer
        width = attn.k_proj.rank + attn.v_proj.rank
        assert buffer["prev_latent"].shape == (sample["nsentences"], full.size(1), width)
        assert width < 2 * attn.embed_dim
        assert ("q_fold" in attn.latent_weights()) == fold and ("o_fold" in attn.latent_weights()) == fold

    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=generator))
        moved = model(**sample["net_input"])[0]
    assert not torch.allclose(moved[real], full[real], atol=1e-3)
    assert torch.allclose(_decoder_steps(model, sample)[0][real], moved[real], atol=1e-4)


def test_the_latent_cache_leaves_training_and_saved_keys_alone(half_student, mt_data):
    """With gradients enabled, or without an incremental state, a prepared student runs fairseq's forward: the same
    loss and gradients as unprepared; its state_dict keys are the unprepared student's."""
    latent, task = _prepared(half_student, mt_data)
    plain, _ = load(half_student, mt_data)
    assert latent.state_dict().keys() == plain.state_dict().keys()
    sample = valid_batch(task, max_sentences=8)
    grads = []
    for model in (latent, plain):
        out = model(**sample["net_input"])[0]
        out.logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, grad in grads[1].items():
        assert torch.allclose(grads[0][name], grad, rtol=1e-5, atol=1e-6), name


def _cross_attention_rows(model):
    """Per call of the first decoder layer's cross-attention: the rows of the encoder output it is given; and the
    rows of every computation of its keys (k_proj's input)."""
    attn = model.decoder.layers[0].encoder_attn
    given, keys = [], []
    handles = [attn.register_forward_pre_hook(lambda m, args, kwargs: given.append(kwargs["key"].size(1)),
                                              with_kwargs=True),
               attn.k_proj.register_forward_pre_hook(lambda m, args: keys.append(args[0].size(1)))]
    return given, keys, handles


@pytest.mark.parametrize("step", ["lean", "fairseq"])
@pytest.mark.parametrize("who", ["teacher", "student"])
def test_encoder_states_once_per_sentence_decode_fairseqs_hypotheses(who, step, teacher, half_student, mt_data,
                                                                     monkeypatch):
    """The makd task's generator (``PerSentenceEnsemble``) on a plain fairseq teacher and on a latent student, with
    ``LeanDecoder``'s step (the default) and with fairseq's (``--fairseq-decoder-step``): the hypotheses of fairseq's
    generator, scores within 1e-4. fairseq's step: its cross-attention reads one row per sentence (not per beam) and
    computes its keys once. The lean step: no decoder module is called, the cross-attention keys are one row per
    sentence and the student's self-attention caches hold its latents (r wide). Sentences finish at different
    lengths, so the batch shrinks on the way."""
    from fairseq import tasks
    from makd_fairseq.lean_step import FIRST_CAPACITY, LeanDecoder
    from makd_fairseq.tasks.makd_translation import MakdTranslationConfig

    path = teacher if who == "teacher" else half_student
    model, task = _prepared(path, mt_data) if who == "student" else load(path, mt_data)
    sample = valid_batch(task, max_sentences=16)
    cfg = MakdTranslationConfig(data=str(mt_data), source_lang="en", target_lang="de",
                                fairseq_decoder_step=step == "fairseq")
    ours = tasks.TASK_REGISTRY["makd_translation"].setup_task(cfg)
    caches, lean_step = [], LeanDecoder.step
    monkeypatch.setattr(LeanDecoder, "step", lambda self, *a: (
        caches.append({k: tuple(v.shape) for k, v in self.cache[0].items()}), lean_step(self, *a))[1])
    given, keys, handles = _cross_attention_rows(model)
    generator = ours.build_generator([model], BEAM)
    assert isinstance(generator.model, PerSentenceEnsemble) and generator.model.lean == (step == "lean")
    with torch.no_grad():
        per_sentence = ours.inference_step(generator, [model], sample)
    for h in handles:
        h.remove()
    n = sample["nsentences"]
    if step == "fairseq":
        assert given[0] == n and max(given) == n and keys == [n]  # one row per sentence; keys computed once
        assert caches == []
    else:
        assert given == [] and keys == []  # no module of fairseq's decoder ran
        assert caches[0]["ck"][0] == n  # keys once per sentence
        own = model.decoder.layers[0].self_attn
        if who == "student":
            assert caches[0]["zk"][-1] == own.k_proj.rank < own.embed_dim and "k" not in caches[0]
        else:
            assert caches[0]["k"][1:] == (own.num_heads, FIRST_CAPACITY, own.head_dim)
        assert caches[-1]["ck"][0] < n  # the batch shrank: the gather by sentence ran

    given, keys, handles = _cross_attention_rows(model)
    fairseqs = _beam(model, task, sample)  # the translation task's generator: fairseq's own
    for h in handles:
        h.remove()
    assert given[0] == n * BEAM.beam and keys == [n * BEAM.beam]  # and our generator left the model as it was
    _assert_same_hypotheses(per_sentence, fairseqs)
    assert len({len(h[0]["tokens"]) for h in fairseqs}) > 1  # the batch shrank: the gather path ran


def _hypotheses(out):
    return sorted(re.findall(r"^H-(\d+)\t(\S+)\t(.*)$", out, flags=re.M))


def test_fairseq_generate_with_the_makd_task_prints_fairseqs_hypotheses(teacher, half_student, mt_data):
    """The real CLI: fairseq-generate --task makd_translation (encoder states per sentence, the lean step; latent
    cache for the student) prints the hypotheses and scores of fairseq's own translation task, of the same task with
    ``--fairseq-decoder-step``, and of the student with ``--model-overrides "{'no_latent_cache': True}"`` and
    ``--encoder-states-per-beam``."""
    common = [mt_data, "--user-dir", USER_DIR, "--gen-subset", "valid", "--beam", "4", "--batch-size", "16",
              "--max-len-a", "1.2", "--max-len-b", "10", "--cpu"]
    for path in (teacher, half_student):
        fast = _hypotheses(run("fairseq-generate", *common, "--path", path, "--task", "makd_translation").stdout)
        slow = run("fairseq-generate", *common, "--path", path, "--task", "makd_translation",
                   "--encoder-states-per-beam", "--model-overrides", "{'no_latent_cache': True}").stdout
        plain = _hypotheses(run("fairseq-generate", *common, "--path", path).stdout)
        fairseq_step = run("fairseq-generate", *common, "--path", path, "--task", "makd_translation",
                           "--fairseq-decoder-step").stdout
        assert len(fast) > 10
        for ours, theirs in ((fast, plain), (fast, _hypotheses(slow)), (fast, _hypotheses(fairseq_step))):
            assert [(i, h) for i, _, h in ours] == [(i, h) for i, _, h in theirs]
            assert max(abs(float(a[1]) - float(b[1])) for a, b in zip(ours, theirs)) <= 1e-4
