"""Validation on the task's metric (``--eval-metric``, makd_fairseq/validation.py): real fairseq-train runs on the
fixtures log valid_bleu / valid_rougeL / valid_chrf equal to makd-score of fairseq-generate on the valid split, choose
their checkpoint on it, sum it over data-parallel processes; makd-compress and the quality benchmark --select-on
metric use it, and the benchmark keeps every validation as a curve."""

import json
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import USER_DIR, run
from makd_fairseq import fairseq_logs
from makd_fairseq.compress import race_winner
from makd_fairseq.score import read_generation, score

EVERY, UPDATES = 2, 6
# makd-score's --metric and the score it reports for each validation metric
SCORED_AS = {"bleu": ("bleu", "bleu"), "chrf": ("chrf", "chrf"), "rougeL": ("rouge", "rougeL")}


def train_command(data, teacher, student, save_dir, *extra):
    return ["fairseq-train", str(data), "--user-dir", USER_DIR, "--task", "makd_translation", "--teacher-path",
            str(teacher), "--arch", "lowrank_transformer", "--finetune-from-model", str(student), "--criterion", "makd",
            "--cpu", "--seed", "1", "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "2048", "--log-format",
            "json", "--log-interval", "1", "--num-workers", "0", "--max-update", str(UPDATES),
            "--validate-interval-updates", str(EVERY), "--save-interval-updates", str(EVERY), "--validate-interval",
            "1000000", "--save-interval", "1000000", "--keep-interval-updates", "10", "--save-dir", str(save_dir),
            *extra]


def generate_valid(data, checkpoint, max_tokens=2048):
    """makd-score's view of fairseq-generate on the valid split with beam 4 and the validation's batches."""
    proc = run("fairseq-generate", data, "--user-dir", USER_DIR, "--path", checkpoint, "--gen-subset", "valid",
               "--beam", "4", "--max-tokens", str(max_tokens), "--required-batch-size-multiple", "1", "--num-workers",
               "0", "--cpu")
    return read_generation((proc.stdout + proc.stderr).splitlines(), str(checkpoint))


def validations(text, metric):
    """{updates: valid_<metric>} of a json-format fairseq-train log."""
    return {int(r["valid_num_updates"]): float(r[f"valid_{metric}"])
            for r in fairseq_logs.records(text) if f"valid_{metric}" in r}


@pytest.fixture(scope="module", params=["bleu", "rougeL", "chrf"])
def trained(request, mt_data, teacher, half_student, tmp_path_factory):
    metric = request.param
    save = tmp_path_factory.mktemp(f"eval_{metric}")
    proc = run(*train_command(mt_data, teacher, half_student, save, "--eval-metric", metric,
                              "--best-checkpoint-metric", metric, "--maximize-best-checkpoint-metric"))
    return metric, save, proc.stdout + proc.stderr


def test_logged_metric_equals_makd_score_of_fairseq_generate_on_the_valid_split(trained, mt_data):
    metric, save, log = trained
    logged = validations(log, metric)
    assert sorted(logged) == [2, 4, 6]
    checked = 0
    for updates, value in logged.items():
        kept = list(save.glob(f"checkpoint_*_{updates}.pt"))  # fairseq keeps no update checkpoint at an epoch's end
        if not kept:
            continue
        hyps, refs = generate_valid(mt_data, kept[0])
        makd_score, key = SCORED_AS[metric]
        assert value == score(makd_score, hyps, refs)[0][key], (updates, kept[0])
        checked += 1
    assert checked >= 2
    if metric == "bleu":
        assert len(set(logged.values())) > 1  # the model changes between validations: the comparison means something


def test_every_valid_sentence_is_scored_despite_the_batch_size_multiple(trained, mt_data, teacher, half_student,
                                                                        tmp_path):
    """fairseq drops the last valid batch when its size is not a multiple of 8 (fairseq#5036): with the metric on,
    all 50 valid sentences are validated; without it fairseq's own batching (and today's nll) stays as it was."""
    metric, _, log = trained
    assert {r["valid_bsz"] for r in fairseq_logs.records(log) if "valid_bsz" in r} == {"50"}
    if metric != "bleu":
        return  # the run without the metric once
    plain = run(*train_command(mt_data, teacher, half_student, tmp_path, "--max-update", "2"))
    assert {r["valid_bsz"] for r in fairseq_logs.records(plain.stdout + plain.stderr) if "valid_bsz" in r} == {"48"}
    assert "valid_bleu" not in plain.stdout + plain.stderr


def test_best_checkpoint_metric_picks_the_checkpoint_with_the_highest_value(trained):
    metric, save, log = trained
    logged = validations(log, metric)
    best = max(logged.values())
    first_best = min(u for u, v in logged.items() if v == best)  # fairseq replaces the best only when strictly better
    state = torch.load(save / "checkpoint_best.pt", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == first_best
    assert state["extra_state"]["best"] == best
    assert fairseq_logs.best_valid(log, metric) == best


def test_the_benchmark_record_keeps_every_validation_as_a_curve(trained, tmp_path):
    from benchmarks.records import training_record

    metric, save, log = trained
    path = tmp_path / "train.log"
    path.write_text(log)
    curve = training_record(str(path), metric)["curve"]
    nll = [float(r["valid_nll_loss"]) for r in fairseq_logs.records(log) if "valid_nll_loss" in r]
    assert curve == [[u, n, validations(log, metric)[u]] for u, n in zip([2, 4, 6], nll)]
    assert training_record(str(path))["curve"] == [[u, n, None] for u, n in zip([2, 4, 6], nll)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_sum_the_statistics_of_their_shards(mt_data, teacher, half_student, tmp_path):
    """Each rank decodes half the valid batches; fairseq sums the logged statistics, so valid_bleu is the whole
    split's (makd-score of fairseq-generate on the checkpoint), not rank 0's half."""
    port = free_port()
    cmd = [*train_command(mt_data, teacher, half_student, tmp_path, "--eval-metric", "bleu", "--max-update", "2",
                          "--max-tokens-valid", "256"),
           "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp", "--distributed-world-size", "2",
           "--distributed-no-spawn", "--distributed-init-method", f"tcp://127.0.0.1:{port}"]
    ranks = [subprocess.Popen([*cmd, "--distributed-rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in ranks]
    assert all(p.returncode == 0 for p in ranks), outs[0][1][-3000:] + outs[1][1][-3000:]
    logged = validations(outs[0][0] + outs[0][1], "bleu")
    assert list(logged) == [2]
    hyps, refs = generate_valid(mt_data, tmp_path / "checkpoint_last.pt", max_tokens=256)
    assert logged[2] == score("bleu", hyps, refs)[0]["bleu"]


def test_generation_args_carry_the_test_generations_flags():
    from benchmarks.commands import selection_flags
    from makd_fairseq.validation import generation_args

    assert json.loads(generation_args(["--beam", "4", "--max-len-a", "1.5", "--max-len-b", "10", "--batch-size",
                                       "64", "--beam", "6"])) == {"beam": 6, "max_len_a": 1.5, "max_len_b": 10}
    args = SimpleNamespace(select_on="metric", task="summarization", generate_args="--lenpen 0.6",
                           remove_bpe="sentencepiece")
    flags = selection_flags(args)
    assert flags[flags.index("--eval-metric") + 1] == "rougeL" and "--maximize-best-checkpoint-metric" in flags
    # the benchmark's summarization flags (--max-len-a 0 is fairseq's default) and --generate-args
    assert json.loads(flags[flags.index("--eval-metric-args") + 1]) == {"beam": 4, "max_len_b": 64, "lenpen": 0.6}
    assert flags[flags.index("--eval-metric-remove-bpe") + 1] == "sentencepiece"
    assert selection_flags(SimpleNamespace(select_on="nll")) == ["--best-checkpoint-metric", "nll_loss"]


COMPRESS = ["--param-budget", "0.5", "--max-update", "4", "--validate-interval-updates", "2", "--metric", "bleu",
            "--remove-bpe", "none", "--calibration-tokens", "2000", "--batch-size", "16", "--select-on", "metric",
            "--speed-rounds", "1"]


def test_makd_compress_selects_on_the_metric_and_reports_it(teacher, mt_data, tmp_path):
    """--select-on metric, with --race 2: makd and plain fine-tuning (ce) 2 updates each, the one with the better
    validation BLEU continued from its own checkpoint to the cap; the report says which and on what values."""
    out = tmp_path / "run"
    run(sys.executable, "-m", "makd_fairseq.cli.compress", "--teacher", teacher, "--data", mt_data, "--out", out,
        *COMPRESS, "--method", "makd", "--race", "2", "--quiet")
    report = json.loads((out / "report.json").read_text())
    raced = json.loads((out / "race.json").read_text())
    races = {m: validations((out / "race" / f"{m}.log").read_text(), "bleu") for m in ("makd", "ce")}
    assert {m: sorted(v) for m, v in races.items()} == {"makd": [2], "ce": [2]}
    assert raced == report["race"] == {"updates": 2, "selected_on": "bleu", "winner": race_winner(
        {m: v[2] for m, v in races.items()}, "bleu", "makd"), "values": {m: v[2] for m, v in races.items()}}
    winner = raced["winner"]
    assert report["method"] == "makd" and report["trained_method"] == winner
    log = (out / "train.log").read_text()
    logged = validations(log, "bleu")
    assert sorted(logged) == [4]  # the continuation: from the winner's update 2 to the cap
    assert "@ 2 updates" in log and f"--save-dir {out / 'train'}" in log
    assert ("--criterion makd" in log) == (winner == "makd")
    assert "--best-checkpoint-metric bleu --maximize-best-checkpoint-metric" in log  # the command line, logged
    best = max(races[winner][2], logged[4])
    assert report["training"]["selected_on"] == "bleu" and report["training"]["best_valid"] == best
    assert report["arguments"]["select_on"] == "metric" and report["arguments"]["race"] == 2
    state = torch.load(out / "student.pt", weights_only=False)
    assert state["extra_state"]["best"] == best
    md = (out / "report.md").read_text()
    assert f"validation bleu: best {best}" in md and f"continued **{winner}**" in md


def test_race_winner_is_the_better_validation_value_and_the_method_on_a_tie():
    assert race_winner({"makd": 10.0, "ce": 11.0}, "bleu", "makd") == "ce"
    assert race_winner({"makd": 11.0, "ce": 11.0}, "bleu", "makd") == "makd"
    assert race_winner({"makd": 3.1, "ce": 3.0}, "nll_loss", "makd") == "ce"  # nll: lower is better
    assert race_winner({"word_kd": 2.9, "ce": 3.0}, "nll_loss", "word_kd") == "word_kd"


def test_quality_benchmark_select_on_metric_keeps_each_validation_as_a_curve(mt_data, tmp_path):
    from conftest import ROOT

    out, work = tmp_path / "translation.json", tmp_path / "work"
    args = [sys.executable, "-m", "benchmarks.quality", "--task", "translation", "--data", mt_data, "--size", "smoke",
            "--work", work, "--budgets", "0.5", "--seeds", "1", "--methods", "svd_ce", "svd_seq_kd", "makd_race",
            "word_kd_race_full", "--remove-bpe", "none", "--out", out]
    run(*args, "--select-on", "metric", cwd=ROOT)
    result = json.loads(out.read_text())
    # makd_race (makd-compress's default) trains nothing: makd, trained because it races, against svd_ce over their
    # first 2 updates (a quarter of the 4-update cap in whole validation intervals), the winner's student and scores
    entries = {m["method"]: m for m in result["methods"]}
    assert [m["method"] for m in result["methods"]] == ["teacher", "svd_ce", "svd_seq_kd", "makd", "svd_word_kd",
                                                        "makd_race", "word_kd_race_full"]
    race = entries["makd_race"]["seeds"][0]["race"]
    curves = {m: entries[m]["seeds"][0]["curve"] for m in ("makd", "svd_ce")}
    assert race == {"updates": 2, "selected_on": "bleu", "values": {m: c[0][2] for m, c in curves.items()},
                    "winner": race_winner({m: c[0][2] for m, c in curves.items()}, "bleu", "makd")}
    winner = entries[race["winner"]]
    assert entries["makd_race"]["metrics"] == winner["metrics"]
    assert entries["makd_race"]["seeds"][0]["checkpoint"] == winner["seeds"][0]["checkpoint"]
    assert "vs_makd" in entries["makd_race"]  # what the race adds to makd, with its interval
    # a full race (sizes.FULL) is decided on each racer's best validation over its whole training
    full = entries["word_kd_race_full"]["seeds"][0]["race"]
    ends = {m: max(row[2] for row in entries[m]["seeds"][0]["curve"]) for m in ("svd_word_kd", "svd_ce")}
    assert full == {"updates": None, "selected_on": "bleu", "values": ends,
                    "winner": race_winner(ends, "bleu", "svd_word_kd")}
    assert entries["word_kd_race_full"]["metrics"] == entries[full["winner"]]["metrics"]
    # every method also against the default recipe, in its own column
    assert all("vs_makd_race" in entries[m] for m in ("svd_ce", "svd_seq_kd", "makd"))
    assert "vs_makd_race" not in entries["makd_race"] and "vs_makd_race" not in entries["teacher"]
    assert ("| bleu vs makd (95% CI) | bleu vs makd_race (95% CI) | bleu vs word_kd_race_full (95% CI) |"
            in (tmp_path / "translation.md").read_text())
    # the student validates on BLEU with the test generation's beam and lengths and is chosen on it
    assert result["checkpoint_selection"] == ('--eval-metric bleu --eval-metric-args {"beam": 4, "max_len_a": 1.5, '
                                              '"max_len_b": 10} --best-checkpoint-metric bleu '
                                              '--maximize-best-checkpoint-metric')
    teacher, student = result["methods"][0]["seeds"][0], result["methods"][1]["seeds"][0]
    log = (work / student["checkpoint"]).parent.joinpath("train.log").read_text()
    nll = [float(r["valid_nll_loss"]) for r in fairseq_logs.records(log) if "valid_nll_loss" in r]
    assert student["curve"] == [[u, n, b] for (u, b), n in zip(validations(log, "bleu").items(), nll)]
    assert [row[0] for row in student["curve"]] == [2, 4]
    best = torch.load(work / student["checkpoint"], weights_only=False)
    assert best["extra_state"]["best"] == max(row[2] for row in student["curve"])
    # the teacher's recipe is unchanged: nll only, its curve without a metric
    assert teacher["curve"] and all(row[2] is None for row in teacher["curve"])
    assert student["valid_nll"] == min(nll)  # the other fields as they were
    # sequence-level KD trains on the teacher's outputs but validates on the references, as every method here
    assert json.loads((work / "seq_kd_data" / "teacher_data.json").read_text())["splits"] == ["train"]
    for name in ("valid.en-de.de.bin", "valid.en-de.de.idx"):
        assert (work / "seq_kd_data" / name).read_bytes() == (mt_data / name).read_bytes()
    assert [row[2] is not None for row in result["methods"][2]["seeds"][0]["curve"]] == [True, True]
    # an nll run in the same WORK would validate seq-KD on the references it no longer has there: refused
    proc = run(*args, cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert "makd_race, word_kd_race_full: a race is decided on the validation metric" in proc.stderr
    proc = run(*[a for a in args if a not in ("makd_race", "word_kd_race_full")], cwd=ROOT, check=False)
    assert proc.returncode != 0 and "use another --work" in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
