"""Bad input to fairseq-train with the MaKD task/criterion: a clear message, non-zero exit, no file touched."""

import shutil

import pytest

from conftest import TINY_ARCH, TRAIN_COMMON, USER_DIR, run

NARROW = ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
          "--decoder-ffn-embed-dim", "64"]


def cases(tmp, teacher, other):
    text = tmp / "notes.txt"
    text.write_text("not a checkpoint\n")
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(teacher.read_bytes()[:4000])
    return {  # name: (extra flags, data override, message)
        "teacher missing": (["--teacher-path", tmp / "nope.pt"], None, "nope.pt: no such checkpoint file"),
        "teacher not a checkpoint": (["--teacher-path", text], None, "not a readable fairseq checkpoint"),
        "teacher truncated": (["--teacher-path", truncated], None, "not a readable fairseq checkpoint"),
        "teacher dictionary": ([], other, "its src dictionary"),
        "matrix widths": (NARROW, None, "the matrix aspect needs equal widths"),
        "rank too big": (["--rank", "65"], None, "outside [1, min(d_out, d_in)=64]"),
        "budget too small": (["--param-budget", "0.05"], None, "smallest achievable budget is"),
        "no such layer": (["--matrix-layers", "encoder:0,5"], None, "has 2 layers (0..1); no layer 5"),
        "temperature": (["--kd-temperature", "0"], None, "--kd-temperature must be > 0"),
        "data missing": ([], tmp / "no_data", "no_data does not exist"),
    }


@pytest.mark.parametrize("case", ["teacher missing", "teacher not a checkpoint", "teacher truncated",
                                  "teacher dictionary", "matrix widths", "rank too big", "budget too small",
                                  "no such layer", "temperature", "data missing"])
def test_bad_input_fails_clearly_and_touches_nothing(case, mt_data, teacher, other_vocab_data, tmp_path):
    extra, data, message = cases(tmp_path, teacher, other_vocab_data)[case]
    save = tmp_path / "ckpt"
    save.mkdir()
    shutil.copy(teacher, save / "checkpoint_last.pt")  # somebody's earlier run: must survive
    before = {p.name: p.read_bytes() for p in save.iterdir()}
    ranks = [] if {"--rank", "--param-budget"} & set(map(str, extra)) else ["--rank", "4"]
    flags = ["--teacher-path", teacher, *TINY_ARCH, *ranks, *extra]  # later flags win in argparse
    proc = run("fairseq-train", data or mt_data, "--user-dir", USER_DIR, "--task", "makd_translation",
               "--arch", "lowrank_transformer", "--criterion", "makd", *flags, *TRAIN_COMMON,
               "--max-update", "1", "--save-dir", save, check=False)
    assert proc.returncode != 0
    last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1]
    assert message in last, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in save.iterdir()} == before
