"""The quality benchmark on the summarization fixture: seeds, paired intervals against makd, timing, --partial,
--reuse."""

import hashlib
import json
import lzma
import re
import shutil
import sys

import pytest

from conftest import ROOT, run
from makd_fairseq.score import seeds_and_items_bootstrap

QUALITY = ["-m", "benchmarks.quality"]  # run from the repository root (cwd=ROOT)


def binarized_fixture(tmp_path):
    """The summarization fixture binarized in prepare.py's layout, with a manifest (its data hash) two levels up."""
    data = tmp_path / "prepared" / "summarization" / "bin"
    src = ROOT / "tests" / "fixtures" / "debian" / "summarization"
    run("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", src / "train",
        "--validpref", src / "valid", "--testpref", src / "test", "--destdir", data, "--joined-dictionary",
        "--nwordssrc", "1000", "--workers", "1")
    manifest = {"sha256": hashlib.sha256(b"".join(f.read_bytes() for f in sorted(data.iterdir()))).hexdigest()}
    (tmp_path / "prepared" / "manifest.json").write_text(json.dumps(manifest))
    return data


# seeds 1 and 2 at 50%, seed 1 at 60%
FLAGS = ["--task", "summarization", "--size", "smoke", "--budgets", "0.6", "0.5", "--methods", "svd_only",
         "svd_word_kd", "makd", "--seeds", "1", "2", "--seeded-budgets", "0.5", "--remove-bpe", "none"]


@pytest.fixture(scope="module")
def summarization_run(tmp_path_factory):
    """One run of the benchmark (generation timed), shared by the tests of this file: (its directory, data, work)."""
    tmp_path = tmp_path_factory.mktemp("summarization_run")
    data = binarized_fixture(tmp_path)
    run(sys.executable, *QUALITY, *FLAGS, "--data", data, "--work", tmp_path / "work", "--time-generation",
        "--out", tmp_path / "summarization.json", cwd=ROOT)
    return tmp_path, data, tmp_path / "work"


def test_quality_benchmark_smoke_summarization(summarization_run, tmp_path):
    tmp_path, data, work = summarization_run
    out = tmp_path / "summarization.json"
    result = json.loads(out.read_text())
    assert [(m["method"], m["budget"]) for m in result["methods"]] == [("teacher", None)] + [
        (m, b) for b in (0.6, 0.5) for m in ("svd_only", "svd_word_kd", "makd")]  # every budget
    assert result["methods"][3]["params"] > result["methods"][6]["params"]
    for m in result["methods"]:
        assert set(m["metrics"]) == {"rouge1", "rouge2", "rougeL"}
        assert 0 <= m["metrics"]["rouge2"] <= m["metrics"]["rouge1"] <= 100
    assert result["methods"][0]["metrics"]["rouge1"] > 0  # the teacher writes words of the synopses
    # seeds 1 and 2 at 50%, seed 1 at 60%; the reported metric is the mean over seeds, sd beside it
    assert result["seeds"] == {"0.6": [1], "0.5": [1, 2]}
    by = {(m["method"], m["budget"]): m for m in result["methods"]}
    for method in ("svd_word_kd", "makd"):
        assert [r["seed"] for r in by[(method, 0.6)]["seeds"]] == [1] and by[(method, 0.6)]["sd"] is None
        runs = by[(method, 0.5)]["seeds"]
        assert [r["seed"] for r in runs] == [1, 2]
        assert by[(method, 0.5)]["metrics"]["rougeL"] == pytest.approx(
            (runs[0]["metrics"]["rougeL"] + runs[1]["metrics"]["rougeL"]) / 2, abs=0.006)
        assert by[(method, 0.5)]["sd"]["rougeL"] >= 0
    assert (work / "b50" / "makd" / "seed2" / "train.log").is_file()
    # vs makd: recomputed from the kept hypotheses, the seeds of each side averaged
    kept = tmp_path / "hypotheses" / "summarization"
    text = lambda name: lzma.decompress((kept / f"{name}.txt.xz").read_bytes()).decode().splitlines()  # noqa: E731
    refs = text("references")
    for budget, key, seeds in ((0.6, "b60", [1]), (0.5, "b50", [1, 2])):
        expected = seeds_and_items_bootstrap("rougeL", [text(f"{key}_svd_word_kd_seed{s}") for s in seeds],
                                             [text(f"{key}_makd_seed{s}") for s in seeds], refs)
        assert by[("svd_word_kd", budget)]["vs_makd"] == {"rougeL": expected}
        assert "vs_makd" not in by[("makd", budget)]
    # generation timed one model at a time: fairseq-generate's own numbers, first seed only
    assert all(m["speed"]["sentences"] == len(refs) and m["speed"]["sentences_per_s"] > 0 for m in result["methods"])
    assert len(list((work / "timing").glob("*.txt"))) == 7
    table = (tmp_path / "summarization.md").read_text()
    assert "| makd | 50% | 2 |" in table and " ± " in table and "| rougeL vs makd (95% CI) |" in table
    # --partial reports what has finished while a run goes on elsewhere, and trains nothing
    log = work / "b50" / "makd" / "seed2" / "train.log"
    moved = log.with_suffix(".moved")
    log.rename(moved)
    try:
        partial = run(sys.executable, *QUALITY, *FLAGS, "--data", data, "--work", work, "--partial",
                      "--out", tmp_path / "partial.json", cwd=ROOT)
    finally:
        moved.rename(log)  # the run stays whole for the other tests of this file
    assert "fairseq-train" not in partial.stdout
    result = json.loads((tmp_path / "partial.json").read_text())
    assert result["pending"] == ["b50/makd/seed2"]
    assert [r["seed"] for m in result["methods"] if (m["method"], m["budget"]) == ("makd", 0.5) for r in m["seeds"]] \
        == [1]
    assert "Partial: 1 trainings not finished yet (b50/makd/seed2)." in (tmp_path / "partial.md").read_text()


def test_table_says_how_many_seeds_stopped_early():
    """The updates cell is the mean over seeds; it says when some, not all, seeds stopped early."""
    from benchmarks.report import table

    def row(method, early):
        seeds = [{"seed": i + 1, "early_stopped": e} for i, e in enumerate(early)]
        return {"method": method, "budget": 0.5, "params": 10, "metrics": {"rougeL": 20.0, "rouge1": 22.0,
                "rouge2": 8.0}, "seeds": seeds, "valid_nll": 4.0, "updates": 2700}

    teacher = {"method": "teacher", "budget": None, "params": 20, "metrics": {"rougeL": 25.0, "rouge1": 27.0,
               "rouge2": 10.0}, "valid_nll": 3.8, "updates": 15000}
    rows = [row("svd_ce", [False, True]), row("svd_word_kd", [True, True]), row("makd", [False, False, False])]
    lines = table({"task": "summarization", "methods": [teacher, *rows]}).splitlines()
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[-2] for line in lines[3:6]}
    assert cells == {"svd_ce": "2,700 (early stop: 1 of 2)", "svd_word_kd": "2,700 (early stop)", "makd": "2,700"}


def test_table_names_the_students_trained_on_a_gpu_and_their_updates_there():
    """A student whose training started (or resumed) on a GPU is named under the table with the updates each GPU
    start covered; one whose starts do not match its log's resumptions is said to be trained there partly; raced rows
    (copies of a racer) and CPU-only students are not listed."""
    from benchmarks.records import device_of
    from benchmarks.report import table

    assert device_of(["fairseq-train", "DATA", "--cpu"]) == "cpu" and device_of(["fairseq-train", "DATA"]) == "gpu"

    def row(method, devices, resumed, updates=4200):
        starts = [{"commit": "0" * 40, "dirty": False, "started": "", "device": d} for d in devices]
        seeds = [{"seed": 1, "trained_at": starts, "resumed_at": resumed, "updates": updates}]
        return {"method": method, "budget": 0.5, "params": 10, "metrics": {"rougeL": 20.0, "rouge1": 22.0,
                "rouge2": 8.0}, "seeds": seeds, "updates": updates}

    teacher = {"method": "teacher", "budget": None, "params": 20, "metrics": {"rougeL": 25.0, "rouge1": 27.0,
               "rouge2": 10.0}}
    rows = [row("makd", ["gpu", "gpu", "cpu", "gpu"], [2500, 3000, 4000], 6250), row("svd_seq_kd", ["gpu"], [], 3000),
            row("svd_ce", ["cpu", "cpu"], [3000]), row("svd_word_kd", ["gpu", "cpu"], []),
            row("makd_race", ["gpu", "gpu", "cpu"], [2500, 3000], 6250)]
    text = table({"task": "summarization", "methods": [teacher, *rows], "seq_kd_data": {"sentences": {"train": 9}}})
    assert "best valid nll against the teacher's outputs" not in text  # valid kept its references (--select-on metric)
    assert ("checkpoint_last.pt): b50/makd/seed1 (updates 0–3,000, 4,000–6,250); b50/svd_seq_kd/seed1 (updates "
            "0–3,000); b50/svd_word_kd/seed1 (partly).") in text


def test_table_says_where_makd_stands_against_each_method():
    """The vs-makd cell names makd's standing: ahead when the method's interval lies below 0, behind when above,
    level when it contains 0."""
    from benchmarks.report import table

    def row(method, vs):
        metrics = {"rougeL": 20.0, "rouge1": 22.0, "rouge2": 8.0}
        return {"method": method, "budget": 0.5, "params": 10, "metrics": metrics, "seeds": [{"seed": 1}],
                **({"vs_makd": {"rougeL": {"diff": vs[0], "ci95": vs[1:]}}} if vs else {})}

    teacher = {"method": "teacher", "budget": None, "params": 20, "metrics": {"rougeL": 25.0, "rouge1": 27.0,
               "rouge2": 10.0}}
    rows = [row("svd_ce", (-0.44, -1.32, 0.43)), row("dense_sft_kd", (-2.87, -3.81, -1.99)),
            row("svd_seq_kd", (1.02, 0.39, 1.64)), row("makd", None)]
    lines = table({"task": "summarization", "methods": [teacher, *rows]}).splitlines()
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[8] for line in lines[3:7]}
    assert cells == {"svd_ce": "-0.44 [-1.32, +0.43] level", "dense_sft_kd": "-2.87 [-3.81, -1.99] makd ahead",
                     "svd_seq_kd": "+1.02 [+0.39, +1.64] makd behind", "makd": "–"}


def test_table_names_a_comparison_of_the_same_students_instead_of_an_interval():
    """A race that kept one racer on every seed is that racer's students: their row against each other says so
    (its bootstrap, resampling the seeds on each side independently, would print a spread around +0.00); a race that
    kept another racer on some seed is compared by its interval."""
    from benchmarks.report import side_by_side, table

    def row(method, winners, vs=None):
        seeds = [{"seed": i + 1, **({"race": {"winner": w, "updates": 1000}} if w else {})}
                 for i, w in enumerate(winners)]
        return {"method": method, "budget": 0.5, "params": 10, "metrics": {"bleu": 12.0, "chrf": 40.0},
                "seeds": seeds, **({"vs_word_kd_race": {"bleu": {"diff": vs[0], "ci95": vs[1:]}}} if vs else {})}

    teacher = {"method": "teacher", "budget": None, "params": 20, "metrics": {"bleu": 13.0, "chrf": 43.0}}
    rows = [row("svd_ce", [None, None], (0.01, -0.4, 0.4)), row("svd_word_kd", [None, None], (-0.6, -1.1, -0.1)),
            row("word_kd_race", ["svd_ce", "svd_ce"]), row("makd_race", ["svd_ce", "svd_ce"], (0.02, -0.3, 0.3))]
    lines = table({"task": "translation", "methods": [teacher, *rows]}).splitlines()
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[-4] for line in lines[3:7]}
    assert cells == {"svd_ce": "same students (word_kd_race kept svd_ce)",
                     "svd_word_kd": "-0.60 [-1.10, -0.10] word_kd_race ahead", "word_kd_race": "–",
                     "makd_race": "same students (word_kd_race kept svd_ce)"}
    rows[2] = row("word_kd_race", ["svd_ce", "svd_word_kd"])
    lines = table({"task": "translation", "methods": [teacher, *rows]}).splitlines()
    assert lines[3].split(" | ")[-4] == "+0.01 [-0.40, +0.40] level"
    # under the table, what each race kept on each seed and over how many updates (a full race: whole trainings)
    for r in rows[3]["seeds"]:
        r["race"]["updates"] = None
    lines = table({"task": "translation", "methods": [teacher, *rows]}).splitlines()
    assert lines[-1] == ("What each race kept, per seed: word_kd_race 50% (1,000 updates): seed 1 svd_ce, seed 2 "
                         "svd_word_kd; makd_race 50% (whole trainings): seed 1 svd_ce, seed 2 svd_ce.")
    # two runs side by side: the vs-makd cell of a race that kept makd
    run = {"task": "translation", "methods": [teacher, row("makd", [None]), row("makd_race", ["makd"])]}
    run["methods"][2]["vs_makd"] = {"bleu": {"diff": 0.0, "ci95": [0.0, 0.0]}}
    lines = side_by_side(run, run, ("A", "B")).splitlines()
    assert lines[-1].split(" | ")[3] == "same students (makd_race kept makd)"


def test_races_are_decided_from_taken_over_racers_curves(tmp_path):
    """A resumed run (--reuse) still holds its races: a racer taken over is read from its seed record's validation
    curve ([updates, nll, metric]), one trained here from its train.log, the same values; the race's seed is its
    winner's record and hypotheses, and the races of the committed results files come out as they were decided."""
    from types import SimpleNamespace

    from benchmarks.records import add_races, race_value

    def curve(*points):
        return [[u, 4.0, v] for u, v in points]

    ce, kd = curve((500, 20.0), (1000, 20.5), (2000, 25.0)), curve((500, 21.0), (1000, 21.5), (2000, 24.0))
    log = tmp_path / "b50" / "svd_ce" / "seed2" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f'[valid] {{"epoch": 1, "valid_rougeL": "{v}", "valid_num_updates": "{u}"}}\n'
                           for u, _, v in ce))
    here = str(log.parent / "checkpoint_best.pt")
    reused = {("svd_ce", 0.5, 1): ({"seed": 1, "curve": ce}, ["ce hyps"]),
              ("svd_word_kd", 0.5, 1): ({"seed": 1, "curve": kd, "race": {"stale": True}}, ["kd hyps"]),
              ("svd_word_kd", 0.5, 2): ({"seed": 2, "curve": kd}, ["kd hyps 2"])}
    models = [("svd_ce", 0.5, 1, None), ("svd_word_kd", 0.5, 1, None), ("svd_ce", 0.5, 2, here),
              ("svd_word_kd", 0.5, 2, None)]
    scored = {m[:3]: ({"rougeL": float(i)}, [m[0]]) for i, m in enumerate(models)}
    run = SimpleNamespace(args=SimpleNamespace(task="summarization"))
    races = add_races(run, ["word_kd_race", "word_kd_race_full"], models, scored, 1000, reused)
    # the short race (1,000 updates): word KD 21.5 against CE 20.5; the whole trainings: CE 25.0 against 24.0
    assert {k: (r["winner"], r["values"]) for k, r in races.items()} == {
        ("word_kd_race", 0.5, s): ("svd_word_kd", {"svd_word_kd": 21.5, "svd_ce": 20.5}) for s in (1, 2)} | {
        ("word_kd_race_full", 0.5, s): ("svd_ce", {"svd_word_kd": 24.0, "svd_ce": 25.0}) for s in (1, 2)}
    assert models[4:] == [("word_kd_race", 0.5, 1, None), ("word_kd_race", 0.5, 2, None),
                          ("word_kd_race_full", 0.5, 1, None), ("word_kd_race_full", 0.5, 2, here)]
    assert scored[("word_kd_race_full", 0.5, 2)] == scored[("svd_ce", 0.5, 2)]
    # a race kept a taken-over racer: its seed is that racer's, without what another race of it said
    assert reused[("word_kd_race", 0.5, 1)] == ({"seed": 1, "curve": kd}, ["kd hyps"])
    assert ("word_kd_race_full", 0.5, 2) not in reused  # its winner trained here
    # every race of the committed rerun results, recomputed from the racers' curves alone
    for task in ("summarization", "translation"):
        result = json.loads((ROOT / "benchmarks" / "results" / "rerun" / "patience8" / f"{task}.json").read_text())
        seeds = {(m["method"], m["budget"], r["seed"]): r for m in result["methods"] for r in m.get("seeds") or []}
        decided = [(k, r["race"]) for k, r in seeds.items() if "race" in r]
        assert decided
        for (_, budget, seed), race in decided:
            assert {racer: race_value(None, seeds[(racer, budget, seed)], race["selected_on"], race["updates"])
                    for racer in race["values"]} == race["values"]


def test_quality_benchmark_reuse_takes_over_seeds_of_the_same_teacher(summarization_run, tmp_path):
    """--reuse (a run resumed on another machine): a fresh work directory retrains the teacher; once it writes the
    earlier run's test hypotheses, the earlier seeds are taken over from the results file and rescored, nothing else
    trains, and every number comes out as before. A teacher that writes other hypotheses is refused."""
    run_dir, data, _ = summarization_run
    flags = [*FLAGS, "--data", data]
    first = tmp_path / "first" / "summarization.json"  # the earlier run's results, as a user would have copied them
    shutil.copytree(run_dir / "hypotheses", first.parent / "hypotheses")
    shutil.copy(run_dir / "summarization.json", first)
    again = tmp_path / "again" / "summarization.json"
    proc = run(sys.executable, *QUALITY, *flags, "--work", tmp_path / "work2", "--reuse", first, "--out", again,
               cwd=ROOT)
    assert "] teacher: fairseq-train" in proc.stdout  # the teacher trains again, on this "machine"
    assert not re.search(r"\] b50/\w+/seed\d: ", proc.stdout)  # the students do not
    before, after = json.loads(first.read_text()), json.loads(again.read_text())
    assert sorted(after["reused"]["seeds"]) == sorted(
        [f"b60/{m}/seed1" for m in ("svd_word_kd", "makd")] + [f"b50/{m}/seed{s}" for s in (1, 2)
                                                              for m in ("svd_word_kd", "makd")])
    for old, new in zip(before["methods"], after["methods"]):
        assert (new["method"], new["params"], new["metrics"], new["sd"]) == (
            old["method"], old["params"], old["metrics"], old["sd"])
        assert new.get("vs_makd") == old.get("vs_makd") and new["valid_nll"] == old["valid_nll"]
        for r_old, r_new in zip(old.get("seeds") or [], new.get("seeds") or []):
            if old["method"] != "teacher":  # taken over: trained by the earlier run, at its commit
                assert r_new["trained_at"] == r_old["trained_at"] and r_new["reused_from"]["results"] == str(first)
    def kept(results):
        return {f.name: lzma.decompress(f.read_bytes()) for f in (results / "hypotheses" / "summarization").iterdir()}
    assert kept(again.parent) == kept(first.parent)  # every hypothesis is under the new results too
    # a teacher that writes one other test hypothesis: its students are not taken over
    other = tmp_path / "other"
    shutil.copytree(first.parent, other)
    teacher = other / "hypotheses" / "summarization" / "teacher.txt.xz"
    lines = lzma.decompress(teacher.read_bytes()).decode().split("\n")
    teacher.write_bytes(lzma.compress("\n".join(["an other summary"] + lines[1:]).encode()))
    proc = run(sys.executable, *QUALITY, *flags, "--work", tmp_path / "work2", "--reuse", other / "summarization.json",
               "--out", tmp_path / "refused.json", check=False, cwd=ROOT)
    assert proc.returncode != 0 and not (tmp_path / "refused.json").exists()
    assert "this run's teacher does not reproduce that run's (1 of" in proc.stdout + proc.stderr
    # students trained under another protocol (here another patience) are not taken over either
    changed = tmp_path / "changed"
    shutil.copytree(first.parent, changed)
    results = json.loads((changed / "summarization.json").read_text())
    results["stopping"]["patience"] += 1
    (changed / "summarization.json").write_text(json.dumps(results))
    proc = run(sys.executable, *QUALITY, *flags, "--work", tmp_path / "work2", "--reuse", changed / "summarization.json",
               "--out", tmp_path / "refused.json", check=False, cwd=ROOT)
    assert proc.returncode != 0 and not (tmp_path / "refused.json").exists()
    assert "its students were trained under another protocol (stopping differ" in proc.stdout + proc.stderr


def test_two_commands_on_one_work_directory_keep_each_others_stage_times(tmp_path):
    """quality.py --partial scores finished students while the run trains the rest in the same WORK: each records
    its stages' times in WORK/stages.json without dropping those the other wrote since it started."""
    from argparse import Namespace

    from benchmarks.runner import Run

    args = Namespace(work=str(tmp_path), threads=1)
    run_a, run_b = Run(args), Run(args)  # both read stages.json before either wrote

    def stage(r, name):
        log = tmp_path / f"{name}.log"
        r.stage(name, [sys.executable, "-c", "print('ok')"], str(log), lambda: log.is_file() and "ok" in log.read_text())

    stage(run_a, "train a")
    stage(run_b, "generate b")
    stage(run_a, "train c")
    assert set(json.loads((tmp_path / "stages.json").read_text())) == {"train a", "generate b", "train c"}


def test_compare_puts_two_runs_side_by_side_and_says_whether_makd_keeps_its_standing(tmp_path, capsys):
    """benchmarks.compare: per method and budget each run's mean ± sd (seeds) and vs-makd cell, "same standing"
    yes/no; a method one run lacks gets dashes; runs on other data are refused with one error."""
    from benchmarks.compare import main

    def run_of(teacher, rows, data="abc"):
        methods = [{"method": "teacher", "budget": None, "metrics": {"rougeL": teacher}}]
        for method, value, vs in rows:
            methods.append({"method": method, "budget": 0.5, "metrics": {"rougeL": value}, "sd": {"rougeL": 0.5},
                            "seeds": [{"seed": 1}, {"seed": 2}],
                            **({"vs_makd": {"rougeL": {"diff": vs[0], "ci95": vs[1:]}}} if vs else {})})
        return {"task": "summarization", "data_sha256": data, "methods": methods}

    a = run_of(26.0, [("svd_ce", 22.0, (-0.7, -1.3, -0.1)), ("makd", 22.7, None), ("svd_seq_kd", 22.5, (-0.2, -0.8, 0.4))])
    b = run_of(28.0, [("svd_ce", 22.5, (-0.1, -0.6, 0.5)), ("makd", 22.6, None)])
    paths = []
    for name, result in (("a", a), ("b", b), ("other", run_of(28.0, [], data="def"))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    main([str(paths[0]), str(paths[1]), "--labels", "fresh", "replicate"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| method | budget | fresh: rougeL (seeds) | vs makd (95% CI) | replicate: rougeL (seeds) | "
                        "vs makd (95% CI) | same standing |")
    assert lines[2:] == [
        "| teacher | teacher | 26.00 | – | 28.00 | – | – |",
        "| svd_ce | 50% | 22.00 ± 0.50 (2) | -0.70 [-1.30, -0.10] makd ahead | 22.50 ± 0.50 (2) | "
        "-0.10 [-0.60, +0.50] level | no |",
        "| makd | 50% | 22.70 ± 0.50 (2) | – | 22.60 ± 0.50 (2) | – | – |",
        "| svd_seq_kd | 50% | 22.50 ± 0.50 (2) | -0.20 [-0.80, +0.40] level | – | – | – |"]
    with pytest.raises(SystemExit, match="different data"):
        main([str(paths[0]), str(paths[2])])


def test_compare_difference_is_the_second_run_minus_the_first_from_their_kept_hypotheses(tmp_path, capsys):
    """benchmarks.compare --difference: per trained method both runs hold, run B minus run A over the seeds both
    hold, with an interval that resamples test items and each run's seeds, from the hypotheses kept beside each
    results file; a method one run lacks gets a dash; runs scored against other references are refused."""
    from benchmarks.archive import keep_text
    from benchmarks.compare import main
    from makd_fairseq.score import seeds_and_items_bootstrap

    refs = [f"the package provides tool number {i} for the system" for i in range(30)]
    half = [r if i % 2 else "a library" for i, r in enumerate(refs)]
    worse = [r if i % 3 == 0 else "a library" for i, r in enumerate(refs)]

    def run_of(name, students, references=refs):
        folder = tmp_path / name / "hypotheses" / "summarization"
        folder.mkdir(parents=True)
        keep_text(str(folder / "references.txt.xz"), references)
        methods = [{"method": "teacher", "budget": None, "metrics": {"rougeL": 30.0}}]
        for method, seeds in students.items():
            for seed, hyps in enumerate(seeds, 1):
                keep_text(str(folder / f"b50_{method}_seed{seed}.txt.xz"), hyps)
            methods.append({"method": method, "budget": 0.5, "metrics": {"rougeL": 1.0},
                            "seeds": [{"seed": s, "metrics": {"rougeL": 1.0}} for s in range(1, len(seeds) + 1)]})
        # a race keeps no hypotheses of its own: each seed's are its winner's
        methods.append({"method": "word_kd_race", "budget": 0.5, "metrics": {"rougeL": 1.0}, "seeds": [
            {"seed": s, "metrics": {"rougeL": 1.0}, "race": {"winner": "svd_ce"}}
            for s in range(1, len(students["svd_ce"]) + 1)]})
        path = tmp_path / name / "summarization.json"
        path.write_text(json.dumps({"task": "summarization", "data_sha256": "abc", "methods": methods}))
        return str(path)

    a = run_of("a", {"svd_ce": [worse, half], "svd_word_kd": [half], "svd_seq_kd": [worse, half]})
    b = run_of("b", {"svd_ce": [refs, half], "svd_word_kd": [half], "makd": [half], "svd_seq_kd": [refs]})
    main([a, b, "--labels", "p4", "p8", "--difference"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| same standing | p8 minus p4 (95% CI) |")
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    ce = seeds_and_items_bootstrap("rougeL", [refs, half], [worse, half], refs)
    assert ce["diff"] > 0 and rows["svd_ce"].endswith(
        f" {ce['diff']:+.2f} [{ce['ci95'][0]:+.2f}, {ce['ci95'][1]:+.2f}] |")
    assert rows["svd_word_kd"].endswith(" +0.00 [+0.00, +0.00] |")  # the same students: no difference at all
    assert rows["word_kd_race"].split(" | ")[-1] == rows["svd_ce"].split(" | ")[-1]  # its winner's students
    seq = seeds_and_items_bootstrap("rougeL", [refs], [worse], refs)  # seed 1 only: the students both runs hold
    assert rows["svd_seq_kd"].endswith(f" {seq['diff']:+.2f} [{seq['ci95'][0]:+.2f}, {seq['ci95'][1]:+.2f}] |")
    assert rows["makd"].endswith(" – |") and rows["teacher"].endswith(" – |")
    other = run_of("other", {"svd_ce": [half]}, references=list(reversed(refs)))
    with pytest.raises(SystemExit, match="other references"):
        main([a, other, "--difference"])


def test_compare_continued_measures_the_curves_after_the_first_runs_stop(tmp_path, capsys):
    """benchmarks.compare --continued: per student of a run that went on from the first's trainings, the mean of the
    validations after the first stop minus the mean of the first run's last PATIENCE ones; races are not counted
    twice; a student whose curve differs before the first stop was trained afresh and is named apart, and a second
    run with none that went on is refused."""
    from benchmarks.compare import main

    def run_of(curves, patience):
        methods = [{"method": "teacher", "budget": None, "metrics": {"rougeL": 30.0}}]
        for method, by_seed in curves.items():
            methods.append({"method": method, "budget": 0.5, "metrics": {"rougeL": 1.0}, "seeds": [
                {"seed": seed, "metrics": {"rougeL": 1.0}, "curve": [[250 * (i + 1), 4.0, v] for i, v in enumerate(c)]}
                for seed, c in by_seed.items()]})
        return {"task": "summarization", "data_sha256": "abc", "stopping": {"patience": patience}, "methods": methods}

    ce = [20.0, 22.0, 21.0, 21.5]  # best at 500, stopped by patience 2 at 1,000
    kd = [20.0, 21.0, 20.5, 20.7]
    a = run_of({"svd_ce": {1: ce}, "svd_word_kd": {1: kd}, "word_kd_race": {1: kd}}, 2)
    b = run_of({"svd_ce": {1: ce + [22.5, 23.5]}, "svd_word_kd": {1: kd}, "word_kd_race": {1: kd}}, 4)
    paths = []
    for name, result in (("a", a), ("b", b), ("other", run_of({"svd_ce": {1: [20.0, 22.5, 21.0, 21.5, 23.0]}}, 4))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(result))
    main([str(paths[0]), str(paths[1]), "--labels", "p2", "p4", "--continued"])
    table = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert table[0].startswith("| method | budget | seed | stop: p2 | stop: p4 |")
    assert table[2:] == ["| svd_ce | 50% | 1 | 1,000 | 1,500 | 21.25 | 23.00 | +1.75 |",
                         "| svd_word_kd | 50% | 1 | 1,000 | 1,000 | 20.60 | – | – |",  # stopped where it was
                         "| mean over all 1 students | | | | | | | +1.75 |"]
    # with more than one method measured, each method's mean too (the patience rule's is over two of them)
    b["methods"][2]["seeds"][0]["curve"] += [[1250, 4.0, 21.0], [1500, 4.0, 20.0]]
    paths[1].write_text(json.dumps(b))
    main([str(paths[0]), str(paths[1]), "--labels", "p2", "p4", "--continued"])
    table = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert table[-3:] == ["| mean over svd_ce's 1 students | | | | | | | +1.75 |",
                          "| mean over svd_word_kd's 1 students | | | | | | | -0.10 |",
                          "| mean over all 2 students | | | | | | | +0.82 |"]
    with pytest.raises(SystemExit, match="no training of the second run went on"):
        main([str(paths[0]), str(paths[2]), "--continued"])
    # a student the second run trained anew (its curve differs before the first stop) is named apart, not measured
    b["methods"][2]["seeds"][0]["curve"] = [[250, 4.0, 19.0], [500, 4.0, 23.0]]
    paths[1].write_text(json.dumps(b))
    main([str(paths[0]), str(paths[1]), "--labels", "p2", "p4", "--continued"])
    table = capsys.readouterr().out.split("\n\n")[1:]
    assert table[0].splitlines()[-1] == "| mean over all 1 students | | | | | | | +1.75 |"
    assert table[1] == ("Trained afresh under p4, not continued from p2 (their curves differ before its stop; not in "
                        "the table): svd_word_kd 50% seed 1.\n")
