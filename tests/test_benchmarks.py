"""The benchmark scripts run end to end on the committed fixtures (smoke sizes), so none of them rots."""

import json
import lzma
import subprocess
import sys

import pytest

from conftest import ROOT, run
from makd_fairseq.score import paired_bootstrap, read_generation as read


def read_generation(path):
    with open(path, encoding="utf-8") as f:
        return read(f, str(path))

SPEED = ROOT / "benchmarks" / "speed.py"


def test_speed_benchmark_smoke(teacher, mt_data, tmp_path):
    out = tmp_path / "speed.json"
    run(sys.executable, SPEED, "--data", mt_data, "--teacher", teacher, "--work", tmp_path / "work",
        "--out", out, "--budgets", "0.6", "0.4", "--steps", "2", "--warmup", "1", "--repeats", "1",
        "--batch-size", "8", "--gen-len", "5")
    result = json.loads(out.read_text())
    for key in ("makd_over_wordkd_step", "makd_over_wordkd_peak_mem", "gen_speedup_60", "gen_speedup_40",
                "flops_ratio_60", "flops_ratio_40"):
        assert result[key] > 0, key
    assert set(result["train"]) == {"ce", "word_kd", "layer_kd", "makd"}
    assert all(r["updates"] == 2 for r in result["train"].values())
    assert result["train"]["ce"]["teacher_share"] == 0 < result["train"]["makd"]["teacher_share"] < 1
    gen = result["generate"]
    # every model does the same work: hypotheses forced to --gen-len tokens plus </s>
    assert all(g["hypothesis_lengths"] == [6] for g in gen.values())
    assert gen["teacher"]["flops_per_sentence"] > gen["student60"]["flops_per_sentence"] \
        > gen["student40"]["flops_per_sentence"]
    assert result["flops_ratio_40"] > result["flops_ratio_60"] > 1
    assert (tmp_path / "speed.md").read_text().startswith("| training method (60% student)")


def test_speed_benchmark_rejects_missing_inputs(tmp_path):
    proc = subprocess.run([sys.executable, SPEED, "--data", tmp_path / "nope", "--teacher", tmp_path / "t.pt"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--data" in proc.stderr and "no such directory" in proc.stderr


QUALITY = ROOT / "benchmarks" / "quality.py"


def test_quality_benchmark_smoke_translation(mt_data, tmp_path):
    """Every method at one budget (two budgets only multiply the trainings), sequence-level KD included."""
    out, work = tmp_path / "translation.json", tmp_path / "work"
    args = [sys.executable, QUALITY, "--task", "translation", "--data", mt_data, "--size", "smoke", "--work", work,
            "--budgets", "0.5", "--seeds", "1", "--jobs", "2", "--remove-bpe", "none", "--out", out]
    run(*args)
    result = json.loads(out.read_text())
    methods = [(m["method"], m["budget"]) for m in result["methods"]]
    assert methods == [("teacher", None)] + [(m, 0.5) for m in (
        "svd_only", "svd_ce", "svd_word_kd", "svd_layer_kd", "makd", "dense_sft_kd", "svd_seq_kd", "makd_seq_kd")]
    teacher = result["methods"][0]["params"]
    for m in result["methods"][1:]:
        assert 0.9 * m["budget"] * teacher < m["params"] <= m["budget"] * teacher, m
        assert set(m["metrics"]) == {"bleu", "chrf"} and all(0 <= v <= 100 for v in m["metrics"].values())
    assert result["scoring"]["bleu"].startswith("nrefs:1|case:mixed")
    for key in ("command", "scored_at", "hardware", "wall_s", "stage_seconds"):
        assert result[key], key
    # each trained model records the commit it trained at; every scored model's hypotheses are kept, compressed
    for m in result["methods"][2:]:
        assert [r["seed"] for r in m["seeds"]] == [1] and m["sd"] is None
        assert len(m["seeds"][0]["trained_at"][0]["commit"]) == 40 and m["seeds"][0]["trained_at"][0]["dirty"] in (
            True, False)
    kept = tmp_path / "hypotheses" / "translation"
    assert len(list(kept.glob("*.txt.xz"))) == 1 + 9  # references, the teacher and 8 students
    hyps, refs = read_generation(work / "generate" / "teacher.txt")
    assert lzma.decompress((kept / "teacher.txt.xz").read_bytes()).decode().splitlines() == hyps
    assert lzma.decompress((kept / "references.txt.xz").read_bytes()).decode().splitlines() == refs
    # every trained method ran under the stopping rule (cap 4, validation every 2) and logged validation
    assert result["stopping"] == {"max_update": 4, "patience": 2, "validate_interval_updates": 2}
    assert "--patience 2" in result["student_training"]
    for log in work.glob("b*/*/seed1/train.log"):
        assert "done training in" in log.read_text() and '"valid"' in log.read_text(), log
    assert len(list(work.glob("b*/*/seed1/train.log"))) == 7
    updates = {m["method"]: m["updates"] for m in result["methods"]}
    assert updates.pop("teacher") == 20 and updates.pop("svd_only") is None
    assert set(updates.values()) == {4}, updates  # the cap: two validations cannot exhaust a patience of 2
    assert all(m["valid_nll"] > 0 for m in result["methods"] if m["method"] != "svd_only")
    # the seq-KD methods train on the teacher's beam outputs (the benchmark's beam), validate on the same valid split
    assert result["seq_kd_data"]["beam"] == 4 and result["seq_kd_data"]["sentences"] == 400
    for method in ("svd_seq_kd", "makd_seq_kd"):
        log = (work / "b50" / method / "seed1" / "train.log").read_text()
        assert str(work / "seq_kd_data" / "train.en-de.de") in log and str(mt_data / "valid") not in log
    assert str(work / "seq_kd_data") not in (work / "b50" / "makd" / "seed1" / "train.log").read_text()
    table = (tmp_path / "translation.md").read_text()
    assert table.startswith("| method | budget | seeds | params | bleu | chrf |") and "| makd | 50% | 1 |" in table
    assert "| best valid nll (bits) | updates |" in table and "| makd_seq_kd | 50% |" in table
    assert (tmp_path / "translation.png").read_bytes()[:4] == b"\x89PNG"
    # a second run reuses every finished step: nothing is trained or generated again, same scores
    stages = (work / "stages.json").read_text()
    again = run(*args)
    assert "fairseq-train" not in again.stdout and "fairseq-generate" not in again.stdout
    assert "makd-teacher-data" not in again.stdout
    assert (work / "stages.json").read_text() == stages
    assert json.loads(out.read_text())["methods"] == result["methods"]


def test_quality_benchmark_smoke_summarization(tmp_path):
    data = tmp_path / "bin"
    src = ROOT / "tests" / "fixtures" / "debian" / "summarization"
    run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", src / "train",
        "--validpref", src / "valid", "--testpref", src / "test", "--destdir", data, "--joined-dictionary",
        "--nwordssrc", "1000", "--workers", "1")
    out, work = tmp_path / "summarization.json", tmp_path / "work"
    run(sys.executable, QUALITY, "--task", "summarization", "--data", data, "--size", "smoke", "--work", work,
        "--budgets", "0.6", "0.5", "--methods", "svd_only", "svd_word_kd", "makd", "--seeds", "1", "2",
        "--seeded-budgets", "0.5", "--time-generation", "--remove-bpe", "none", "--out", out)
    result = json.loads(out.read_text())
    assert [(m["method"], m["budget"]) for m in result["methods"]] == [("teacher", None)] + [
        (m, b) for b in (0.6, 0.5) for m in ("svd_only", "svd_word_kd", "makd")]  # every budget
    assert result["methods"][3]["params"] > result["methods"][6]["params"]
    for m in result["methods"]:
        assert set(m["metrics"]) == {"rouge1", "rouge2", "rougeL"}
        assert 0 <= m["metrics"]["rouge2"] <= m["metrics"]["rouge1"] <= 100
    assert result["methods"][0]["metrics"]["rouge1"] > 0  # the teacher writes words of the synopses
    # seeds 1 and 2 at 50%, seed 1 at 60%; the reported metric is the mean over seeds, sd beside it
    assert result["seeds"] == {"0.6": [1], "0.5": [1, 2]}
    by = {(m["method"], m["budget"]): m for m in result["methods"]}
    for method in ("svd_word_kd", "makd"):
        assert [r["seed"] for r in by[(method, 0.6)]["seeds"]] == [1] and by[(method, 0.6)]["sd"] is None
        runs = by[(method, 0.5)]["seeds"]
        assert [r["seed"] for r in runs] == [1, 2]
        assert by[(method, 0.5)]["metrics"]["rougeL"] == pytest.approx(
            (runs[0]["metrics"]["rougeL"] + runs[1]["metrics"]["rougeL"]) / 2, abs=0.006)
        assert by[(method, 0.5)]["sd"]["rougeL"] >= 0
    assert (work / "b50" / "makd" / "seed2" / "train.log").is_file()
    # vs makd: recomputed from the kept hypotheses, the seeds of each side averaged
    kept = tmp_path / "hypotheses" / "summarization"
    text = lambda name: lzma.decompress((kept / f"{name}.txt.xz").read_bytes()).decode().splitlines()  # noqa: E731
    refs = text("references")
    for budget, key, seeds in ((0.6, "b60", [1]), (0.5, "b50", [1, 2])):
        expected = paired_bootstrap("rougeL", [text(f"{key}_svd_word_kd_seed{s}") for s in seeds],
                                    [text(f"{key}_makd_seed{s}") for s in seeds], refs)
        assert by[("svd_word_kd", budget)]["vs_makd"] == {"rougeL": expected}
        assert "vs_makd" not in by[("makd", budget)]
    # generation timed one model at a time: fairseq-generate's own numbers, first seed only
    assert all(m["speed"]["sentences"] == len(refs) and m["speed"]["sentences_per_s"] > 0 for m in result["methods"])
    assert len(list((work / "timing").glob("*.txt"))) == 7
    table = (tmp_path / "summarization.md").read_text()
    assert "| makd | 50% | 2 |" in table and " ± " in table and "| rougeL vs makd (95% CI) |" in table
    # --partial reports what has finished while a run goes on elsewhere, and trains nothing
    log = work / "b50" / "makd" / "seed2" / "train.log"
    log.rename(log.with_suffix(".moved"))
    partial = run(sys.executable, QUALITY, "--task", "summarization", "--data", data, "--size", "smoke", "--work",
                  work, "--budgets", "0.6", "0.5", "--methods", "svd_only", "svd_word_kd", "makd", "--seeds", "1", "2",
                  "--seeded-budgets", "0.5", "--remove-bpe", "none", "--partial", "--out", tmp_path / "partial.json")
    assert "fairseq-train" not in partial.stdout and not log.exists()
    result = json.loads((tmp_path / "partial.json").read_text())
    assert result["pending"] == ["b50/makd/seed2"]
    assert [r["seed"] for m in result["methods"] if (m["method"], m["budget"]) == ("makd", 0.5) for r in m["seeds"]] \
        == [1]
    assert "Partial: 1 trainings not finished yet (b50/makd/seed2)." in (tmp_path / "partial.md").read_text()


def test_quality_benchmark_rejects_bad_input(tmp_path, mt_data):
    proc = subprocess.run([sys.executable, QUALITY, "--task", "translation", "--data", tmp_path / "nope",
                           "--work", tmp_path / "w"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--data" in proc.stderr and "prepare.py" in proc.stderr
    proc = subprocess.run([sys.executable, QUALITY, "--task", "translation", "--data", mt_data,
                           "--work", tmp_path / "w", "--budgets", "0.5", "1.5"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--budgets" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_quality_benchmark_smoke_language_modeling(tmp_path):
    """Decoder-only: perplexity from fairseq-eval-lm and ROUGE-L of greedy continuations of test descriptions."""
    root = tmp_path / "lm"
    src = ROOT / "tests" / "fixtures" / "debian" / "summarization"
    run("fairseq-preprocess", "--only-source", "--trainpref", src / "train.src", "--validpref", src / "valid.src",
        "--testpref", src / "test.src", "--destdir", root / "bin", "--nwordssrc", "1000", "--workers", "1")
    (root / "test.txt").write_text((src / "test.src").read_text())
    out = tmp_path / "language_modeling.json"
    run(sys.executable, QUALITY, "--task", "language_modeling", "--data", root / "bin", "--size", "lm_smoke",
        "--work", tmp_path / "work", "--budgets", "0.7", "--methods", "svd_only", "makd", "--remove-bpe", "none",
        "--continue-docs", "20", "--out", out)
    result = json.loads(out.read_text())
    assert [m["method"] for m in result["methods"]] == ["teacher", "svd_only", "makd"]
    for m in result["methods"]:
        assert set(m["metrics"]) == {"ppl", "rougeL"} and m["metrics"]["ppl"] > 1 and 0 <= m["metrics"]["rougeL"] <= 100
    # the factorization error shows in perplexity: the untrained SVD student is worse than its teacher
    assert result["methods"][1]["metrics"]["ppl"] > result["methods"][0]["metrics"]["ppl"]
    lines = (tmp_path / "work" / "generate" / "teacher.continuations.tsv").read_text().splitlines()
    assert len(lines) == 20 and all(len(line.split("\t")) == 2 for line in lines)
    proc = subprocess.run([sys.executable, QUALITY, "--task", "language_modeling", "--data", root / "bin", "--size",
                           "cpu", "--work", tmp_path / "w"], capture_output=True, text=True)
    assert proc.returncode == 2 and "lm_" in proc.stderr
    proc = subprocess.run([sys.executable, QUALITY, "--task", "language_modeling", "--data", root / "bin", "--size",
                           "lm_smoke", "--methods", "makd_seq_kd", "--work", tmp_path / "w"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "encoder-decoder models only" in proc.stderr


def test_speed_shape_data_pads_the_dictionary_and_keeps_every_id(mt_data, tmp_path):
    """The --shapes data: the same sentences (same ids) under a dictionary padded to the preset's vocabulary."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fairseq.data import Dictionary, data_utils
    from speed import shape_data

    out = shape_data(str(mt_data), str(tmp_path / "shape"), 10000, throughput_sentences=16, latency_sentences=3)
    old, new = Dictionary.load(str(mt_data / "dict.en.txt")), Dictionary.load(str(tmp_path / "shape" / "dict.en.txt"))
    assert len(new) == 10000 and new.symbols[:len(old)] == old.symbols
    assert (tmp_path / "shape" / "dict.de.txt").read_text() == (tmp_path / "shape" / "dict.en.txt").read_text()
    for lang in ("en", "de"):
        test = data_utils.load_indexed_dataset(str(mt_data / f"test.en-de.{lang}"), old)
        for split, n in (("test", 16), ("valid", 3)):
            part = data_utils.load_indexed_dataset(f"{out}/{split}.en-de.{lang}", new)
            assert len(part) == n and all(part[i].tolist() == test[i].tolist() for i in range(n))
