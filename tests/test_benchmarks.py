"""The benchmark scripts run end to end on the committed fixtures (smoke sizes), so none of them rots."""

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
