"""The speed benchmark runs end to end on the committed fixtures (smoke sizes), so it does not rot."""

import json
import subprocess
import sys

from conftest import ROOT, run

SPEED = ROOT / "benchmarks" / "speed.py"


def test_speed_benchmark_smoke(teacher, mt_data, tmp_path):
    out = tmp_path / "speed.json"
    run(sys.executable, SPEED, "--data", mt_data, "--teacher", teacher, "--work", tmp_path / "work",
        "--out", out, "--budgets", "0.6", "0.4", "--steps", "2", "--warmup", "1", "--repeats", "1",
        "--batch-size", "8", "--gen-len", "5")
    result = json.loads(out.read_text())
    for key in ("makd_over_wordkd_step", "makd_over_wordkd_peak_mem", "makd_recompute_over_wordkd_step",
                "makd_recompute_over_wordkd_peak_mem", "gen_speedup_60", "gen_speedup_40",
                "flops_ratio_60", "flops_ratio_40", "gen_speedup_60_vocab", "flops_ratio_40_vocab"):
        assert result[key] > 0, key
    assert set(result["train"]) == {"ce", "word_kd", "layer_kd", "makd", "makd_recompute"}
    assert all(r["updates"] == 2 for r in result["train"].values())
    assert result["train"]["ce"]["teacher_share"] == 0 < result["train"]["makd"]["teacher_share"] < 1
    gen = result["generate"]
    # every model does the same work: hypotheses forced to --gen-len tokens plus </s>
    assert all(g["hypothesis_lengths"] == [6] for g in gen.values())
    assert gen["teacher"]["flops_per_sentence"] > gen["student60"]["flops_per_sentence"] \
        > gen["student40"]["flops_per_sentence"]
    assert result["flops_ratio_40"] > result["flops_ratio_60"] > 1
    # the same budget spent with the vocabulary matrix factorized too: another model, other FLOPs
    assert gen["student60_vocab"]["flops_per_sentence"] != gen["student60"]["flops_per_sentence"]
    assert (tmp_path / "speed.md").read_text().startswith("| training method (60% student)")


def test_speed_benchmark_rejects_missing_inputs(tmp_path):
    proc = subprocess.run([sys.executable, SPEED, "--data", tmp_path / "nope", "--teacher", tmp_path / "t.pt"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--data" in proc.stderr and "no such directory" in proc.stderr


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
