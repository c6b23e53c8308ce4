"""The quality benchmark runs end to end on the committed fixtures (smoke sizes): every method, resuming, bad input, decoder-only."""

import json
import lzma
import os
import sys

import pytest

from benchmarks.commands import flag_value
from conftest import ROOT, run
from makd_fairseq.score import read_generation as read


def read_generation(path):
    with open(path, encoding="utf-8") as f:
        return read(f, str(path))


QUALITY = ["-m", "benchmarks.quality"]  # run from the repository root (cwd=ROOT)


def test_quality_benchmark_smoke_translation(mt_data, tmp_path):
    """Every method at one budget (two budgets only multiply the trainings), sequence-level KD included."""
    out, work = tmp_path / "translation.json", tmp_path / "work"
    args = [sys.executable, *QUALITY, "--task", "translation", "--data", mt_data, "--size", "smoke", "--work", work,
            "--budgets", "0.5", "--seeds", "1", "--jobs", "2", "--remove-bpe", "none", "--out", out]
    run(*args, cwd=ROOT)
    result = json.loads(out.read_text())
    methods = [(m["method"], m["budget"]) for m in result["methods"]]
    assert methods == [("teacher", None)] + [(m, 0.5) for m in (
        "svd_only", "svd_ce", "svd_word_kd", "svd_layer_kd", "makd", "dense_sft_kd", "svd_seq_kd", "makd_seq_kd",
        "makd_vocab")]
    teacher = result["methods"][0]["params"]
    for m in result["methods"][1:]:
        assert 0.9 * m["budget"] * teacher < m["params"] <= m["budget"] * teacher, m
        assert set(m["metrics"]) == {"bleu", "chrf"} and all(0 <= v <= 100 for v in m["metrics"].values())
    assert result["scoring"]["bleu"].startswith("nrefs:1|case:mixed")
    for key in ("command", "scored_at", "hardware", "wall_s", "stage_seconds"):
        assert result[key], key
    # each trained model records the commit it trained at; every scored model's hypotheses are kept, compressed
    for m in result["methods"][2:]:
        assert [r["seed"] for r in m["seeds"]] == [1] and m["sd"] is None
        assert len(m["seeds"][0]["trained_at"][0]["commit"]) == 40 and m["seeds"][0]["trained_at"][0]["dirty"] in (
            True, False) and m["seeds"][0]["trained_at"][0]["device"] == "cpu"
    kept = tmp_path / "hypotheses" / "translation"
    assert result["hypotheses"] == "hypotheses/translation"  # relative to the results file, wherever it is kept
    assert len(list(kept.glob("*.txt.xz"))) == 1 + 10  # references, the teacher and 9 students
    hyps, refs = read_generation(work / "generate" / "teacher.txt")
    assert lzma.decompress((kept / "teacher.txt.xz").read_bytes()).decode().splitlines() == hyps
    assert lzma.decompress((kept / "references.txt.xz").read_bytes()).decode().splitlines() == refs
    # every trained method ran under the stopping rule (cap 4, validation every 2) and logged validation
    assert result["stopping"] == {"max_update": 4, "patience": 2, "validate_interval_updates": 2}
    assert "--patience 2" in result["student_training"]
    for log in work.glob("b*/*/seed1/train.log"):
        assert "done training in" in log.read_text() and '"valid"' in log.read_text(), log
    assert len(list(work.glob("b*/*/seed1/train.log"))) == 8
    updates = {m["method"]: m["updates"] for m in result["methods"]}
    assert updates.pop("teacher") == 20 and updates.pop("svd_only") is None
    assert set(updates.values()) == {4}, updates  # the cap: two validations cannot exhaust a patience of 2
    assert all(m["valid_nll"] > 0 for m in result["methods"] if m["method"] != "svd_only")
    # the seq-KD methods train on the teacher's beam outputs (the benchmark's beam) and validate on its outputs for
    # the valid sources: the stopping rule measures the objective they train on
    assert result["seq_kd_data"]["beam"] == 4 and result["seq_kd_data"]["sentences"] == {"train": 400, "valid": 50}
    assert result["seq_kd_data"]["device"] == "cpu"  # the benchmark built it with --cpu
    for method in ("svd_seq_kd", "makd_seq_kd"):
        log = (work / "b50" / method / "seed1" / "train.log").read_text()
        assert str(work / "seq_kd_data" / "train.en-de.de") in log and str(mt_data / "valid") not in log
        assert str(work / "seq_kd_data" / "valid.en-de.de") in log
    assert str(work / "seq_kd_data") not in (work / "b50" / "makd" / "seed1" / "train.log").read_text()
    # makd_vocab starts from a student whose vocabulary matrix is factorized too (one tied row in makd-init's table)
    assert "decoder.output_projection = encoder.embed_tokens" in (work / "b50" / "vocab.log").read_text()
    assert "decoder.output_projection" not in (work / "b50" / "svd.log").read_text()
    table = (tmp_path / "translation.md").read_text()
    assert table.startswith("| method | budget | seeds | params | bleu | chrf |") and "| makd | 50% | 1 |" in table
    assert "| best valid nll (bits) | updates |" in table and "| makd_seq_kd | 50% |" in table
    assert "svd_seq_kd, makd_seq_kd: best valid nll against the teacher's outputs" in table
    assert (tmp_path / "translation.png").read_bytes()[:4] == b"\x89PNG"
    # a second run reuses every finished step: nothing is trained or generated again, same scores
    stages = (work / "stages.json").read_text()
    again = run(*args, cwd=ROOT)
    assert "fairseq-train" not in again.stdout and "fairseq-generate" not in again.stdout
    assert "makd-teacher-data" not in again.stdout
    assert (work / "stages.json").read_text() == stages
    assert json.loads(out.read_text())["methods"] == result["methods"]


def test_quality_benchmark_rejects_bad_input(tmp_path, mt_data):
    proc = run(sys.executable, *QUALITY, "--task", "translation", "--data", tmp_path / "nope", "--work",
               tmp_path / "w", check=False, cwd=ROOT)
    assert proc.returncode == 2 and "--data" in proc.stderr and "prepare.py" in proc.stderr
    proc = run(sys.executable, *QUALITY, "--task", "translation", "--data", mt_data, "--work", tmp_path / "w",
               "--budgets", "0.5", "1.5", check=False, cwd=ROOT)
    assert proc.returncode == 2 and "--budgets" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_quality_benchmark_smoke_language_modeling(tmp_path):
    """Decoder-only: perplexity from fairseq-eval-lm and ROUGE-L of greedy continuations of test descriptions."""
    root = tmp_path / "lm"
    src = ROOT / "tests" / "fixtures" / "debian" / "summarization"
    run("fairseq-preprocess", "--only-source", "--trainpref", src / "train.src", "--validpref", src / "valid.src",
        "--testpref", src / "test.src", "--destdir", root / "bin", "--nwordssrc", "1000", "--workers", "1")
    (root / "test.txt").write_text((src / "test.src").read_text())
    out = tmp_path / "language_modeling.json"
    run(sys.executable, *QUALITY, "--task", "language_modeling", "--data", root / "bin", "--size", "lm_smoke",
        "--work", tmp_path / "work", "--budgets", "0.7", "--methods", "svd_only", "makd", "--remove-bpe", "none",
        "--continue-docs", "20", "--out", out, cwd=ROOT)
    result = json.loads(out.read_text())
    assert [m["method"] for m in result["methods"]] == ["teacher", "svd_only", "makd"]
    for m in result["methods"]:
        assert set(m["metrics"]) == {"ppl", "rougeL"} and m["metrics"]["ppl"] > 1 and 0 <= m["metrics"]["rougeL"] <= 100
    # the factorization error shows in perplexity: the untrained SVD student is worse than its teacher
    assert result["methods"][1]["metrics"]["ppl"] > result["methods"][0]["metrics"]["ppl"]
    lines = (tmp_path / "work" / "generate" / "teacher.continuations.tsv").read_text().splitlines()
    assert len(lines) == 20 and all(len(line.split("\t")) == 2 for line in lines)
    proc = run(sys.executable, *QUALITY, "--task", "language_modeling", "--data", root / "bin", "--size", "cpu",
               "--work", tmp_path / "w", check=False, cwd=ROOT)
    assert proc.returncode == 2 and "lm_" in proc.stderr
    proc = run(sys.executable, *QUALITY, "--task", "language_modeling", "--data", root / "bin", "--size",
               "lm_smoke", "--methods", "makd_seq_kd", "--work", tmp_path / "w", check=False, cwd=ROOT)
    assert proc.returncode == 2 and "encoder-decoder models only" in proc.stderr




def test_a_forked_stage_runs_as_its_subprocess_would(tmp_path, monkeypatch):
    """MAKD_BENCHMARKS_FORK=1 (set for the benchmarks the tests start): a stage's command runs in a fork of a server
    that imported fairseq once. Its log, files and exit code are the subprocess's; a resumed stage adds to its log; a
    failing command fails the stage with its message."""
    from argparse import Namespace

    from benchmarks.runner import Run
    from makd_fairseq.forking import FORK

    src = ROOT / "tests" / "fixtures" / "debian" / "translation"
    logs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(FORK, mode)
        work = tmp_path / mode
        r = Run(Namespace(work=str(work), threads=1))
        assert r.fork == (mode == "1")
        r.stage("preprocess", ["fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--trainpref",
                               f"{src}/train", "--validpref", f"{src}/valid", "--destdir", f"{work}/bin",
                               "--joined-dictionary", "--workers", "1"], str(work / "preprocess.log"),
                lambda w=work: (w / "bin" / "dict.en.txt").is_file())
        logs[mode] = (work / "preprocess.log").read_text().replace(str(work), "WORK")
        for _ in range(2):
            with pytest.raises(SystemExit, match=r"bad failed \(exit 2\)[\s\S]*makd-init: error: .*no such"):
                r.stage("bad", ["makd-init", "--teacher", f"{work}/nope.pt", "--rank", "4", "--out", f"{work}/s.pt"],
                        str(work / "bad.log"), lambda: False, resumes=True)
        assert (work / "bad.log").read_text().count("no such checkpoint file") == 2
        with pytest.raises(SystemExit, match=r"exit 1\)[\s\S]*No module named benchmarks.nope"):
            r.stage("missing", [sys.executable, "-m", "benchmarks.nope"], str(work / "missing.log"), lambda: False)
    assert logs["1"] == logs["0"] and "Wrote preprocessed data to WORK/bin" in logs["1"]
    for f in (tmp_path / "0" / "bin").glob("*.*[nxt]"):  # .bin, .idx, dict.*.txt (fairseq copies the log there)
        assert (tmp_path / "1" / "bin" / f.name).read_bytes() == f.read_bytes(), f.name


def test_forked_commands_run_at_once_and_share_one_server(tmp_path):
    """Commands forked at once run at once (a benchmark's --jobs): two that each wait for the other both finish; a
    command forked from a forked command (a benchmark's stage) goes to the server it came from, not to a new one."""
    import threading

    from makd_fairseq.forking import forked

    probe = [sys.executable, "-m", "tests.fork_probe"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    codes = {}
    threads = [threading.Thread(target=lambda k=k, mine=mine, theirs=theirs: codes.__setitem__(
        k, forked([*probe, "meet", mine, theirs], str(tmp_path / f"{k}.log"), cwd=str(ROOT))))
        for k, mine, theirs in (("a", a, b), ("b", b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == {"a": 0, "b": 0}, [(tmp_path / f"{k}.log").read_text() for k in "ab"]
    out = tmp_path / "socket"
    assert forked([*probe, "nest", str(out)], str(tmp_path / "nest.log"), cwd=str(ROOT)) == 0, (
        tmp_path / "nest.log").read_text()
    assert out.read_text() == (tmp_path / "socket.inner").read_text() != ""
    # glibc reads its MALLOC_* tunables when a process starts: a command that sets them goes to a server started
    # with them (the speed benchmark's memory runs), the others to the one without
    env = dict(os.environ, MALLOC_ARENA_MAX="1")
    for name, extra in (("malloc", env), ("plain", None)):
        assert forked([*probe, "startenv", "MALLOC_ARENA_MAX", str(tmp_path / name)], str(tmp_path / f"{name}.log"),
                      env=extra, cwd=str(ROOT)) == 0, (tmp_path / f"{name}.log").read_text()
    assert (tmp_path / "malloc").read_text() == "1" and (tmp_path / "plain").read_text() == os.environ.get(
        "MALLOC_ARENA_MAX", "")



@pytest.mark.parametrize("fork", [False, True])
def test_streamed_gives_each_line_as_it_comes_and_the_exit_code(fork):
    """makd-compress's commands (``forking.streamed``): each line of stdout and stderr reaches the caller while the
    command runs, the last one without its newline too, and the exit code is the command's, forked or not."""
    import time

    from makd_fairseq.forking import streamed

    seen = []
    rc = streamed([sys.executable, "-m", "tests.fork_probe", "lines", "4", "3"],
                  lambda line: seen.append((line, time.time())), cwd=str(ROOT), fork=fork)
    assert rc == 3
    assert [line for line, _ in seen] == ["line 0\n", "line 1\n", "line 2\n", "line 3"]
    assert seen[-1][1] - seen[0][1] > 0.5  # the first line came before the command ended, not all at its end


def test_extend_continues_a_shorter_run_as_if_trained_straight_to_the_longer_cap(mt_data, teacher, tmp_path):
    """--extend WORK: a training not begun here continues the same student's finished training of WORK (a lower cap)
    from its last checkpoint, its log and validations kept; fairseq reseeds every update, so the curve is the one of a
    training run straight to the longer cap. Another training (here another patience) is refused in one line."""
    def quality(work, cap, *extra, patience="10", check=True):
        return run(sys.executable, "-m", "benchmarks.quality", "--task", "translation", "--data", mt_data, "--size",
                   "smoke", "--teacher", teacher, "--budgets", "0.5", "--seeds", "1", "--methods", "svd_ce",
                   "--validation-only", "--stopping", str(cap), "1", patience, "--work", tmp_path / work,
                   "--out", tmp_path / f"{work}.json", *extra, cwd=ROOT, check=check)

    def curve(work):
        methods = json.loads((tmp_path / f"{work}.json").read_text())["methods"]
        return next(m for m in methods if m["method"] == "svd_ce")["seeds"][0]["curve"]

    quality("short", 2)
    short_log = (tmp_path / "short" / "b50" / "svd_ce" / "seed1" / "train.log").read_text()
    proc = quality("refused", 4, "--extend", tmp_path / "short", patience="9", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("benchmarks: --extend: the training")
    assert not (tmp_path / "refused" / "b50" / "svd_ce" / "seed1").exists()
    quality("long", 4, "--extend", tmp_path / "short")
    quality("straight", 4)
    assert [row[0] for row in curve("short")] == [1, 2] and [row[0] for row in curve("long")] == [1, 2, 3, 4]
    assert curve("long") == curve("straight")
    seed = tmp_path / "long" / "b50" / "svd_ce" / "seed1"
    log = (seed / "train.log").read_text()
    kept = "".join(line for line in short_log.splitlines(keepends=True) if "done training in" not in line)
    assert log.startswith(kept) and log.count("done training in") == 1  # the short run's end is not the long one's
    starts = json.loads((seed / "train.log.provenance.json").read_text())
    assert [flag_value(s["command"], "--max-update") for s in starts] == ["2", "4"]
    assert (tmp_path / "short" / "b50" / "svd_ce" / "seed1" / "train.log").read_text() == short_log


def test_extend_to_a_higher_patience_goes_on_where_the_lower_one_stopped(mt_data, teacher, tmp_path):
    """--extend WORK with a higher --stopping patience: a training WORK stopped early goes on from its last checkpoint
    with its count of validations without improvement carried over (makd_fairseq.tasks.patience): the curve of a
    training run straight with the higher patience. A lower patience is refused."""
    def quality(work, patience, *extra, check=True):
        return run(sys.executable, "-m", "benchmarks.quality", "--task", "translation", "--data", mt_data, "--size",
                   "smoke", "--teacher", teacher, "--budgets", "0.5", "--seeds", "1", "--methods", "svd_ce",
                   "--validation-only", "--select-on", "metric", "--remove-bpe", "none", "--stopping", "12", "1",
                   str(patience), "--work", tmp_path / work, "--out", tmp_path / f"{work}.json", *extra, cwd=ROOT,
                   check=check)

    def seed(work):
        methods = json.loads((tmp_path / f"{work}.json").read_text())["methods"]
        return next(m for m in methods if m["method"] == "svd_ce")["seeds"][0]

    quality("short", 2)
    assert seed("short")["early_stopped"] and seed("short")["updates"] < 10  # the smoke student's BLEU stalls
    proc = quality("lower", 1, "--extend", tmp_path / "short", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("benchmarks: --extend: the training")
    assert not (tmp_path / "lower" / "b50" / "svd_ce" / "seed1").exists()
    quality("long", 4, "--extend", tmp_path / "short")
    quality("straight", 4)
    assert seed("long")["curve"] == seed("straight")["curve"]
    assert seed("long")["updates"] > seed("short")["updates"]
    assert seed("long")["early_stopped"] == seed("straight")["early_stopped"]
    log = (tmp_path / "long" / "b50" / "svd_ce" / "seed1" / "train.log").read_text()
    assert log.count("done training in") == 1 and log.count("early stop since") <= 1


def test_extend_a_sequence_kd_training_goes_on_on_the_data_it_began_on(mt_data, teacher, tmp_path):
    """--extend: a sequence-level KD training goes on on the extended run's seq-KD data (the teacher's outputs are
    not decoded again, and the command is that training's, so it is not refused)."""
    def quality(work, cap, *extra):
        return run(sys.executable, "-m", "benchmarks.quality", "--task", "translation", "--data", mt_data, "--size",
                   "smoke", "--teacher", teacher, "--budgets", "0.5", "--seeds", "1", "--methods", "svd_seq_kd",
                   "--validation-only", "--stopping", str(cap), "1", "10", "--work", tmp_path / work,
                   "--out", tmp_path / f"{work}.json", *extra, cwd=ROOT)

    quality("short", 2)
    quality("long", 4, "--extend", tmp_path / "short")
    assert not (tmp_path / "long" / "seq_kd_data").exists()
    starts = json.loads((tmp_path / "long" / "b50" / "svd_seq_kd" / "seed1" / "train.log.provenance.json").read_text())
    assert [s["command"][1] for s in starts] == [str(tmp_path / "short" / "seq_kd_data")] * 2
    assert [flag_value(s["command"], "--max-update") for s in starts] == ["2", "4"]


def test_extend_takes_a_training_begun_on_a_gpu_and_refuses_another_recipe(tmp_path):
    """stages.extend: the device flag (--cpu) is not the recipe, so a training begun on a lent GPU is extended on the
    CPU; a higher patience or cap in the source, or another flag, is refused and nothing is copied."""
    from benchmarks.stages import extend

    source = tmp_path / "short"
    source.mkdir()
    gpu = ["fairseq-train", "data", "--lr", "0.0005", "--max-update", "3000", "--patience", "4", "--save-dir", "a"]
    (source / "train.log.provenance.json").write_text(json.dumps([{"command": gpu}]))
    (source / "train.log").write_text("early stop since valid performance hasn't improved for last 4 runs\n"
                                      "done training in 10.0 seconds\n")
    (source / "checkpoint_last.pt").write_bytes(b"weights")
    cpu = ["fairseq-train", "data", "--lr", "0.0005", "--max-update", "3000", "--patience", "8", "--cpu",
           "--save-dir", "b"]
    for refused in ([*cpu[:3], "0.001", *cpu[4:]], [*cpu[:7], "2", *cpu[8:]], [*cpu[:5], "2000", *cpu[6:]]):
        with pytest.raises(SystemExit, match="not this one with a lower cap or patience"):
            extend(str(source), str(tmp_path / "refused"), refused)
        assert not (tmp_path / "refused").exists()
    assert extend(str(source), str(tmp_path / "long"), cpu)
    assert (tmp_path / "long" / "checkpoint_last.pt").read_bytes() == b"weights"
    assert (tmp_path / "long" / "train.log").read_text() == ""  # stopped under patience 4: goes on under 8


def test_extend_starts_afresh_a_training_with_no_checkpoint_last_to_go_on_from(tmp_path, capsys):
    """stages.extend: a finished training carried back from a lent GPU holds checkpoint_best.pt only; going on from it
    would make fairseq-train begin afresh beneath the source's log and provenance, so nothing is copied and it says
    so. A training that stopped under the same patience needs no checkpoint_last.pt: it is kept whole."""
    from benchmarks.stages import extend

    source = tmp_path / "carried"
    source.mkdir()
    gpu = ["fairseq-train", "data", "--max-update", "15000", "--patience", "4", "--save-dir", "a"]
    (source / "train.log.provenance.json").write_text(json.dumps([{"command": gpu}]))
    log = ("early stop since valid performance hasn't improved for last 4 runs\n"
           "done training in 10.0 seconds\n")
    (source / "train.log").write_text(log)
    (source / "checkpoint_best.pt").write_bytes(b"best")
    longer = ["fairseq-train", "data", "--max-update", "15000", "--patience", "8", "--cpu", "--save-dir", "b"]
    assert not extend(str(source), str(tmp_path / "longer"), longer)
    assert not (tmp_path / "longer").exists()
    assert "has no checkpoint_last.pt to go on from" in capsys.readouterr().err
    same = [*longer[:5], "4", *longer[6:]]
    assert extend(str(source), str(tmp_path / "same"), same)
    assert (tmp_path / "same" / "train.log").read_text() == log
    assert (tmp_path / "same" / "checkpoint_best.pt").read_bytes() == b"best"
