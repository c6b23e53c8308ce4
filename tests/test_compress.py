"""makd-compress on the fixtures: every stage real, the report consistent with the logs, a rerun reuses all."""

import json
import os
import re
import statistics
import sys

import pytest
import torch

from conftest import run
from makd_fairseq.cli.compress import main
from makd_fairseq.compress import run_logged
from makd_fairseq.fairseq_logs import records
from makd_fairseq.score import read_generation, score
from makd_fairseq.timing import interleaved, ratio

ARGS = ["--param-budget", "0.5", "--max-update", "6", "--validate-interval-updates", "2", "--metric", "bleu",
        "--remove-bpe", "none", "--calibration-tokens", "2000", "--batch-size", "16", "--speed-rounds", "2"]


@pytest.fixture(scope="module")
def compressed(teacher, mt_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "run"
    proc = run("makd-compress", "--teacher", teacher, "--data", mt_data, "--out", out, *ARGS)
    return out, proc


def test_report_agrees_with_the_training_and_generation_logs(compressed):
    out, proc = compressed
    report = json.loads((out / "report.json").read_text())
    assert "fairseq_cli.train" in proc.stdout and "valid_nll_loss" in proc.stdout  # fairseq's own lines, live
    logs = records((out / "race" / f"{report['trained_method']}.log").read_text())  # the default: a full race
    assert report["training"]["updates"] == max(int(v) for x in logs for k, v in x.items() if k.endswith("num_updates")) == 6
    assert report["training"]["best_valid_nll"] == min(float(x["valid_nll_loss"]) for x in logs if "valid_nll_loss" in x)
    for name in ("teacher", "student"):
        text = (out / "generate" / f"{name}.txt").read_text()
        assert report[name]["scores"] == score("bleu", *read_generation(text.splitlines()))[0]
        assert report[name]["speed"]["sentences"] == len(read_generation(text.splitlines())[0])
    timed = "(the evaluation passes as warm-up, 2 interleaved rounds)"
    assert f"[makd-compress] time teacher and student {timed}" in proc.stdout
    assert "median [range] of 2 interleaved rounds, the evaluation passes as warm-up" in (out / "report.md").read_text()
    assert report["metric_ratio"] == pytest.approx(report["student"]["scores"]["bleu"]
                                                   / report["teacher"]["scores"]["bleu"])
    assert report["student"]["params"] <= 0.5 * report["teacher"]["params"]
    best = torch.load(out / "race" / report["trained_method"] / "checkpoint_best.pt")["model"]
    student = torch.load(out / "student.pt")["model"]
    assert all(torch.equal(best[k], v) for k, v in student.items())
    assert "encoder.layers.0.fc1" in report["ranks_table"] and "output error" in report["ranks_table"]
    assert report["init"] == "whiten" and torch.load(out / "init.pt")["makd"]["init"] == "whiten"
    md = (out / "report.md").read_text()
    assert f"{report['teacher']['scores']['bleu']:.2f}" in md and report["commit"] in md
    assert "distill it with" not in report["ranks_table"] and report["ranks_table"] == (out / "init.txt").read_text()


def test_by_default_word_kd_and_plain_fine_tuning_train_to_their_stop_and_the_better_on_validation_is_kept(
        compressed, teacher, mt_data):
    """What a user gets without --method / --race / --select-on (a sequence-to-sequence teacher), a full race: word KD
    and plain fine-tuning each trained to their own stop from the same init, the one with the better best validation
    BLEU kept as it is (no continuation); the report's training is the winner's run, its time both runs'."""
    out, proc = compressed
    report = json.loads((out / "report.json").read_text())
    assert report["arguments"]["select_on"] == "metric" and report["arguments"]["race"] == "full"
    logs = {m: (out / "race" / f"{m}.log").read_text() for m in ("word_kd", "ce")}
    ends = {m: max(float(x["valid_bleu"]) for x in records(text) if "valid_bleu" in x) for m, text in logs.items()}
    winner = "word_kd" if ends["word_kd"] >= ends["ce"] else "ce"
    assert report["method"] == "word_kd"
    assert report["race"] == {"updates": None, "selected_on": "bleu", "values": ends, "winner": winner}
    assert report["trained_method"] == winner and not (out / "train.log").exists()
    assert report["training"]["selected_on"] == "bleu"
    assert report["training"]["updates"] == 6 and report["training"]["best_valid"] == ends[winner]
    assert "[makd-compress] race: word_kd, to its stop" in proc.stdout and "[makd-compress] train" not in proc.stdout
    assert "Race over the whole trainings (each to its own stop)" in (out / "report.md").read_text()


def test_a_short_race_continues_the_better_racer_to_the_cap(teacher, mt_data, tmp_path):
    """--race N: word KD and plain fine-tuning N updates each, the better on validation continued from its own
    checkpoint to the cap in DIR/train, chosen on validation BLEU."""
    out = tmp_path / "run"
    proc = run("makd-compress", "--teacher", teacher, "--data", mt_data, "--out", out, *ARGS, "--race", "2",
               "--speed-rounds", "1")
    report = json.loads((out / "report.json").read_text())
    assert report["arguments"]["race"] == 2 and report["race"]["updates"] == 2
    assert sorted(report["race"]["values"]) == ["ce", "word_kd"]
    assert report["training"]["selected_on"] == "bleu" and report["trained_method"] == report["race"]["winner"]
    logs = records((out / "train.log").read_text())
    assert report["training"]["updates"] == max(int(v) for x in logs for k, v in x.items() if k.endswith("num_updates")) == 6
    best = torch.load(out / "train" / "checkpoint_best.pt")["model"]
    student = torch.load(out / "student.pt")["model"]
    assert all(torch.equal(best[k], v) for k, v in student.items())
    assert "[makd-compress] race: word_kd, 2 updates" in proc.stdout and "Race over the first 2 updates" in (
        out / "report.md").read_text()
    bar = proc.stderr.replace("\r", "\n").splitlines()  # the bar names the racer, then the training
    assert any("[makd-compress] race ce" in line and "2/2" in line for line in bar), proc.stderr[-2000:]
    assert any("[makd-compress] train" in line and "6/6" in line for line in bar), proc.stderr[-2000:]


@pytest.mark.parametrize("given, lm, expected", [
    ({}, False, ("word_kd", "metric", "full")),  # the defaults: word KD racing ce, each to its own stop
    ({"max_update": 1000}, False, ("word_kd", "metric", "full")),
    ({"max_update": 250}, False, ("word_kd", "metric", 0)),  # no validation before the cap: no race
    ({"method": "ce"}, False, ("ce", "metric", 0)),  # the method is the baseline
    ({"method": "makd"}, False, ("makd", "metric", "full")),
    ({"select_on": "nll"}, False, ("word_kd", "nll", 0)),
    ({"race": 100}, False, ("word_kd", "metric", 100)),  # given: kept
    ({}, True, ("makd", "nll", 0)),  # a language model: makd (not diagnosed), its metric is the nll
])
def test_defaults_depend_on_the_teacher_and_the_cap(given, lm, expected):
    from makd_fairseq.cli.compress import get_parser, resolve_defaults

    args = get_parser().parse_args(["--teacher", "t.pt", "--data", "d", "--param-budget", "0.5", "--out", "o"])
    vars(args).update(given)
    resolve_defaults(args, lm)
    assert (args.method, args.select_on, args.race) == expected


def test_a_short_race_is_a_quarter_of_the_cap_in_whole_validation_intervals():
    from makd_fairseq.compress import default_race

    assert default_race(15000, 250) == 1000  # at most 1,000
    assert default_race(3000, 250) == 750 and default_race(1000, 250) == 250
    assert default_race(900, 100) == 200 and default_race(8000, 300) == 900
    assert default_race(250, 250) == 0  # no validation before the cap: no race


def test_the_speed_line_is_timed_as_the_speed_benchmark_times_it(compressed):
    """After the evaluation passes (the warm-up), --speed-rounds rounds of teacher and student in turn, each a fresh
    fairseq-generate whose own sentences/s is kept; the speed-up is the median of the per-round ratios."""
    out, _ = compressed
    report = json.loads((out / "report.json").read_text())
    kept = json.loads((out / "generate" / "speed.json").read_text())
    assert kept["rounds"] == 2 and kept["warmup"] == 0 and kept["unit"] == "sentences_per_s"
    runs = {name: report[name]["speed"]["runs"] for name in ("teacher", "student")}
    for name, r in runs.items():
        assert len(r) == 2 and r == kept[name]["runs"], name
        assert report[name]["speed"]["sentences_per_s"] == statistics.median(r)
        assert report[name]["speed"]["range"] == [min(r), max(r)]
        last = (out / "generate" / f"timing_{name}.txt").read_text()  # the last timed pass: --quiet, no hypotheses
        assert r[-1] == float(re.search(r"\(([\d.]+) sentences/s", last).group(1)) and "\nH-" not in last
    per_round = [s / t for s, t in zip(runs["student"], runs["teacher"])]
    assert report["speed_timing"]["per_round"] == per_round
    assert report["speedup"] == statistics.median(per_round) and report["speedup_range"] == [min(per_round),
                                                                                                max(per_round)]


def test_interleaved_rounds_warm_up_first_then_take_every_measurement_in_turn():
    calls = []
    measure = {name: (lambda name=name: calls.append(name) or len(calls)) for name in ("teacher", "student")}
    runs = interleaved(measure, rounds=3, warmup={"teacher": 1})
    assert calls == ["teacher", "teacher", "student", "teacher", "student", "teacher", "student"]
    assert runs == {"teacher": [2, 4, 6], "student": [3, 5, 7]}
    assert ratio(runs["student"], runs["teacher"]) == {"median": 5 / 4, "range": [7 / 6, 3 / 2],
                                                      "per_round": [3 / 2, 5 / 4, 7 / 6]}
    with pytest.raises(ValueError, match="same rounds"):
        ratio([1.0], [1.0, 2.0])



def test_training_shows_a_progress_bar_over_the_update_cap_with_the_last_validation(compressed):
    out, proc = compressed
    for racer in ("word_kd", "ce"):  # the default's full race: one bar per racer, named
        valid = [r for r in records((out / "race" / f"{racer}.log").read_text()) if "valid_nll_loss" in r]
        last = f"valid nll {float(valid[-1]['valid_nll_loss']):.2f} @ {int(valid[-1]['valid_num_updates'])}"
        bar = proc.stderr.replace("\r", "\n").splitlines()
        assert any(f"[makd-compress] race {racer}" in line and "6/6" in line and last in line
                   for line in bar), proc.stderr[-2000:]


def test_the_log_holds_each_line_as_soon_as_it_is_printed(tmp_path):
    """run_logged writes DIR/*.log per line: the command itself finds its first line in the log before it goes on."""
    log = tmp_path / "train.log"
    child = ("import sys, time; print('first line', flush=True); deadline = time.time() + 20\n"
             "while 'first line' not in open(sys.argv[1]).read() and time.time() < deadline: time.sleep(0.05)\n"
             "print('seen' if 'first line' in open(sys.argv[1]).read() else 'not in the log yet', flush=True)")
    run_logged([sys.executable, "-c", child, log], str(log), live=False)
    assert log.read_text().splitlines()[-2:] == ["first line", "seen"]  # after the command line


def test_a_second_run_reuses_every_stage(compressed, teacher, mt_data, capsys):
    out, _ = compressed
    watched = ["init.pt", "student.pt", "race.json", "race/word_kd.log", "race/ce.log", "generate/teacher.txt",
               "generate/student.txt", "generate/speed.json"]
    before = {p: os.stat(out / p).st_mtime_ns for p in watched}
    assert main(["--teacher", str(teacher), "--data", str(mt_data), "--out", str(out), *ARGS, "--quiet"]) == 0
    assert {p: os.stat(out / p).st_mtime_ns for p in watched} == before
    printed = capsys.readouterr().out
    assert "[makd-compress] race" not in printed and "[makd-compress] evaluate" not in printed
    assert "[makd-compress] time" not in printed


def _files(path):
    return {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, fs in os.walk(path) for p in fs} if path.exists() else {}


@pytest.mark.parametrize("case", ["teacher missing", "data missing", "other dictionary", "budget impossible",
                                  "another run in out", "unrelated files in out", "race on nll", "race not a length"])
def test_bad_input_is_one_line_exit_2_and_destroys_nothing(case, compressed, teacher, mt_data, other_vocab_data,
                                                            tmp_path):
    out = tmp_path / "out"
    args = {"--teacher": teacher, "--data": mt_data, "--param-budget": "0.5", "--out": out}
    expect = {"teacher missing": "no such checkpoint file", "data missing": "no such directory",
              "other dictionary": "dictionary", "budget impossible": "cannot be met",
              "another run in out": "holds a run with other arguments", "unrelated files in out": "not empty",
              "race on nll": "--select-on metric", "race not a length": "a number of updates or 'full'"}[case]
    if case == "teacher missing":
        args["--teacher"] = tmp_path / "nope.pt"
    elif case == "data missing":
        args["--data"] = tmp_path / "nope"
    elif case == "other dictionary":
        args["--data"] = other_vocab_data
    elif case == "budget impossible":
        args["--param-budget"] = "0.01"
    elif case == "race on nll":
        args.update({"--race": "1", "--select-on": "nll"})
    elif case == "race not a length":
        args["--race"] = "all"
    elif case == "another run in out":
        args["--out"] = out = compressed[0]  # the finished run above, asked for another budget
        args["--param-budget"] = "0.4"
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
    before = _files(out)
    existed = out.exists()
    # one case in a new interpreter as a user's, the others forked (conftest.forks): the same exit code and stderr
    cmd = [sys.executable, "-m", "makd_fairseq.cli.compress"] if case == "teacher missing" else ["makd-compress"]
    proc = run(*cmd, *[str(x) for kv in args.items() for x in kv], "--max-update", "2", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expect in errors[0], proc.stderr[-2000:]
    assert errors[0].startswith("makd-compress: error: "), errors  # also for what the init inside catches
    assert _files(out) == before and out.exists() == existed  # no new (empty) --out either


def test_a_run_made_with_other_arguments_is_named_with_its_values_and_left_alone(tmp_path):
    """A run begun before a default changed (the race became full) is refused with what differs, so that the user can
    give its arguments again: nothing in DIR is touched."""
    from argparse import Namespace

    from makd_fairseq.compress import MANIFEST, CompressError, check_out_dir

    (tmp_path / MANIFEST).write_text(json.dumps({"arguments": {"race": 1000, "method": "word_kd", "data": "d"}}))
    before = (tmp_path / MANIFEST).read_text()
    with pytest.raises(CompressError) as e:
        check_out_dir(Namespace(out=str(tmp_path), force=False),
                      {"arguments": {"race": "full", "method": "word_kd", "data": "d" * 60}})
    assert f"(data: d there, {'d' * 39}… now; race: 1000 there, full now); give that run's arguments" in str(e.value)
    assert (tmp_path / MANIFEST).read_text() == before
