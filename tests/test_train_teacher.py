"""benchmarks.train_teacher: its own log and provenance, a resume of an interrupted teacher, a finished teacher left as
it is, and a save dir begun with another recipe refused with its files untouched."""

import json
import sys

from conftest import ROOT, run


def files(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_train_teacher_resumes_keeps_a_finished_teacher_and_refuses_another_recipe(mt_data, tmp_path):
    save = tmp_path / "teacher"
    cmd = [sys.executable, "-m", "benchmarks.train_teacher", "--data", mt_data, "--size", "smoke", "--save-dir", save,
           "--", "--max-update", "4"]
    first = run(*cmd, cwd=ROOT)
    assert first.stdout.splitlines()[-1] == str(save / "checkpoint_best.pt")
    log = (save / "train.log").read_text()
    assert log.count("done training in") == 1 and "task: MakdTranslationTask" in log
    finished = files(save)

    again = run(*cmd, cwd=ROOT)  # finished: left as it is, not handed to fairseq-train again
    assert again.stdout.startswith("already trained")
    assert files(save) == finished

    other = run(*cmd[:-1], "8", cwd=ROOT, check=False)
    assert other.returncode == 2 and "holds a teacher begun with another command" in other.stderr
    assert files(save) == finished

    # interrupted: a log that never reached fairseq's last line is resumed from checkpoint_last.pt
    (save / "train.log").write_text(log.split("done training in")[0])
    resumed = run(*cmd, cwd=ROOT)
    assert resumed.stdout.splitlines()[-1] == str(save / "checkpoint_best.pt")
    log = (save / "train.log").read_text()
    assert "Loaded checkpoint" in log and log.count("done training in") == 1
    starts = json.loads((save / "train.log.provenance.json").read_text())
    assert [s["command"] for s in starts] == [starts[0]["command"]] * 2
    assert starts[0]["command"][0] == "fairseq-train" and "--max-update" in starts[0]["command"]


def test_a_teacher_carried_to_a_new_machine_resumes_there_as_if_never_interrupted(mt_data, tmp_path):
    """A teacher killed mid-training (a session's end), saved by benchmarks.carry (what benchmarks/run_state keeps in
    git: the unfinished trainings only, older tars replaced), restored on a fresh machine at the same path:
    train_teacher resumes it there, its updates after the checkpoint those of an uninterrupted teacher, its log and
    provenance holding both starts. A second restore leaves the begun training alone."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    from benchmarks import carry
    from test_resume import losses

    END = 30  # far past the first checkpoint (update 3): the kill lands before the end
    extra = ["--", "--max-update", str(END), "--save-interval-updates", "3", "--no-epoch-checkpoints",
             "--log-format", "simple", "--log-interval", "1", "--no-progress-bar"]

    def teacher(work):
        return [sys.executable, "-m", "benchmarks.train_teacher", "--data", mt_data, "--size", "smoke",
                "--save-dir", work / "teachers" / "translation", *extra]

    run(*teacher(tmp_path / "whole"), cwd=ROOT)
    expected = losses((tmp_path / "whole" / "teachers" / "translation" / "train.log").read_text())
    assert sorted(expected) == list(range(1, END + 1))

    work = tmp_path / "work"
    save = work / "teachers" / "translation"
    proc = subprocess.Popen(teacher(work), cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        while proc.poll() is None and carry.loads(save / "checkpoint_last.pt") is None:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # train_teacher and its fairseq-train
        proc.wait()
    resumes_at = carry.loads(save / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"]
    assert 3 <= resumes_at < END

    shutil.copytree(tmp_path / "whole" / "teachers" / "translation", work / "teachers" / "finished")
    state = tmp_path / "state"
    state.mkdir()
    (state / "older.tar").write_bytes(b"")
    assert carry.main(["save", str(work), str(state)]) == 0
    assert sorted(p.name for p in state.iterdir()) == ["teachers.translation.tar"]
    assert carry.main(["pack", str(work), str(tmp_path / "tars"), "teachers"]) == 2  # no train.log there
    os.rename(work, tmp_path / "lost")  # the machine and its work directory are gone
    work.mkdir()
    assert carry.main(["restore", str(work), str(state)]) == 0
    resumed = run(*teacher(work), cwd=ROOT)
    assert resumed.stdout.splitlines()[-1] == str(save / "checkpoint_best.pt")
    log = (save / "train.log").read_text()
    got = losses(log.split("Loaded checkpoint")[1])
    assert sorted(got) == list(range(resumes_at + 1, END + 1))
    for update in got:
        assert got[update] == expected[update], update
    starts = json.loads((save / "train.log.provenance.json").read_text())
    assert len(starts) == 2 and starts[0]["command"] == starts[1]["command"]
    assert log.count("done training in") == 1
    kept = files(save)
    assert carry.main(["restore", str(work), str(state)]) == 0  # the same machine again: begun, left as it is
    assert files(save) == kept
