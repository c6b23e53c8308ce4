#!/usr/bin/env python3
"""Two runs of the quality benchmark side by side: the same data and recipe, another teacher (or another machine).

    python3 -m benchmarks.compare benchmarks/results/summarization.json \\
        benchmarks/results/teacher_replicate/summarization.json --labels "this run" "replicate"

Prints a markdown table: per method and budget, each run's first metric (mean ± sd over seeds, how many seeds) and
its difference to makd with the 95% interval and makd's standing (as ``benchmarks.quality``'s table), and whether
the two runs give makd the same standing. The bootstrap intervals of one run cover student seeds and test items, not
the teacher; a standing that changes between two teachers of the same recipe is one the benchmark cannot claim.

``--difference`` adds, per trained method and budget both runs hold, the second run minus the first over the seeds
both hold, with its 95% interval from the kept hypotheses (``makd_fairseq.score.seeds_and_items_bootstrap``: test
items resampled once for both, each run's seeds independently): how much a lever moves the same students, e.g. a
rerun with a higher patience (``RERUN_PATIENCE``) against the protocol's.

``--continued`` adds, for a second run whose trainings went on from the first's (``--extend`` to a higher patience
or cap), per student the mean validation metric after the first run's stop minus the mean of the first run's last
PATIENCE validations (those that led to its stop): positive where the curves were still rising when the first
run's rule stopped them (docs/benchmarks.md, "A longer patience, measured": validation only, no test score); a
student the second run trained afresh is named beneath the table.
"""
import argparse
import json

from .report import budget_label, side_by_side
from .scoring import METRICS
from .sizes import RACES


def load(path):
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"benchmarks.compare: cannot read results file {path}: {e}")
    if not isinstance(result, dict) or "methods" not in result or result.get("task") not in METRICS:
        raise SystemExit(f"benchmarks.compare: {path} is not a benchmarks.quality results file (needs 'task' and "
                         "'methods')")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs=2, help="two quality results files (JSON) of the same task and data")
    parser.add_argument("--labels", nargs=2, default=("run A", "run B"), help="column headings of the two runs")
    parser.add_argument("--metric", help="the metric to compare (default: the task's first, as in benchmarks.quality)")
    parser.add_argument("--difference", action="store_true",
                        help="add each method's second-run-minus-first difference over the seeds both hold, with its "
                             "95%% interval over test items and seeds, from the runs' kept hypotheses")
    parser.add_argument("--continued", action="store_true",
                        help="a table of each student's validation metric after the first run's stop against its "
                             "last PATIENCE validations before it (the second run's trainings went on from the "
                             "first's)")
    args = parser.parse_args(argv)
    a, b = load(args.results[0]), load(args.results[1])
    differences = between(a, args.results[0], b, args.results[1], args.metric) if args.difference else None
    print(side_by_side(a, b, args.labels, args.metric, differences), end="")
    if args.continued:
        print("\n" + continued_table(continued(a, b), args.labels), end="")


def continued(a, b):
    """([(method, budget, seed, stop in a, stop in b, mean of a's last PATIENCE validation metrics, mean of b's after
    a's stop or None)], [(method, budget, seed) trained afresh in b]) of the trained students (not the races) both
    runs hold: a row for each whose curve in ``b`` begins with its whole curve in ``a``, the others (another curve
    before a's stop: ``b`` trained it anew, e.g. stages.extend found nothing to go on from) listed apart; an error
    when none went on from ``a``."""
    patience = a["stopping"]["patience"]
    rows, afresh = [], []
    for entry in a["methods"]:
        if entry["method"] in RACES:  # a race's students are the raced methods' own: counted once, there
            continue
        other = next((m for m in b["methods"] if (m["method"], m["budget"]) == (entry["method"], entry["budget"])), {})
        theirs = {r["seed"]: r["curve"] for r in other.get("seeds") or [] if r.get("curve")}
        for record in entry.get("seeds") or []:
            mine, curve = record.get("curve"), theirs.get(record["seed"])
            if not mine or not curve:
                continue
            if any(row[2] is None for row in curve):
                raise SystemExit("benchmarks.compare: --continued: the curves hold no validation metric (a run chosen "
                                 "on nll: --select-on metric logs it)")
            if curve[:len(mine)] != mine:
                afresh.append((entry["method"], entry["budget"], record["seed"]))
                continue
            after = [row[2] for row in curve[len(mine):]]
            rows.append((entry["method"], entry["budget"], record["seed"], mine[-1][0], curve[-1][0],
                         sum(row[2] for row in mine[-patience:]) / len(mine[-patience:]),
                         sum(after) / len(after) if after else None))
    if afresh and not rows:
        raise SystemExit("benchmarks.compare: --continued: no training of the second run went on from the first's "
                         "(their curves differ before the first run's stop)")
    return rows, afresh


def continued_table(measured, labels):
    rows, afresh = measured
    lines = [f"| method | budget | seed | stop: {labels[0]} | stop: {labels[1]} | last validations before the first "
             "stop (mean) | after it (mean) | after minus before |", "|---|---|---|---|---|---|---|---|"]
    changes = {}  # method -> its students' after minus before
    for method, budget, seed, stop_a, stop_b, before, after in rows:
        change = "–" if after is None else f"{after - before:+.2f}"
        changes.setdefault(method, []).extend([] if after is None else [after - before])
        lines.append(f"| {method} | {budget_label(budget)} | {seed} | {stop_a:,} | {stop_b:,} | {before:.2f} | "
                     + ("–" if after is None else f"{after:.2f}") + f" | {change} |")
    measured = {method: c for method, c in changes.items() if c}
    groups = [(f"{method}'s", c) for method, c in measured.items()] if len(measured) > 1 else []
    every = [x for c in measured.values() for x in c]
    for label, c in groups + ([("all", every)] if every else []):
        lines.append(f"| mean over {label} {len(c)} students | | | | | | | {sum(c) / len(c):+.2f} |")
    if afresh:
        names = ", ".join(f"{m} {budget_label(b)} seed {s}" for m, b, s in afresh)
        lines.append(f"\nTrained afresh under {labels[1]}, not continued from {labels[0]} (their curves differ before "
                     f"its stop; not in the table): {names}.")
    return "\n".join(lines) + "\n"


def between(a, path_a, b, path_b, metric=None):
    """{(method, budget): b minus a in ``metric``} (``seeds_and_items_bootstrap``) of the trained methods both runs
    hold, from their kept hypotheses; an error when the runs' references differ."""
    from makd_fairseq.score import seeds_and_items_bootstrap

    from .rescore import kept_models

    metric = metric or METRICS[a["task"]][0]
    (_, scored_a, refs), (_, scored_b, refs_b) = kept_models(a, path_a), kept_models(b, path_b)
    if refs != refs_b:
        raise SystemExit(f"benchmarks.compare: {path_a} and {path_b} were scored against other references")

    def seeds(scored, key):
        return {seed for method, budget, seed in scored if (method, budget) == key and seed is not None}
    differences = {}
    for key in sorted({(m, budget) for m, budget, _ in scored_a} & {(m, budget) for m, budget, _ in scored_b}, key=str):
        both = sorted(seeds(scored_a, key) & seeds(scored_b, key))  # the same students, where a lever moved them
        if both:
            differences[key] = seeds_and_items_bootstrap(metric, [scored_b[(*key, s)][1] for s in both],
                                                         [scored_a[(*key, s)][1] for s in both], refs)
    return differences


if __name__ == "__main__":
    main()
