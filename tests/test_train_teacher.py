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
