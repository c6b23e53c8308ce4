"""makd-score on a real fairseq-generate output: the same numbers as rouge-score / sacreBLEU on its lines."""

import json
import sys

import pytest

from conftest import USER_DIR, run
from makd_fairseq.cli.score import main
from makd_fairseq.score import ScoreError, read_generation, score


@pytest.fixture(scope="module")
def generation(teacher, mt_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "gen.out"
    proc = run("fairseq-generate", mt_data, "--user-dir", USER_DIR, "--path", teacher, "--beam", "2", "--cpu",
               "--batch-size", "8", "--gen-subset", "valid")
    out.write_text(proc.stdout)
    return out


def test_pairs_are_read_in_sample_order(generation):
    text = generation.read_text()
    hyps, refs = read_generation(text.splitlines(), "gen.out")
    by_id = {int(line.split("\t")[0][2:]): line.split("\t")[1] for line in text.splitlines() if line.startswith("T-")}
    assert refs == [by_id[i] for i in sorted(by_id)] and len(hyps) == len(refs) == len(by_id) >= 45  # of 50
    printed = [int(line.split("\t")[0][2:]) for line in text.splitlines() if line.startswith("T-")]
    assert printed != sorted(printed)  # fairseq prints in batch order, so the sort is what aligns the pairs


def test_scores_equal_the_libraries_on_the_same_pairs(generation, capsys):
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    hyps, refs = read_generation(generation.read_text().splitlines())
    bleu = BLEU().corpus_score(hyps, [refs]).score
    assert score("bleu", hyps, refs)[0] == {"bleu": round(bleu, 2)}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge_l = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)) / len(hyps)
    assert score("rouge", hyps, refs)[0]["rougeL"] == round(100 * rouge_l, 2)
    assert main([str(generation), "--metric", "chrf", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pairs"] == len(hyps) and printed["signature"]["chrf"].startswith("nrefs:1")


def test_the_console_command_scores_and_bad_input_is_one_line_exit_2(generation, tmp_path):
    proc = run("makd-score", generation, "--metric", "rouge")
    assert proc.stdout.startswith("rouge1 ") and " pairs; rouge-score F1, use_stemmer=True)" in proc.stdout
    empty = tmp_path / "train.log"
    empty.write_text("2026-01-01 | INFO | fairseq_cli.train | done\n")
    for cmd, path in (([sys.executable, "-m", "makd_fairseq.cli.score"], empty), (["makd-score"], tmp_path / "x.out")):
        proc = run(*cmd, path, check=False)  # a new interpreter as a user's, then forked (conftest.forks)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
        assert proc.stderr.startswith("makd-score: error:")
    with pytest.raises(ScoreError, match="2 hypotheses"):
        read_generation(["D-0\t-0.1\ta", "D-1\t-0.2\tb", "T-0\tx"])


def test_a_log_that_lost_sentences_is_an_error_and_the_fixed_batching_keeps_all(teacher, mt_data):
    """fairseq main drops the last batch's remainder (default --required-batch-size-multiple 8, fairseq#5036): on
    the 50 valid sentences, 48 come out; makd-score refuses such a log and makd-compress's command keeps all 50."""
    from makd_fairseq.compress import generate_command

    flags = [mt_data, "--user-dir", USER_DIR, "--path", teacher, "--beam", "2", "--cpu", "--batch-size", "64",
             "--gen-subset", "valid"]
    proc = run("fairseq-generate", *flags)
    log = (proc.stderr + proc.stdout).splitlines()
    assert sum(line.startswith("D-") for line in log) == 48
    with pytest.raises(ScoreError, match=r"48 hypotheses for the 50 sentences .*fairseq#5036"):
        read_generation(log, "gen.log")
    command = generate_command(mt_data, teacher, ["--beam", "2", "--batch-size", "64"], remove_bpe="none")
    at = command.index("--gen-subset") + 1
    proc = run(*command[:at], "valid", *command[at + 1:])
    hyps, refs = read_generation((proc.stderr + proc.stdout).splitlines(), "gen.log")
    assert len(hyps) == len(refs) == 50


@pytest.mark.parametrize("metric", ["rougeL", "bleu", "chrf"])
def test_paired_bootstrap(generation, metric):
    """The difference is the seed-averaged score difference, its interval holds it, swapping sides negates it,
    and a system against itself differs by exactly 0 on every resample."""
    from makd_fairseq.score import paired_bootstrap

    hyps, refs = read_generation(generation.read_text().splitlines())
    hyps, worse = refs, hyps  # the references themselves are the better system
    name = "rouge" if metric == "rougeL" else metric
    full = lambda h: score(name, h, refs)[0][metric]  # noqa: E731
    ab = paired_bootstrap(metric, [hyps, worse], [worse], refs, samples=200)
    assert ab["diff"] == pytest.approx((full(hyps) + full(worse)) / 2 - full(worse), abs=0.011)
    assert ab["ci95"][0] <= ab["diff"] <= ab["ci95"][1] and ab["ci95"][0] > 0
    ba = paired_bootstrap(metric, [worse], [hyps, worse], refs, samples=200)
    assert ba["diff"] == -ab["diff"] and ba["ci95"] == [-ab["ci95"][1], -ab["ci95"][0]]
    assert paired_bootstrap(metric, [hyps], [hyps], refs, samples=50) == {"diff": 0.0, "ci95": [0.0, 0.0],
                                                                        "samples": 50}
