#!/usr/bin/env python3
"""Two runs of the quality benchmark side by side: the same data and recipe, another teacher (or another machine).

    python3 benchmarks/compare.py benchmarks/results/summarization.json \\
        benchmarks/results/teacher_replicate/summarization.json --labels "this run" "replicate"

Prints a markdown table: per method and budget, each run's first metric (mean ± sd over seeds, how many seeds) and
its difference to makd with the 95% interval and makd's standing (as ``quality.py``'s table), and whether the two
runs give makd the same standing. The bootstrap intervals of one run cover student seeds and test items, not the
teacher; a standing that changes between two teachers of the same recipe is one the benchmark cannot claim.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality import METRICS, budget_label, standing, vs_cell  # noqa: E402


def load(path):
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"compare.py: cannot read results file {path}: {e}")
    if not isinstance(result, dict) or "methods" not in result or result.get("task") not in METRICS:
        raise SystemExit(f"compare.py: {path} is not a quality.py results file (needs 'task' and 'methods')")
    return result


def cells(result, method, budget, metric):
    """The metric (± sd, seeds) and vs-makd cells of one method at one budget in one run; dashes if it lacks it."""
    row = next((m for m in result["methods"] if m["method"] == method and m["budget"] == budget), None)
    if row is None:
        return "–", "–", None
    sd = (row.get("sd") or {}).get(metric)
    seeds = len(row.get("seeds") or []) if budget is not None else 0
    value = f"{row['metrics'][metric]:.2f}" + (f" ± {sd:.2f}" if sd is not None else "") + (
        f" ({seeds})" if seeds else "")
    vs = (row.get("vs_makd") or {}).get(metric)
    if vs is None:
        return value, "–", None
    return value, vs_cell(vs), standing(vs)


def compare(a, b, labels, metric=None):
    """Markdown table of runs ``a`` and ``b`` (results dicts) under ``labels``."""
    if a["task"] != b["task"]:
        raise SystemExit(f"compare.py: the runs are of different tasks ({a['task']} and {b['task']})")
    if a.get("data_sha256") != b.get("data_sha256"):
        raise SystemExit(f"compare.py: the runs used different data (data_sha256 {a.get('data_sha256')} and "
                         f"{b.get('data_sha256')})")
    metric = metric or METRICS[a["task"]][0]
    if metric not in METRICS[a["task"]]:
        raise SystemExit(f"compare.py: {a['task']} has no metric {metric} (choose from {', '.join(METRICS[a['task']])})")
    keys = []
    for m in a["methods"] + b["methods"]:
        if (m["method"], m["budget"]) not in keys:
            keys.append((m["method"], m["budget"]))
    keys.sort(key=lambda k: -1 if k[1] is None else -k[1])  # teacher, then budgets from the largest (stable within)
    lines = [f"| method | budget | {labels[0]}: {metric} (seeds) | vs makd (95% CI) | {labels[1]}: {metric} (seeds) "
             "| vs makd (95% CI) | same standing |", "|---|---|---|---|---|---|---|"]
    for method, budget in keys:
        value_a, vs_a, standing_a = cells(a, method, budget, metric)
        value_b, vs_b, standing_b = cells(b, method, budget, metric)
        same = "–" if standing_a is None or standing_b is None else "yes" if standing_a == standing_b else "no"
        lines.append(f"| {method} | {budget_label(budget)} | {value_a} | {vs_a} | "
                     f"{value_b} | {vs_b} | {same} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs=2, help="two quality.py results files (JSON) of the same task and data")
    parser.add_argument("--labels", nargs=2, default=("run A", "run B"), help="column headings of the two runs")
    parser.add_argument("--metric", help="the metric to compare (default: the task's first, as in quality.py)")
    args = parser.parse_args(argv)
    print(compare(load(args.results[0]), load(args.results[1]), args.labels, args.metric), end="")


if __name__ == "__main__":
    main()
