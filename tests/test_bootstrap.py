"""The vs-makd intervals: a paired bootstrap over test items and each method's seeds, on the committed benchmark
hypotheses (real students' outputs, read with benchmarks.archive) and on synthetic ones; the quality table's note on
what an interval covers; ``python3 -m benchmarks.rescore`` on a results file with its kept hypotheses."""
import json
import os
import sys

import pytest

from conftest import run
from benchmarks import RESULTS
from benchmarks.archive import keep_text, read_kept
from makd_fairseq.score import paired_bootstrap, seeds_and_items_bootstrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = 200  # the first test items: enough to resample, quick to score


def kept(task, name, items=ITEMS):
    return read_kept(os.path.join(RESULTS, "hypotheses", task, f"{name}.txt.xz"))[:items]


def seeds(task, method, n=3):
    return [kept(task, f"b50_{method}_seed{s}") for s in range(1, n + 1)]


def width(vs):
    return vs["ci95"][1] - vs["ci95"][0]


@pytest.mark.parametrize("task,metric", [("summarization", "rougeL"), ("translation", "bleu"),
                                         ("translation", "chrf")])
def test_one_seed_each_is_the_item_bootstrap_exactly(task, metric):
    """One seed per method: the seeds-and-items bootstrap draws the items paired_bootstrap draws (same RNG seed) and
    gives its difference and interval to the last digit; it says it resampled the items only."""
    system, baseline, refs = kept(task, "b50_svd_ce_seed1"), kept(task, "b50_makd_seed1"), kept(task, "references")
    items = paired_bootstrap(metric, [system], [baseline], refs, samples=300)
    both = seeds_and_items_bootstrap(metric, [system], [baseline], refs, samples=300)
    assert both == {**items, "resampled": "items only (1 vs 1)"}
    assert items["ci95"][0] < items["ci95"][1]  # a real interval, not two empty ones that agree


def degrade(refs, keep):
    """Each reference cut to its first ``keep`` share of words, the rest replaced by one unrelated word."""
    out = []
    for r in refs:
        words = r.split()
        cut = max(1, int(len(words) * keep))
        out.append(" ".join(words[:cut] + ["zzz"] * (len(words) - cut)))
    return out


@pytest.mark.parametrize("metric", ["rougeL", "bleu"])
def test_seeds_that_disagree_widen_the_interval(metric):
    """Synthetic: the system's three seeds range from the references themselves to a third of each kept, the
    baseline's three seeds are alike. Resampling the seeds widens the interval well beyond the items-only one
    (whose seeds are averaged per resample); both hold the same point estimate."""
    refs = kept("translation", "references")
    system = [refs, degrade(refs, 0.66), degrade(refs, 0.33)]
    baseline = [degrade(refs, 0.5)] * 3
    items = paired_bootstrap(metric, system, baseline, refs, samples=300)
    both = seeds_and_items_bootstrap(metric, system, baseline, refs, samples=300)
    assert both["diff"] == pytest.approx(items["diff"], abs=0.011)  # the mean of means, the means' mean
    assert width(both) > 3 * width(items), (items, both)
    assert both["resampled"] == "items and seeds (3 vs 3)"


@pytest.mark.parametrize("task,metric,method", [("summarization", "rougeL", "svd_word_kd"),
                                                ("translation", "bleu", "svd_ce"),
                                                ("translation", "chrf", "svd_seq_kd")])
def test_interval_holds_the_point_estimate(task, metric, method):
    """Real students, three seeds a side: the interval holds the seed-averaged difference, which is the mean of each
    seed's corpus score minus makd's; seeds add to the items' spread, so it is no narrower than items only."""
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import BLEU, CHRF

    refs = kept(task, "references")
    system, baseline = seeds(task, method), seeds(task, "makd")
    vs = seeds_and_items_bootstrap(metric, system, baseline, refs, samples=300)
    assert vs["ci95"][0] <= vs["diff"] <= vs["ci95"][1]
    def corpus(h):  # the metric as rouge-score and sacreBLEU compute it
        if metric == "rougeL":
            scorer = RougeScorer(["rougeL"], use_stemmer=True)
            return 100 * sum(scorer.score(r, x)["rougeL"].fmeasure for x, r in zip(h, refs)) / len(refs)
        return {"bleu": BLEU, "chrf": CHRF}[metric]().corpus_score(h, [refs]).score
    mean = lambda runs: sum(corpus(h) for h in runs) / len(runs)  # noqa: E731
    assert vs["diff"] == pytest.approx(mean(system) - mean(baseline), abs=0.011)
    assert width(vs) >= width(paired_bootstrap(metric, system, baseline, refs, samples=300))


def test_deterministic_under_a_fixed_seed():
    """The same RNG seed gives the same interval; another seed other resamples."""
    refs = kept("translation", "references")
    system, baseline = seeds("translation", "svd_ce"), seeds("translation", "makd")
    first = seeds_and_items_bootstrap("bleu", system, baseline, refs, samples=200)
    assert seeds_and_items_bootstrap("bleu", system, baseline, refs, samples=200) == first
    assert seeds_and_items_bootstrap("bleu", system, baseline, refs, samples=200, seed=7)["ci95"] != first["ci95"]


def test_quality_table_says_what_the_interval_covers():
    """The note under the table: items and seeds, not the teacher; a file without ``resampled`` (the old
    protocol) is named items only, with the command that recomputes it."""
    from benchmarks.report import table

    def result(vs):
        metrics = {"rougeL": 20.0, "rouge1": 22.0, "rouge2": 8.0}
        return {"task": "summarization", "methods": [
            {"method": "teacher", "budget": None, "params": 20, "metrics": metrics},
            {"method": "svd_ce", "budget": 0.5, "params": 10, "metrics": metrics, "vs_makd": {"rougeL": vs}},
            {"method": "makd", "budget": 0.5, "params": 10, "metrics": metrics}]}

    new = table(result({"diff": 0.1, "ci95": [-0.2, 0.4], "resampled": "items and seeds (3 vs 3)"}))
    assert "resamples the test items and each method's seeds" in new and "does not cover the teacher" in new
    old = table(result({"diff": 0.1, "ci95": [-0.2, 0.4]}))
    assert "over test items only" in old and "benchmarks.rescore" in old
    assert "vs makd:" not in table({**result(None), "methods": result(None)["methods"][::2]})


def test_compare_with_makd_resamples_each_sides_seeds():
    """The benchmark's vs_makd: every method against makd at its budget, each side's seeds; the untrained student
    (no seed) against makd's seeds."""
    from benchmarks.scoring import compare_with_makd

    refs = kept("translation", "references", 100)
    names = {("svd_only", None): "b50_svd_only", **{("svd_ce", s): f"b50_svd_ce_seed{s}" for s in (1, 2)},
             **{("makd", s): f"b50_makd_seed{s}" for s in (1, 2)}}
    models = [(m, 0.5, s, None) for m, s in names]
    scored = {(m, 0.5, s): ({}, kept("translation", name, 100)) for (m, s), name in names.items()}
    methods = [{"method": m, "budget": 0.5} for m in ("svd_only", "svd_ce", "makd")]
    compare_with_makd("translation", methods, models, scored, refs)
    ce = methods[1]["vs_makd"]
    assert ce["bleu"] == seeds_and_items_bootstrap("bleu", [scored[("svd_ce", 0.5, s)][1] for s in (1, 2)],
                                                   [scored[("makd", 0.5, s)][1] for s in (1, 2)], refs)
    assert ce["chrf"]["resampled"] == "items and seeds (2 vs 2)"
    assert methods[0]["vs_makd"]["bleu"]["resampled"] == "items and seeds (1 vs 2)"
    assert "vs_makd" not in methods[2]


def test_rescore_recomputes_a_results_files_intervals_from_its_kept_hypotheses(tmp_path):
    """``python3 -m benchmarks.rescore``: a results file of the old protocol (items only) with its kept hypotheses
    gets the seeds-and-items intervals, side by side with the file's, and the file stays as it was; hypotheses
    that do not give the file's differences are refused with one error."""
    refs = kept("summarization", "references", 120)
    hyps = {f"b50_{m}_seed{s}": kept("summarization", f"b50_{m}_seed{s}", 120)
            for m in ("svd_ce", "makd") for s in (1, 2)}
    folder = tmp_path / "hypotheses" / "summarization"
    folder.mkdir(parents=True)
    for name, lines in {**hyps, "references": refs}.items():
        keep_text(str(folder / f"{name}.txt.xz"), lines)
    old = paired_bootstrap("rougeL", [hyps["b50_svd_ce_seed1"], hyps["b50_svd_ce_seed2"]],
                           [hyps["b50_makd_seed1"], hyps["b50_makd_seed2"]], refs)
    metrics = {"rougeL": 20.0, "rouge1": 22.0, "rouge2": 8.0}
    result = {"task": "summarization", "hypotheses": "hypotheses/summarization", "methods": [
        {"method": "teacher", "budget": None, "params": 20, "metrics": metrics, "seeds": [{"seed": None}]},
        {"method": "svd_ce", "budget": 0.5, "params": 10, "metrics": metrics, "seeds": [{"seed": 1}, {"seed": 2}],
         "vs_makd": {"rougeL": old}},
        {"method": "makd", "budget": 0.5, "params": 10, "metrics": metrics, "seeds": [{"seed": 1}, {"seed": 2}]}]}
    path = tmp_path / "summarization.json"
    path.write_text(json.dumps(result))
    out = tmp_path / "rescored.md"
    proc = run(sys.executable, "-m", "benchmarks.rescore", str(path), "--samples", "300", "--out", str(out),
               check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    new = seeds_and_items_bootstrap("rougeL", [hyps["b50_svd_ce_seed1"], hyps["b50_svd_ce_seed2"]],
                                    [hyps["b50_makd_seed1"], hyps["b50_makd_seed2"]], refs, samples=300)
    cell = lambda vs: f"{vs['diff']:+.2f} [{vs['ci95'][0]:+.2f}, {vs['ci95'][1]:+.2f}]"  # noqa: E731
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| svd_ce | 50% | rougeL |"))
    assert f"| 2 vs 2 | {cell(old)}" in row and f"| {cell(new)}" in row
    assert out.read_text().startswith("# ") and f"`python3 -m benchmarks.rescore {path} --samples 300 --out {out}`" \
        in out.read_text()
    assert json.loads(path.read_text()) == result
    # another student's outputs under that name: not what the file was scored on
    keep_text(str(folder / "b50_svd_ce_seed2.txt.xz"), kept("summarization", "b50_dense_sft_kd_seed2", 120))
    proc = run(sys.executable, "-m", "benchmarks.rescore", str(path), "--samples", "50", check=False, cwd=ROOT)
    assert proc.returncode != 0 and "not what the file was scored on" in proc.stderr
