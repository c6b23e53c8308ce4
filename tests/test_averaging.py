"""benchmarks.averaging: a finished student's training replayed update for update with every interval checkpoint
kept, the averages of its last checkpoints decoded on valid, k chosen there, the chosen average and the best checkpoint
on test."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from benchmarks import averaging
from benchmarks.runner import Run
from conftest import USER_DIR

EVERY, UPDATES = 3, 9  # the fixture's epochs end at 4, 8: fairseq writes no interval checkpoint at an epoch's end


def original_training(data, teacher, student, save_dir, keep=1):
    return ["fairseq-train", str(data), "--user-dir", USER_DIR, "--task", "makd_translation", "--teacher-path",
            str(teacher), "--arch", "lowrank_transformer", "--finetune-from-model", str(student), "--criterion", "makd",
            "--cpu", "--seed", "1", "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "2048", "--log-format",
            "json", "--log-interval", "1", "--num-workers", "0", "--max-update", str(UPDATES),
            "--validate-interval-updates", str(EVERY), "--save-interval-updates", str(EVERY), "--validate-interval",
            "1000000", "--save-interval", "1000000", "--no-epoch-checkpoints", "--keep-interval-updates", str(keep),
            "--eval-metric", "bleu", "--eval-metric-args", '{"beam": 4, "max_len_a": 1.5, "max_len_b": 10}',
            "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric", "--save-dir", str(save_dir)]


def test_a_replayed_training_is_averaged_and_chosen_on_valid(mt_data, teacher, half_student, tmp_path):
    original = tmp_path / "rerun" / "seed1"
    log = original / "train.log"
    Run(SimpleNamespace(work=str(tmp_path / "rerun"), threads=1, jobs=1)).stage(
        "train", original_training(mt_data, teacher, half_student, original), str(log),
        lambda: log.is_file() and "done training" in log.read_text())
    assert list(averaging.interval_checkpoints(original)) == [UPDATES]  # the rerun keeps one

    work = tmp_path / "levers"
    averaging.main(["replay", str(original), str(work)])
    kept = averaging.interval_checkpoints(work / "replay")
    assert list(kept) == [3, 6, 9]  # every interval checkpoint kept

    out = tmp_path / "averaging"
    averaging.main(["score", str(work), "--task", "translation", "--data", str(mt_data), "--original", str(original),
                    "--max-k", "3", "--remove-bpe", "none", "--out", str(out)])
    r = json.loads((tmp_path / "averaging.json").read_text())
    assert r["replay_identical"] is True and r["replay_curve"] == r["original_curve"] and len(r["replay_curve"]) == 3
    assert len(r["trained_at"]) == 1 and len(r["trained_at"][0]["commit"]) == 40 and "scored_at" in r
    best = r["best_updates"]
    windows = [v["updates"] for v in r["valid"].values()]
    assert r["valid"]["best1"]["updates"] == [best] and [3, 6, 9] in windows
    assert len(windows) == len({tuple(w) for w in windows})  # each set of checkpoints decoded once
    assert r["chosen_on_valid"] in r["valid"] and set(r["test"]) == {"best1", r["chosen_on_valid"]}
    assert r["chosen_on_valid"] == max(r["valid"], key=lambda n: (r["valid"][n]["bleu"], -len(r["valid"][n]["updates"]),
                                                                 n.startswith("best")))
    assert (tmp_path / "averaging.md").read_text().count("| ") >= len(windows)

    # the average is the mean of the checkpoints' parameters, the rest the newest's, without optimizer state
    name = next(n for n, v in r["valid"].items() if v["updates"] == [3, 6, 9])
    averaged = torch.load(work / "avg" / f"{name}.pt")
    states = [torch.load(kept[u]) for u in (3, 6, 9)]
    assert averaged["last_optimizer_state"] is None
    assert averaged["optimizer_history"] == states[-1]["optimizer_history"]
    for key, value in states[-1]["model"].items():
        mean = sum(s["model"][key].double() for s in states) / 3 if value.is_floating_point() else value
        assert torch.equal(averaged["model"][key], mean.to(value.dtype)), key
    assert not torch.equal(averaged["model"][key], states[-1]["model"][key]) or not value.is_floating_point()


def test_a_training_that_kept_its_last_checkpoints_is_averaged_in_place(mt_data, teacher, half_student, tmp_path):
    """--in-place: no replay; the student's own last interval checkpoints are averaged (only windows it kept whole),
    its checkpoint_best.pt standing for the best validation when that interval checkpoint was deleted."""
    student = tmp_path / "rerun" / "seed1"
    log = student / "train.log"
    Run(SimpleNamespace(work=str(tmp_path / "rerun"), threads=1, jobs=1)).stage(
        "train", original_training(mt_data, teacher, half_student, student, keep=2), str(log),
        lambda: log.is_file() and "done training" in log.read_text())
    assert list(averaging.interval_checkpoints(student)) == [6, 9]
    before = sorted(os.listdir(student))
    args = ["--task", "translation", "--data", str(mt_data), "--original", str(student), "--max-k", "3",
            "--remove-bpe", "none", "--out", str(tmp_path / "avg")]
    with pytest.raises(SystemExit, match="run replay first"):  # without --in-place: a replay's checkpoints
        averaging.main(["score", str(tmp_path / "levers"), *args])
    averaging.main(["score", str(tmp_path / "levers"), "--in-place", *args])
    r = json.loads((tmp_path / "avg.json").read_text())
    assert r["in_place"] and r["replay_identical"] is None and r["replay_curve"] == r["original_curve"]
    best = r["best_updates"]
    assert r["kept_updates"] == sorted({6, 9, best})
    for name, v in r["valid"].items():
        assert len(v["updates"]) == int(name[4:]) and set(v["updates"]) <= set(r["kept_updates"]), name
    assert r["valid"]["best1"]["updates"] == [best] and ("last1" in r["valid"]) == (best != 9)
    assert set(r["test"]) == {"best1", r["chosen_on_valid"]}
    assert "averaged from the checkpoints it kept" in (tmp_path / "avg.md").read_text()
    assert sorted(os.listdir(student)) == before  # the averages and decodes go to WORK, nothing into the student


def test_a_training_started_twice_is_not_replayed(tmp_path):
    prov = tmp_path / "train.log.provenance.json"
    prov.write_text(json.dumps([{"command": ["fairseq-train", "--save-dir", "a"]}] * 2))
    with pytest.raises(SystemExit, match="started 2 times"):
        averaging.main(["replay", str(tmp_path), str(tmp_path / "w")])
    with pytest.raises(SystemExit, match="no such provenance record"):
        averaging.main(["replay", str(tmp_path / "none"), str(tmp_path / "w")])
    assert not os.path.exists(tmp_path / "w")
