"""Exact resume: N updates, stop, resume from checkpoint_last.pt for M more == an uninterrupted N+M run."""

import re

import torch

from conftest import TINY_ARCH, USER_DIR, makd_init, run

N, M = 3, 3


def train(data, teacher, student, save_dir, max_update):
    return run("fairseq-train", data, "--user-dir", USER_DIR, "--task", "makd_translation", "--teacher-path",
               teacher, "--arch", "lowrank_transformer", "--finetune-from-model", student, *TINY_ARCH,
               "--criterion", "makd", "--cpu", "--seed", "1", "--optimizer", "adam", "--lr", "0.001",
               "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4", "--max-tokens", "512",
               "--max-update", str(max_update), "--log-format", "simple", "--log-interval", "1",
               "--num-workers", "0", "--no-progress-bar", "--save-dir", save_dir, "--no-epoch-checkpoints")


def losses(log: str) -> dict:
    """{update: the whole train_inner line's values} (dropout is on: fairseq seeds it per update)."""
    out = {}
    for line in log.splitlines():
        m = re.search(r"train_inner .*?(loss=.*num_updates=(\d+))", line)
        if m:
            out[int(m.group(2))] = re.sub(r"(wps|ups|wall|train_wall)=[\d.]+", "", m.group(1))
    return out


def test_resumed_run_equals_uninterrupted_run(mt_data, teacher, tmp_path):
    student = tmp_path / "s.pt"
    makd_init("--teacher", teacher, "--param-budget", "0.5", "--out", student)
    whole = train(mt_data, teacher, student, tmp_path / "whole", N + M)
    train(mt_data, teacher, student, tmp_path / "parts", N)
    resumed = train(mt_data, teacher, student, tmp_path / "parts", N + M)

    log = resumed.stdout + resumed.stderr
    assert "Loaded checkpoint" in log and "(epoch 1 @ 3 updates)" in log
    assert re.search(r"teacher .*: transformer, \d+ parameters, frozen", log)  # reloaded from --teacher-path
    expected, got = losses(whole.stdout + whole.stderr), losses(log)
    assert sorted(got) == list(range(N + 1, N + M + 1))
    for update in got:
        assert got[update] == expected[update], update

    a = torch.load(tmp_path / "whole" / "checkpoint_last.pt")
    b = torch.load(tmp_path / "parts" / "checkpoint_last.pt")
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == N + M
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], rtol=0, atol=1e-6), key
