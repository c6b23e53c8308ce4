"""The speed benchmark runs end to end on the committed fixtures (smoke sizes), so it does not rot, and every ratio
it reports is the quotient of the two measurements it reports beside it."""

import json
import statistics
import subprocess
import sys

from conftest import ROOT, run

SPEED = ["-m", "benchmarks.speed"]  # run from the repository root (cwd=ROOT)
STUDENTS = ("50", "50_vocab")  # --budgets 0.5, without and with the vocabulary factorized (one budget: the test's time)
TRAIN_RATIOS = {  # ratio -> (numerator, denominator, measurement)
    "makd_over_wordkd_step": ("makd", "word_kd", "step_s_median"),
    "makd_over_wordkd_peak_mem": ("makd", "word_kd", "peak_mem_bytes"),
    "makd_recompute_over_wordkd_step": ("makd_recompute", "word_kd", "step_s_median"),
    "makd_recompute_over_wordkd_peak_mem": ("makd_recompute", "word_kd", "peak_mem_bytes"),
    "layerkd_over_wordkd_step": ("layer_kd", "word_kd", "step_s_median"),
    "wordkd_over_ce_step": ("word_kd", "ce", "step_s_median"),
}


def test_speed_benchmark_reports_every_ratio_as_the_quotient_of_its_measurements(teacher, mt_data, tmp_path):
    out = tmp_path / "speed.json"
    run(sys.executable, *SPEED, "--data", mt_data, "--teacher", teacher, "--work", tmp_path / "work",
        "--out", out, "--budgets", "0.5", "--steps", "2", "--warmup", "1", "--repeats", "1",
        "--batch-size", "8", "--gen-len", "5", cwd=ROOT)
    result = json.loads(out.read_text())
    generation_ratios = {f"{prefix}_{key}" for key in STUDENTS
                         for prefix in ("gen_speedup", "flops_ratio", "gen_speedup_over_flops_ratio")}
    assert {k for k in result if k not in ("train", "generate", "config", "command", "git_commit", "git_dirty",
                                           "hardware", "wall_s")} == set(TRAIN_RATIOS) | generation_ratios
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
    # generation: the median over rounds of fairseq's sentences/s; ratios against the teacher
    gen = result["generate"]
    assert set(gen) == {"teacher", *(f"student{key}" for key in STUDENTS)}
    for name, g in gen.items():
        assert len(g["runs"]) == 1, name  # --repeats 1
        assert g["sentences_per_s"] == statistics.median(r["sentences_per_s"] for r in g["runs"]), name
    assert len({r["sentences"] for g in gen.values() for r in g["runs"]}) == 1  # every model the whole test set
    for key in STUDENTS:
        student, teacher_gen = gen[f"student{key}"], gen["teacher"]
        speedup = student["sentences_per_s"] / teacher_gen["sentences_per_s"]
        flops = teacher_gen["flops_per_sentence"] / student["flops_per_sentence"]
        assert result[f"gen_speedup_{key}"] == round(speedup, 4), key
        assert result[f"flops_ratio_{key}"] == round(flops, 4), key
        assert result[f"gen_speedup_over_flops_ratio_{key}"] == round(speedup / flops, 4), key
    # every model does the same work: hypotheses forced to --gen-len tokens plus </s>
    assert all(g["hypothesis_lengths"] == [6] for g in gen.values())
    assert gen["teacher"]["params"] > gen["student50"]["params"]
    assert gen["teacher"]["flops_per_sentence"] > gen["student50"]["flops_per_sentence"]
    assert result["flops_ratio_50"] > 1
    # the same budget spent with the vocabulary matrix factorized too: another model, other FLOPs
    assert gen["student50_vocab"]["flops_per_sentence"] != gen["student50"]["flops_per_sentence"]
    assert result["command"].startswith("python3 -m benchmarks.speed --data ")
    assert (tmp_path / "speed.md").read_text().startswith("| training method (50% student)")


def test_speed_benchmark_rejects_missing_inputs(tmp_path):
    proc = subprocess.run([sys.executable, *SPEED, "--data", tmp_path / "nope", "--teacher", tmp_path / "t.pt"],
                          capture_output=True, text=True, cwd=ROOT)
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
