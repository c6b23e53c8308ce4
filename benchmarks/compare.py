#!/usr/bin/env python3
"""Two runs of the quality benchmark side by side: the same data and recipe, another teacher (or another machine).

    python3 -m benchmarks.compare benchmarks/results/summarization.json \\
        benchmarks/results/teacher_replicate/summarization.json --labels "this run" "replicate"

Prints a markdown table: per method and budget, each run's first metric (mean ± sd over seeds, how many seeds) and
its difference to makd with the 95% interval and makd's standing (as ``benchmarks.quality``'s table), and whether
the two runs give makd the same standing. The bootstrap intervals of one run cover student seeds and test items, not
the teacher; a standing that changes between two teachers of the same recipe is one the benchmark cannot claim.
"""
import argparse
import json

from .report import side_by_side
from .scoring import METRICS


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
    args = parser.parse_args(argv)
    print(side_by_side(load(args.results[0]), load(args.results[1]), args.labels, args.metric), end="")


if __name__ == "__main__":
    main()
