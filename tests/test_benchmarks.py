"""The speed benchmark runs end to end on the committed fixtures (smoke sizes), so it does not rot, and every ratio
it reports is the quotient of the two measurements it reports beside it."""

import json
import math
import statistics
import sys

import pytest
import torch

from conftest import ROOT, run

SPEED = ["-m", "benchmarks.speed"]  # run from the repository root (cwd=ROOT)
STUDENTS = ("50", "50_vocab")  # --budgets 0.5, without and with the vocabulary factorized (one budget: the test's time)
GEN_LEN = 5
TRAIN_RATIOS = {  # ratio -> (numerator, denominator, measurement)
    "makd_over_wordkd_step": ("makd", "word_kd", "step_s_median"),
    "makd_over_wordkd_peak_mem": ("makd", "word_kd", "peak_mem_bytes"),
    "makd_recompute_over_wordkd_step": ("makd_recompute", "word_kd", "step_s_median"),
    "makd_recompute_over_wordkd_peak_mem": ("makd_recompute", "word_kd", "peak_mem_bytes"),
    "layerkd_over_wordkd_step": ("layer_kd", "word_kd", "step_s_median"),
    "wordkd_over_ce_step": ("word_kd", "ce", "step_s_median"),
}


@pytest.fixture(scope="module")
def speed_run(teacher, mt_data, tmp_path_factory):
    """One smoke-size run of the whole benchmark (training and generation; CTranslate2 when installed)."""
    tmp = tmp_path_factory.mktemp("speed")
    out = tmp / "speed.json"
    run(sys.executable, *SPEED, "--data", mt_data, "--teacher", teacher, "--work", tmp / "work",
        "--out", out, "--budgets", "0.5", "--steps", "2", "--warmup", "1", "--repeats", "1", "--gen-warmup", "0",
        "--batch-size", "8", "--gen-len", str(GEN_LEN), cwd=ROOT)
    return json.loads(out.read_text()), tmp


def expected_pairs(ct2, dense_converted):
    """The ratios a run with STUDENTS, the dense 50% student and (when installed) CTranslate2 reports."""
    pairs = {"per_sentence": ("teacher_per_sentence", "teacher"), "lean": ("teacher_lean", "teacher"),
             "50": ("student50", "teacher"), "50_vs_lean": ("student50", "teacher_lean"),
             "50_vs_per_sentence": ("student50", "teacher_per_sentence"),
             "50_fairseq_step": ("student50_fairseq_step", "teacher"),
             "50_lean_gain": ("student50", "student50_fairseq_step"),
             "50_no_latent": ("student50_no_latent", "teacher"), "50_latent_gain": ("student50", "student50_no_latent"),
             "50_vocab": ("student50_vocab", "teacher"), "50_vocab_vs_lean": ("student50_vocab", "teacher_lean"),
             "50_vocab_vs_per_sentence": ("student50_vocab", "teacher_per_sentence"),
             "dense50": ("dense50", "teacher"), "dense50_vs_lean": ("dense50", "teacher_lean")}
    if ct2:
        for c in ("fp32", "int8"):
            pairs[f"ct2_{c}"] = (f"ct2_teacher_{c}", "teacher")
            for key, name in (("50", "student50"), ("50_vocab", "student50_vocab"), ("dense50", "dense50")):
                pairs[f"{key}_vs_ct2_{c}"] = (name, f"ct2_teacher_{c}")
            if dense_converted:
                pairs[f"ct2_dense50_{c}"] = (f"ct2_dense50_{c}", "teacher")
                pairs[f"ct2_dense50_{c}_vs_ct2_{c}"] = (f"ct2_dense50_{c}", f"ct2_teacher_{c}")
    return pairs


def test_speed_benchmark_reports_every_ratio_as_the_quotient_of_its_measurements(speed_run):
    result, tmp = speed_run
    info = result["ctranslate2"]
    pairs = expected_pairs("skipped" not in info, "dense50" in info.get("converted", ()))
    assert {k: tuple(v) for k, v in result["ratio_pairs"].items()} == pairs
    generation_ratios = {f"gen_speedup_{suffix}" for suffix in pairs} | {
        f"{prefix}_{key}" for key in STUDENTS for prefix in ("flops_ratio", "gen_speedup_over_flops_ratio")}
    assert {k for k in result if k not in ("train", "generate", "ratio_pairs", "ctranslate2", "config", "command",
                                           "git_commit", "git_dirty", "hardware", "wall_s")} == set(
        TRAIN_RATIOS) | generation_ratios
    assert all(math.isfinite(result[k]) and result[k] > 0 for k in set(TRAIN_RATIOS) | generation_ratios)
    # training: every method timed over --steps updates; the median and the teacher's share are of those updates
    train = result["train"]
    assert set(train) == {"ce", "word_kd", "layer_kd", "makd", "makd_recompute"}
    for method, r in train.items():
        steps = [s for one in r["runs"] for s in one["step_s"]]
        teacher_s = [s for one in r["runs"] for s in one["teacher_s"]]
        assert r["updates"] == len(steps) == 2, method
        assert r["step_s_median"] == statistics.median(steps) and r["step_s_total"] == sum(steps), method
        assert r["teacher_share"] == sum(teacher_s) / sum(steps), method
        assert isinstance(r["peak_mem_bytes"], int) and r["peak_mem_bytes"] > 0, method
    assert train["ce"]["teacher_share"] == 0 < train["makd"]["teacher_share"] < 1  # ce runs no teacher
    for ratio, (a, b, measured) in TRAIN_RATIOS.items():
        assert result[ratio] == round(train[a][measured] / train[b][measured], 4), ratio
    # generation: every model named in a ratio, each decoded as its name says; the median over rounds of its own
    # sentences/s; every ratio the quotient of two of them
    gen = result["generate"]
    assert set(gen) == {name for pair in pairs.values() for name in pair}
    decoding = {"teacher": "fairseq", "teacher_per_sentence": "per_sentence", "teacher_lean": "lean",
                "student50": "lean", "student50_fairseq_step": "per_sentence", "student50_vocab": "lean",
                "student50_no_latent": "no_latent", "dense50": "lean"}
    assert {name: g.get("decoding") for name, g in gen.items() if g["engine"] == "fairseq"} == decoding
    for name, g in gen.items():
        assert len(g["runs"]) == 1, name  # --repeats 1
        assert g["sentences_per_s"] == statistics.median(r["sentences_per_s"] for r in g["runs"]), name
        # every model the whole test set and the same work: --gen-len tokens and </s> (CTranslate2: as many steps)
        assert all(r["tokens"] == r["sentences"] * (GEN_LEN + 1) for r in g["runs"]), name
    assert len({r["sentences"] for g in gen.values() for r in g["runs"]}) == 1
    for suffix, (a, b) in pairs.items():
        quotient = gen[a]["sentences_per_s"] / gen[b]["sentences_per_s"]
        assert result[f"gen_speedup_{suffix}"] == round(quotient, 4), suffix
    for key in STUDENTS:
        student, teacher_gen = gen[f"student{key}"], gen["teacher"]
        flops = teacher_gen["flops_per_sentence"] / student["flops_per_sentence"]
        assert result[f"flops_ratio_{key}"] == round(flops, 4), key
        assert result[f"gen_speedup_over_flops_ratio_{key}"] == round(
            gen[f"student{key}"]["sentences_per_s"] / teacher_gen["sentences_per_s"] / flops, 4), key
    # FLOPs of one batch per model as the plugin decodes it (and the teacher in plain fairseq), hypotheses forced to
    # one length
    assert {name for name, g in gen.items() if "flops_per_sentence" in g} == {
        "teacher", "dense50", *(f"student{k}" for k in STUDENTS)}
    assert gen["student50"]["latent_cache"] is True
    assert all(g["hypothesis_lengths"] == [GEN_LEN + 1] for g in gen.values() if "flops_per_sentence" in g)
    assert gen["teacher"]["params"] > gen["student50"]["params"]
    assert gen["teacher"]["params"] > gen["dense50"]["params"]
    assert gen["teacher"]["flops_per_sentence"] > gen["student50"]["flops_per_sentence"]
    assert result["flops_ratio_50"] > 1
    # the same budget spent with the vocabulary matrix factorized too: another model, other FLOPs
    assert gen["student50_vocab"]["flops_per_sentence"] != gen["student50"]["flops_per_sentence"]
    assert result["command"].startswith("python3 -m benchmarks.speed --data ")
    md = (tmp / "speed.md").read_text()
    assert md.startswith("| training method (50% student)")
    assert "| student50_no_latent | fairseq (makd_translation, latent cache off) |" in md
    assert "| student50_fairseq_step | fairseq (makd_translation, --fairseq-decoder-step) |" in md


def test_speed_benchmark_times_the_teacher_in_ctranslate2_on_the_same_work(speed_run):
    """The anchor a user would pick instead: the teacher converted by CTranslate2's fairseq converter, fp32 and int8,
    the same sentences, beam, batch and threads; a converter step that fails is recorded, one line, not fatal."""
    result, tmp = speed_run
    try:
        import ctranslate2
    except ImportError as e:
        assert result["ctranslate2"]["skipped"].startswith("ctranslate2 is not importable")
        pytest.skip(f"ctranslate2 is not importable ({e}): pip install ctranslate2")
    info, gen = result["ctranslate2"], result["generate"]
    assert info["version"] == ctranslate2.__version__ and "teacher" in info["converted"]
    assert info["decoder_steps"] == GEN_LEN + 1 and info["compute_types"] == {"fp32": "float32", "int8": "int8"}
    for compute in ("fp32", "int8"):
        g = gen[f"ct2_teacher_{compute}"]
        assert g["engine"] == "ctranslate2" and g["compute"] == compute
        assert g["runs"][0]["compute_type"] == info["compute_types"][compute]
        assert g["runs"][0]["sentences"] == gen["teacher"]["runs"][0]["sentences"]
        assert g["runs"][0]["hypothesis_lengths"] == [GEN_LEN + 1]
    for name, notes in info["converter_failures"].items():  # e.g. torch's weights_only refusing fairseq's Namespace
        assert name in ("teacher", "dense50") and all(n.startswith("ct2-fairseq-converter") and "\n" not in n
                                                      for n in notes), notes
    assert (tmp / "work" / "ct2" / "teacher" / "model.bin").is_file()
    assert "CTranslate2 " + info["version"] in (tmp / "speed.md").read_text()


def test_ratio_pairs_name_each_comparison_once():
    """The ratios of a --shapes run (the same function names them there): a student without a fairseq-step variant,
    a latent variant or a CTranslate2 anchor gets only its own ratios."""
    from benchmarks.measure import ratio_pairs

    models = {name: None for name in ("teacher", "teacher_per_sentence", "teacher_lean", "student25",
                                      "student25_fairseq_step", "student25_vocab", "ct2_teacher_int8")}
    assert ratio_pairs(models) == {
        "per_sentence": ("teacher_per_sentence", "teacher"), "lean": ("teacher_lean", "teacher"),
        "ct2_int8": ("ct2_teacher_int8", "teacher"),
        "25_vs_per_sentence": ("student25", "teacher_per_sentence"),
        "25_fairseq_step": ("student25_fairseq_step", "teacher"),
        "25_lean_gain": ("student25", "student25_fairseq_step"), "25": ("student25", "teacher"),
        "25_vs_lean": ("student25", "teacher_lean"), "25_vs_ct2_int8": ("student25", "ct2_teacher_int8"),
        "25_vocab_vs_per_sentence": ("student25_vocab", "teacher_per_sentence"),
        "25_vocab": ("student25_vocab", "teacher"), "25_vocab_vs_lean": ("student25_vocab", "teacher_lean"),
        "25_vocab_vs_ct2_int8": ("student25_vocab", "ct2_teacher_int8")}


def test_speed_benchmark_rejects_missing_inputs(tmp_path):
    proc = run(sys.executable, *SPEED, "--data", tmp_path / "nope", "--teacher", tmp_path / "t.pt", check=False,
               cwd=ROOT)
    assert proc.returncode == 2 and "--data" in proc.stderr and "no such directory" in proc.stderr


def test_speed_shape_data_pads_the_dictionary_and_keeps_every_id(mt_data, tmp_path):
    """The --shapes data: the same sentences (same ids) under a dictionary padded to the preset's vocabulary."""
    from fairseq.data import Dictionary, data_utils

    from benchmarks.shapes import shape_data

    out = shape_data(str(mt_data), str(tmp_path / "shape"), 10000, throughput_sentences=16, latency_sentences=3)
    old, new = Dictionary.load(str(mt_data / "dict.en.txt")), Dictionary.load(str(tmp_path / "shape" / "dict.en.txt"))
    assert len(new) == 10000 and new.symbols[:len(old)] == old.symbols
    assert (tmp_path / "shape" / "dict.de.txt").read_text() == (tmp_path / "shape" / "dict.en.txt").read_text()
    for lang in ("en", "de"):
        test = data_utils.load_indexed_dataset(str(mt_data / f"test.en-de.{lang}"), old)
        for split, n in (("test", 16), ("valid", 3)):
            part = data_utils.load_indexed_dataset(f"{out}/{split}.en-de.{lang}", new)
            assert len(part) == n and all(part[i].tolist() == test[i].tolist() for i in range(n))


def shape_dir(speed_run, teacher, mt_data, tmp_path):
    """A directory laid out as a benchmarks.speed --shapes one, with the speed run's students."""
    _, tmp = speed_run
    work = tmp_path / "shape"
    (work / "teacher").mkdir(parents=True)
    (work / "teacher" / "checkpoint_last.pt").symlink_to(teacher)
    (work / "data").symlink_to(mt_data)
    for name in ("student50.pt", "student50_vocab.pt", "dense50.pt"):
        (work / name).symlink_to(tmp / "work" / name)
    return work


def test_step_ops_counts_the_products_of_each_decoding_step(speed_run, teacher, mt_data, tmp_path):
    """benchmarks.step_ops on a directory laid out as a --shapes one (the speed run's students): a factorized
    projection is two products per step, so the same-depth student dispatches more of them than its teacher, the
    dense fewer-layer student fewer."""
    work = shape_dir(speed_run, teacher, mt_data, tmp_path)
    out = tmp_path / "step_ops.json"
    run(sys.executable, "-m", "benchmarks.step_ops", "--work", work, "--out", out, "--gen-len", str(GEN_LEN), cwd=ROOT)
    rows = json.loads(out.read_text())["models"]
    assert set(rows) == {"teacher", "teacher_per_sentence", "student50", "student50_vocab", "dense50"}
    assert rows["student50"]["products_per_step"] > rows["teacher_per_sentence"]["products_per_step"] > rows[
        "dense50"]["products_per_step"] > 0
    assert rows["teacher"]["flops_per_sentence"] > rows["student50"]["flops_per_sentence"]
    # the teacher's decoder weights read per step, from its checkpoint: every decoder tensor but the embedding tables
    # (looked up) and the cross-attention key/value projections (once per sentence); the output projection counted
    state = torch.load(teacher, map_location="cpu", weights_only=True)["model"]
    read = {k: v.numel() for k, v in state.items() if k.startswith("decoder.") and not k.endswith(".version") and not any(
        s in k for s in ("embed_tokens", "embed_positions", "encoder_attn.k_proj", "encoder_attn.v_proj"))}
    assert "decoder.output_projection.weight" in read  # a tied one is in the state dict under both names
    for name in ("teacher", "teacher_per_sentence"):
        assert rows[name]["decoder_weights_per_step"] == sum(read.values())
        assert rows[name]["output_projection_weights"] == read["decoder.output_projection.weight"]
    # the same-depth student reads fewer weights but the whole vocabulary matrix; factorized, that matrix too shrinks
    assert rows["student50"]["output_projection_weights"] == rows["teacher"]["output_projection_weights"]
    assert rows["student50_vocab"]["output_projection_weights"] < rows["student50"]["output_projection_weights"]
    assert rows["teacher"]["decoder_weights_per_step"] > rows["student50"]["decoder_weights_per_step"]


def test_lean_step_probe_times_both_decoders_of_every_model(speed_run, teacher, mt_data, tmp_path):
    """benchmarks.lean_step: per model, fairseq's decoder and LeanDecoder decode the same tokens to the same
    log-probabilities, and every time is a ratio against the fairseq teacher's of the same rounds."""
    work = shape_dir(speed_run, teacher, mt_data, tmp_path)
    out = tmp_path / "lean_step.json"
    run(sys.executable, "-m", "benchmarks.lean_step", "--work", work, "--out", out, "--threads", "1", "--steps", "4",
        "--rounds", "2", cwd=ROOT)
    result = json.loads(out.read_text())
    names = ("teacher", "student50", "student50_vocab", "dense50")
    assert set(result["models"]) == {f"{n}/{e}" for n in names for e in ("fairseq", "lean")}
    assert set(result["largest_logprob_difference"]) == set(names)
    assert all(gap < 1e-4 for gap in result["largest_logprob_difference"].values())
    assert result["models"]["teacher/fairseq"]["speedup_over_fairseq_teacher"] == {"median": 1.0, "range": [1.0, 1.0]}
    assert all(row["ms_per_step"]["median"] > 0 for row in result["models"].values())
