"""Exact resume: N updates, stop, resume from checkpoint_last.pt for M more == an uninterrupted N+M run; the quality
benchmark's log of a resumed training keeps every start."""

import argparse
import re
import sys

import pytest
import torch

from conftest import TINY_ARCH, TRAIN_COMMON, USER_DIR, makd_init, run

N, M = 3, 3


def train(data, teacher, student, save_dir, max_update, *extra):
    return run("fairseq-train", *train_args(data, teacher, student, save_dir, max_update, *extra))


def train_args(data, teacher, student, save_dir, max_update, *extra):
    return [data, "--user-dir", USER_DIR, "--task", "makd_translation", "--teacher-path",
               teacher, "--arch", "lowrank_transformer", "--finetune-from-model", student, *TINY_ARCH,
               "--criterion", "makd", "--cpu", "--seed", "1", "--optimizer", "adam", "--lr", "0.001",
               "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4", "--max-tokens", "512",
               "--max-update", str(max_update), "--log-format", "simple", "--log-interval", "1",
               "--num-workers", "0", "--no-progress-bar", "--save-dir", save_dir, "--no-epoch-checkpoints", *extra]


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


def test_a_training_carried_to_another_work_directory_goes_on_there(mt_data, teacher, tmp_path):
    """benchmarks.carry: a training killed after its first checkpoint (as when a lent machine is given back), packed,
    and unpacked into another work directory goes on there from that checkpoint, its updates after it those of an
    uninterrupted run; its best checkpoint travels without the optimizer state; a second unpack is refused and
    leaves the training as it is."""
    import json
    import os
    import subprocess
    import time

    from benchmarks import carry

    END = 30  # far enough past the first checkpoint (update 3) for the kill to land before the end

    student = tmp_path / "s.pt"
    makd_init("--teacher", teacher, "--param-budget", "0.5", "--out", student)
    expected = losses(train(mt_data, teacher, student, tmp_path / "whole", END).stdout)
    began = tmp_path / "a" / "b50" / "makd" / "seed1"
    began.mkdir(parents=True)
    args = [str(a) for a in train_args(mt_data, teacher, student, began, END, "--save-interval-updates", "3")]
    (began / "train.log.provenance.json").write_text(json.dumps([{"command": ["fairseq-train", *args]}]))
    with open(began / "train.log", "w") as log:
        proc = subprocess.Popen(["fairseq-train", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            while proc.poll() is None and carry.loads(began / "checkpoint_last.pt") is None:
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
    resumes_at = torch.load(began / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"]
    assert 3 <= resumes_at < END

    assert carry.main(["pack", str(tmp_path / "a"), str(tmp_path / "tars")]) == 0
    tar = tmp_path / "tars" / "b50.makd.seed1.tar"
    work = tmp_path / "b"
    work.mkdir()
    assert carry.main(["unpack", str(work), str(tar)]) == 0
    save = work / "b50" / "makd" / "seed1"
    assert "last_optimizer_state" not in torch.load(save / "checkpoint_best.pt")
    assert (save / "checkpoint_last.pt").read_bytes() != b"" and (save / "train.log.provenance.json").is_file()
    resumed = train(mt_data, teacher, student, save, END, "--save-interval-updates", "3")
    got = losses(resumed.stdout)
    assert sorted(got) == list(range(resumes_at + 1, END + 1))
    for update in got:
        assert got[update] == expected[update], update

    kept = {p.name: p.read_bytes() for p in save.iterdir()}
    assert carry.main(["unpack", str(work), str(tar)]) == 2
    assert {p.name: p.read_bytes() for p in save.iterdir()} == kept


def test_resumed_run_stops_early_where_the_uninterrupted_run_stops(mt_data, teacher, tmp_path):
    """--patience's state (best so far, validations since) is checkpointed by our task and restored on resume.
    Maximizing the validation loss makes the first validation the best and every later one worse (training
    lowers it), so patience 2 with validation every 2 updates stops at update 6. Interrupted at 4 (one validation
    without improvement), the resumed run must stop at 6 too; fairseq alone would start counting afresh (the first
    validation after the resume becoming the new best) and stop at 10."""
    student = tmp_path / "s.pt"
    makd_init("--teacher", teacher, "--param-budget", "0.5", "--out", student)
    patience = ["--patience", "2", "--validate-interval-updates", "2", "--validate-interval", "1000",
                "--best-checkpoint-metric", "loss", "--maximize-best-checkpoint-metric"]

    def stopped_at(save_dir):
        return torch.load(save_dir / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"]

    whole = train(mt_data, teacher, student, tmp_path / "whole", 100, *patience)
    assert "early stop since valid performance hasn't improved for last 2 runs" in whole.stdout + whole.stderr
    assert stopped_at(tmp_path / "whole") == 6
    train(mt_data, teacher, student, tmp_path / "parts", 4, *patience)
    assert stopped_at(tmp_path / "parts") == 4
    resumed = train(mt_data, teacher, student, tmp_path / "parts", 100, *patience)
    assert stopped_at(tmp_path / "parts") == 6
    assert "1 validation(s) since without improvement" in resumed.stdout + resumed.stderr


def test_benchmark_log_of_a_resumed_training_keeps_every_start(mt_data, tmp_path, monkeypatch):
    """quality.py's training stages resume from checkpoint_last.pt after an interruption (a session's end kills
    them); their log then holds the validations of both starts, so the reported best validation nll is the best of
    the whole training, not of its last start. A stage that does not resume starts its log afresh. (The trainings
    run forked, as in the benchmarks the tests start.)"""
    from benchmarks.runner import Run
    from makd_fairseq.forking import FORK
    from makd_fairseq import fairseq_logs

    monkeypatch.setenv(FORK, "1")

    def finished(path):
        return fairseq_logs.finished(fairseq_logs.read(path))

    def last_updates(path):
        return fairseq_logs.last_updates(fairseq_logs.read(path))

    run_ = Run(argparse.Namespace(work=str(tmp_path), threads=1))
    log = str(tmp_path / "teacher" / "train.log")

    def cmd(max_update):
        return ["fairseq-train", str(mt_data), "--user-dir", USER_DIR, "--arch", "transformer", *TINY_ARCH,
                *TRAIN_COMMON, "--log-format", "json",
                "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                "--validate-interval-updates", "2", "--max-update", str(max_update), "--save-dir",
                str(tmp_path / "teacher")]

    def done():
        return finished(log) and last_updates(log) == 8

    def valid_nlls():
        return [float(v) for v in re.findall(r'"valid_nll_loss": "([\d.]+)"', open(log).read())]

    # the first start ends before the stage is done (as when a session's end stops it), the second resumes it
    with pytest.raises(SystemExit, match="failed"):
        run_.stage("teacher", cmd(4), log, done, resumes=True)
    first = valid_nlls()
    run_.stage("teacher", cmd(8), log, done, resumes=True)
    text = open(log).read()
    assert text.count("done training in") == 2 and "Loaded checkpoint" in text
    every = valid_nlls()
    assert len(first) >= 2 and every[:len(first)] == first and len(every) > len(first)
    assert fairseq_logs.best_valid_nll(text) == min(every)
    assert fairseq_logs.resumed_at(text) == [4]

    with pytest.raises(SystemExit, match="failed"):  # not resuming: the log holds the last start only
        run_.stage("again", [sys.executable, "-c", "print('second')"], log, lambda: False)
    assert open(log).read() == "second\n"


def test_an_interrupted_teacher_stops_where_an_uninterrupted_one_does(mt_data, tmp_path):
    """A benchmark teacher (benchmarks.train_teacher) trains in makd_translation without --teacher-path: fairseq's
    translation task update for update, plus --patience's state in its checkpoints. With the maximized validation loss
    of the test above (stop at update 6), a teacher interrupted at 4 and resumed stops at 6 too; in fairseq's own task
    the resumed one counts afresh and runs on."""
    from benchmarks.commands import teacher_command
    patience = ["--max-update", "100", "--patience", "2", "--validate-interval-updates", "2", "--save-interval-updates",
                "2", "--validate-interval", "1000", "--best-checkpoint-metric", "loss", "--maximize-best-checkpoint-metric",
                "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1", "--no-progress-bar"]

    def teacher(name, *extra):
        cmd = teacher_command(mt_data, "smoke", tmp_path / name, [*patience, *extra])
        proc = run(*cmd)
        return proc.stdout + proc.stderr, torch.load(tmp_path / name / "checkpoint_last.pt")

    ours, last = teacher("whole")
    assert last["cfg"]["task"]["_name"] == "makd_translation"
    assert last["optimizer_history"][-1]["num_updates"] == 6
    theirs, last = teacher("fairseq", "--task", "translation")
    assert last["cfg"]["task"]["_name"] == "translation"
    assert last["optimizer_history"][-1]["num_updates"] == 6
    assert losses(ours) == losses(theirs) and len(losses(ours)) == 6

    for name, task in (("parts", []), ("fairseq_parts", ["--task", "translation"])):
        teacher(name, *task, "--max-update", "4")
    resumed, last = teacher("parts")
    assert last["optimizer_history"][-1]["num_updates"] == 6
    assert "1 validation(s) since without improvement" in resumed
    _, last = teacher("fairseq_parts", "--task", "translation")
    assert last["optimizer_history"][-1]["num_updates"] > 6
