"""MaKD through the real CLIs: fairseq-train with the makd task and criterion, then fairseq-generate."""

import re
import shlex

import pytest
import torch

from conftest import TRAIN_COMMON, USER_DIR, makd_init, run

NAMES = ("loss_ce", "loss_model", "loss_attn", "loss_hidn", "loss_mha", "loss_ffn")


@pytest.fixture(scope="module")
def makd_run(mt_data, teacher, tmp_path_factory):
    """Runs the very command makd-init prints: no shape flag, the student brings its shape."""
    save = tmp_path_factory.mktemp("makd")
    student = save / "student.pt"
    # the one real makd-init process of the suite (the others call its main in-process)
    printed = makd_init("--teacher", teacher, "--param-budget", "0.5", "--out", student, process=True).stdout
    command = shlex.split(printed.split("distill it with:")[1])
    command = [str(mt_data) if a == "DATA" else USER_DIR if a == "makd_fairseq" else a for a in command]
    proc = run(*command, *TRAIN_COMMON, "--max-update", "6", "--save-dir", save)
    return save, proc


def test_makd_training_logs_every_component(makd_run):
    _, proc = makd_run
    line = next(l for l in proc.stdout.splitlines() if "train_inner" in l and "num_updates=6" in l)
    for name in NAMES:
        value = float(re.search(rf"{name}=([-\d.e]+)", line).group(1))
        assert value > 0, (name, line)
    assert re.search(r"agreement=[\d.]+", line)


def test_makd_checkpoint_holds_the_student_only(makd_run):
    save, _ = makd_run
    state = torch.load(save / "checkpoint_last.pt")
    student = torch.load(save / "student.pt")["model"]
    assert set(state["model"]) == set(student)
    assert all(state["model"][k].shape == v.shape for k, v in student.items())
    assert not state.get("criterion")  # no teacher in the criterion; equal widths: no projection either


def test_makd_student_decodes_with_fairseq_generate(makd_run, mt_data):
    save, _ = makd_run
    proc = run("fairseq-generate", mt_data, "--user-dir", USER_DIR, "--path", save / "checkpoint_last.pt",
               "--beam", "4", "--cpu", "--batch-size", "16")
    assert "Generate test with beam=4: BLEU4" in proc.stdout


NARROW = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
          "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4",
          "--decoder-attention-heads", "4", "--share-all-embeddings"]


def test_narrower_student_learns_a_projection_for_the_layer_aspect_only(mt_data, teacher, tmp_path):
    common = ["fairseq-train", mt_data, "--user-dir", USER_DIR, "--task", "makd_translation", "--teacher-path",
              teacher, "--arch", "transformer", *NARROW, "--criterion", "makd", *TRAIN_COMMON, "--max-update", "2"]
    refused = run(*common, "--save-dir", tmp_path / "a", check=False)
    assert refused.returncode != 0 and "the matrix aspect needs equal widths" in refused.stderr
    run(*common, "--matrix-weight", "0", "--layer-layers", "all", "--save-dir", tmp_path / "b")
    state = torch.load(tmp_path / "b" / "checkpoint_last.pt")
    assert state["criterion"]["projections.encoder.weight"].shape == (64, 32)
    assert not any("projection" in k and "output_projection" not in k for k in state["model"])
