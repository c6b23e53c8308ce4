"""Decoder-only students: lowrank_transformer_lm, makd_language_modeling, makd-init on transformer_lm teachers."""

import copy
import json
import re

import pytest
import torch

from conftest import FIXTURES, USER_DIR, batch_of, makd_init, per_token, run, shared
from makd_fairseq.aspects import TERMS
from makd_fairseq.criterions.makd import COMPONENTS, MakdConfig, MakdCriterion
from makd_fairseq.taps import shape_of

DISTILL = ("loss_model", *TERMS)
# fairseq's LM defaults tie no input/output width to the model width: give all three
LM_ARCH = ["--decoder-layers", "2", "--decoder-embed-dim", "64", "--decoder-input-dim", "64",
           "--decoder-output-dim", "64", "--decoder-ffn-embed-dim", "128", "--decoder-attention-heads", "4",
           "--share-decoder-input-output-embed"]
# fairseq's "eos" break mode calls np.compat (gone in numpy 2); "complete" packs whole sentences
LM_DATA = ["--tokens-per-sample", "128", "--sample-break-mode", "complete"]
TRAIN = ["--cpu", "--seed", "1", "--optimizer", "adam", "--max-tokens", "2048", "--no-epoch-checkpoints",
         "--log-format", "simple", "--log-interval", "1", "--num-workers", "0", "--no-progress-bar"]


@pytest.fixture(scope="session")
def lm_data(tmp_path_factory):
    """English Debian long descriptions as a monolingual corpus (the summarization fixtures' sources)."""
    src = FIXTURES / "summarization"
    return shared(tmp_path_factory, "lm", lambda d: run(
        "fairseq-preprocess", "--only-source", "--trainpref", src / "train.src", "--validpref", src / "valid.src",
        "--testpref", src / "test.src", "--destdir", d / "bin", "--nwordssrc", "1000", "--workers", "1")) / "bin"


@pytest.fixture(scope="session")
def lm_teacher(lm_data, tmp_path_factory):
    return shared(tmp_path_factory, "lm_teacher", lambda d: run(
        "fairseq-train", lm_data, "--task", "language_modeling", "--arch", "transformer_lm", *LM_ARCH, *LM_DATA,
        *TRAIN, "--lr", "0.005", "--max-update", "40", "--save-dir", d)) / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def lm_students(lm_teacher, tmp_path_factory):
    def build(d):
        makd_init("--teacher", lm_teacher, "--rank-ratio", "1.0", "--out", d / "full.pt")
        proc = makd_init("--teacher", lm_teacher, "--param-budget", "0.6", "--out", d / "small.pt")
        assert "--task makd_language_modeling" in proc.stdout and "--arch lowrank_transformer_lm" in proc.stdout

    d = shared(tmp_path_factory, "lm_students", build)
    return {"full": d / "full.pt", "small": d / "small.pt"}


def _setup(teacher, student, data, **overrides):
    import makd_fairseq  # noqa: F401
    from fairseq import checkpoint_utils
    from makd_fairseq.tasks.makd_language_modeling import MakdLanguageModelingConfig, MakdLanguageModelingTask

    task = MakdLanguageModelingTask.setup_task(MakdLanguageModelingConfig(
        data=str(data), teacher_path=str(teacher), tokens_per_sample=128, sample_break_mode="complete",
        # the fields fairseq fills from other config groups on the CLI
        seed=1, batch_size=None, batch_size_valid=None, dataset_impl=None, data_buffer_size=10, tpu=False,
        use_plasma_view=False, plasma_path=None))
    models, _ = checkpoint_utils.load_model_ensemble([str(student)], task=task)
    cfg = MakdConfig(sentence_avg=False, **{"matrix_layers": "all", "layer_layers": "all",
                                            "hidn_embeddings": True, **overrides})
    task.load_dataset("valid")
    return task, models[0].eval(), MakdCriterion(task, cfg, student_shape=shape_of(models[0]))


def test_full_rank_lm_student_matches_the_teacher_and_has_zero_terms(lm_teacher, lm_students, lm_data):
    task, model, criterion = _setup(lm_teacher, lm_students["full"], lm_data)
    # the decoder-only table: self-attention only (no cross-attention rows), every term present
    assert {row.term for row in criterion.rows} == set(TERMS)
    assert {row.student.stack for row in criterion.rows} == {"decoder"}
    assert {row.student.attention for row in criterion.rows} == {None, "self_attn"}
    sample = batch_of(task, range(6))
    with torch.no_grad():
        s = model(**sample["net_input"])[0]
        t = task.teacher(**sample["net_input"])[0]
    assert torch.allclose(s, t, atol=1e-4)
    values = per_token(criterion, model, sample)[0]
    for term in DISTILL:
        assert abs(values[term]) <= 1e-6, (term, values[term])


@pytest.mark.parametrize("term", DISTILL)
def test_lm_student_term_is_positive_and_one_sgd_step_lowers_it(term, lm_teacher, lm_students, lm_data):
    only = {name: 0.0 for name in ("ce_weight", "model_weight", "mha_weight", "ffn_weight", "attn_weight",
                                   "hidn_weight")}
    only[{"loss_model": "model_weight", "loss_mha": "mha_weight", "loss_ffn": "ffn_weight",
          "loss_attn": "attn_weight", "loss_hidn": "hidn_weight"}[term]] = 1.0
    task, model, criterion = _setup(lm_teacher, lm_students["small"], lm_data, **only)
    sample = batch_of(task, range(6))
    before, loss, _ = per_token(criterion, model, sample)
    assert before[term] > 1e-5
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad / max(p.grad.norm().item(), 1e-12)
    assert per_token(criterion, model, sample)[0][term] < before[term]


def test_lm_padding_and_batch_splitting_change_no_per_token_value(lm_teacher, lm_students, lm_data):
    task, model, criterion = _setup(lm_teacher, lm_students["small"], lm_data)
    sample = batch_of(task, range(8))
    plain = per_token(criterion, model, sample)[0]
    padded = copy.deepcopy(sample)
    pad = task.dictionary.pad()
    for holder, key in ((padded["net_input"], "src_tokens"), (padded, "target")):
        holder[key] = torch.cat([holder[key], holder[key].new_full((holder[key].size(0), 3), pad)], 1)
    for name, value in per_token(criterion, model, padded)[0].items():
        assert value == pytest.approx(plain[name], rel=1e-5, abs=1e-7), name
    halves = [criterion(model, batch_of(task, ids)) for ids in (range(0, 3), range(3, 8))]
    size = sum(h[1] for h in halves)
    for name in COMPONENTS:
        assert sum(h[2][name].item() for h in halves) / size == pytest.approx(plain[name], rel=1e-5, abs=1e-7)


def test_full_rank_lm_student_continues_text_exactly_like_the_teacher(lm_teacher, lm_students, lm_data):
    """Greedy continuation through fairseq's own generator (incremental decoding, merged factors)."""
    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import GenerationConfig

    outputs = []
    for path in (lm_teacher, lm_students["full"]):
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)],
                                                                          arg_overrides={"data": str(lm_data)})
        model = models[0].eval()
        model.prepare_for_inference_(cfg)
        task.load_dataset("valid")
        sample = batch_of(task, range(4))
        prefix = sample["net_input"]["src_tokens"][:, 1:6]  # after the leading </s>, as inference_step drops it
        generator = task.build_generator([model], GenerationConfig(beam=1, max_len_b=12, min_len=12))
        with torch.no_grad():
            hypos = task.inference_step(generator, [model], {"net_input": {
                "src_tokens": prefix, "src_lengths": torch.full((4,), 5)}}, prefix_tokens=prefix)
        outputs.append([h[0]["tokens"].tolist() for h in hypos])
    assert outputs[0] == outputs[1]
    assert all(len(tokens) > 5 for tokens in outputs[0]), outputs[0]


def test_makd_language_modeling_trains_with_fairseq_train_and_eval_lm_scores_it(lm_teacher, lm_students, lm_data,
                                                                              tmp_path):
    save = tmp_path / "save"
    # no shape flags: the student named by --finetune-from-model brings its dimensions (2 layers, 64 wide)
    proc = run("fairseq-train", lm_data, "--user-dir", USER_DIR, "--task", "makd_language_modeling",
               "--teacher-path", lm_teacher, "--arch", "lowrank_transformer_lm", *LM_DATA,
               "--finetune-from-model", lm_students["small"], "--criterion", "makd", *TRAIN, "--lr", "0.001",
               "--max-update", "6", "--save-dir", save)
    log = proc.stdout + proc.stderr
    for name in ("loss_ce", "loss_model", "loss_mha", "loss_ffn", "loss_attn", "loss_hidn"):
        assert f"{name} " in log, name
    state = torch.load(save / "checkpoint_last.pt", weights_only=False)
    assert not any(k.startswith("teacher") for k in state["model"])  # the teacher is never saved
    student = torch.load(lm_students["small"], weights_only=False)
    assert {k: v.shape for k, v in state["model"].items()} == {k: v.shape for k, v in student["model"].items()}
    scored = run("fairseq-eval-lm", lm_data, "--user-dir", USER_DIR, "--path", save / "checkpoint_last.pt",
                 "--cpu", *LM_DATA, "--max-tokens", "2048", "--gen-subset", "test")
    assert "Perplexity:" in scored.stdout + scored.stderr


def test_lm_teacher_with_another_vocabulary_is_refused(lm_teacher, tmp_path):
    other = tmp_path / "bin"
    src = FIXTURES / "translation"
    run("fairseq-preprocess", "--only-source", "--trainpref", src / "train.en", "--validpref", src / "valid.en",
        "--destdir", other, "--nwordssrc", "500", "--workers", "1")
    out = run("fairseq-train", other, "--user-dir", USER_DIR, "--task", "makd_language_modeling",
              "--teacher-path", lm_teacher, "--arch", "lowrank_transformer_lm", *LM_ARCH, *LM_DATA,
              "--param-budget", "0.6", "--criterion", "makd", *TRAIN, "--lr", "0.001", "--max-update", "2",
              "--save-dir", tmp_path / "s", check=False)
    assert out.returncode != 0
    assert "dictionary" in out.stderr.strip().splitlines()[-1]


def test_makd_compress_distills_a_language_model_and_reports_perplexity(lm_teacher, lm_data, tmp_path, capsys,
                                                                       monkeypatch):
    from makd_fairseq.cli.compress import main
    from makd_fairseq.forking import FORK

    monkeypatch.setenv(FORK, "1")  # its fairseq commands forked, as under conftest's run

    out = tmp_path / "run"
    assert main(["--teacher", str(lm_teacher), "--data", str(lm_data), "--param-budget", "0.6", "--out", str(out),
                 "--max-update", "4", "--validate-interval-updates", "2", "--calibration-tokens", "2000",
                 "--speed-rounds", "1", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["main_metric"] == "ppl" and report["training"]["updates"] == 4
    # --quiet: no fairseq lines, but the progress bar over the update cap with the last validation
    printed = capsys.readouterr()
    assert "fairseq_cli.train" not in printed.out
    assert re.search(r"\[makd-compress\] train.* 4/4 .*valid nll [\d.]+ @ 4", printed.err), printed.err[-2000:]
    for name in ("teacher", "student"):
        text = (out / "generate" / f"{name}.txt").read_text()
        assert report[name]["scores"]["ppl"] == float(re.findall(r"Perplexity: ([\d.]+)", text)[-1])
        assert report[name]["speed"]["tokens_per_s"] > 0
    ppl = {name: report[name]["scores"]["ppl"] for name in ("teacher", "student")}
    assert report["metric_ratio"] == pytest.approx(ppl["teacher"] / ppl["student"])  # perplexity: lower is better


def test_an_lm_student_brings_its_shape_and_a_contradicting_flag_names_both(lm_students):
    from argparse import Namespace

    from fairseq.models import ARCH_CONFIG_REGISTRY
    from makd_fairseq.student import ShapeError

    for arch in ("lowrank_transformer_lm", "lowrank_transformer_lm_gpt"):
        args = Namespace(finetune_from_model=str(lm_students["small"]))
        ARCH_CONFIG_REGISTRY[arch](args)
        assert (args.decoder_layers, args.decoder_embed_dim, args.decoder_input_dim, args.decoder_ffn_embed_dim,
                args.decoder_attention_heads, args.share_decoder_input_output_embed) == (2, 64, 64, 128, 4, True)
    args = Namespace(finetune_from_model=str(lm_students["small"]), decoder_layers=6)
    with pytest.raises(ShapeError, match=r"is a student with decoder_layers=2; the command line gives decoder_layers=6"):
        ARCH_CONFIG_REGISTRY["lowrank_transformer_lm"](args)
