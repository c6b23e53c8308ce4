#!/usr/bin/env python3
"""The vs-makd intervals of quality results files recomputed from their kept hypotheses, resampling seeds as well as
test items (``makd_fairseq.score.seeds_and_items_bootstrap``), beside the intervals the files hold.

    python3 -m benchmarks.rescore benchmarks/results/summarization.json benchmarks/results/translation.json \\
        --out benchmarks/results/rescored_seeds_and_items.md

For each file: its quality table with the recomputed intervals, then per method, budget and paired metric the
interval the file holds (results written before the seeds were resampled: test items only) and the recomputed one,
and whether makd keeps its standing. The hypotheses are read from the folder the file's ``hypotheses`` names
(``benchmarks.archive``); they must give the differences the file holds. Nothing in the results files changes.
"""
import argparse
import copy
import logging
import os
import shlex
import sys

from makd_fairseq.files import write_text

from .archive import read_kept
from .compare import load
from .report import budget_label, standing, table, trained_as, vs_cell
from .runner import model_name
from .scoring import PAIRED, compare_with_makd


def kept_models(result, path):
    """(models, scored, references) of a results file as ``compare_with_makd`` takes them, from its kept hypotheses:
    models (method, budget, seed, None) of every student (an untrained one has seed None; a race's, the winner's),
    scored (method, budget, seed) -> (metrics, hypotheses)."""
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), result.get("hypotheses") or
                          os.path.join("hypotheses", result["task"]))

    def read(name):
        file = os.path.join(folder, name.replace("/", "_") + ".txt.xz")
        if not os.path.isfile(file):
            raise SystemExit(f"benchmarks.rescore: {path}: no kept hypotheses {file}")
        return read_kept(file)
    models, scored = [], {}
    for entry in result["methods"]:
        if entry["budget"] is None:
            continue
        for record in entry.get("seeds") or [{"seed": None, "metrics": entry["metrics"]}]:
            key = (entry["method"], entry["budget"], record["seed"])
            models.append((*key, None))
            # a race's student is the winner's own (its hypotheses kept once, under the winner's name)
            scored[key] = (record.get("metrics"), read(model_name(trained_as(entry, record), entry["budget"],
                                                                  record["seed"])))
    return models, scored, read("references")


def rescore(result, path, samples=1000):
    """A copy of ``result`` whose ``vs_makd`` intervals resample items and seeds; an error when the kept hypotheses
    do not give the differences the file holds."""
    models, scored, references = kept_models(result, path)
    new = copy.deepcopy(result)
    for entry in new["methods"]:
        entry.pop("vs_makd", None)
    compare_with_makd(new["task"], new["methods"], models, scored, references, samples)
    for old, entry in zip(result["methods"], new["methods"]):
        for metric, vs in (old.get("vs_makd") or {}).items():
            again = entry["vs_makd"][metric]["diff"]
            if abs(again - vs["diff"]) > 0.011:  # the same point estimate: rounding apart, the same hypotheses
                raise SystemExit(f"benchmarks.rescore: {path}: the kept hypotheses give {entry['method']} at "
                                 f"{budget_label(entry['budget'])} a {metric} difference of {again:+.2f} to makd, the "
                                 f"file {vs['diff']:+.2f}: they are not what the file was scored on")
    return new


def comparison(old, new):
    """Markdown: per method, budget and paired metric, the interval ``old`` holds and the one ``new`` holds."""
    lines = ["| method | budget | metric | seeds (method vs makd) | in the file | items and seeds | same standing |",
             "|---|---|---|---|---|---|---|"]
    for a, b in zip(old["methods"], new["methods"]):
        for metric in PAIRED[old["task"]]:
            vs_a, vs_b = (a.get("vs_makd") or {}).get(metric), (b.get("vs_makd") or {}).get(metric)
            if vs_b is None:
                continue
            seeds = vs_b["resampled"].rsplit("(", 1)[1].rstrip(")")
            same = "–" if vs_a is None else "yes" if standing(vs_a) == standing(vs_b) else "**no**"
            lines.append(f"| {a['method']} | {budget_label(a['budget'])} | {metric} | {seeds} | {vs_cell(vs_a)} | "
                         f"{vs_cell(vs_b)} | {same} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.rescore", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="quality results files (JSON) with their kept hypotheses")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--out", help="also write the report here (markdown, the command at its top)")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score's "Using default tokenizer", once a scorer
    command = " ".join(["python3 -m benchmarks.rescore", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    parts = [f"Generated by `{command}`: the vs-makd intervals recomputed from the kept hypotheses with a paired "
             "bootstrap over test items and seeds; the results files are unchanged.\n"]
    for path in args.results:
        old = load(path)
        new = rescore(old, path, args.samples)
        parts += [f"## {path} ({old['task']})\n", table(new),
                  "The intervals the file holds and the recomputed ones:\n", comparison(old, new)]
    text = "\n".join(parts)
    print(text, end="")
    if args.out:
        write_text(args.out, "# vs-makd intervals over test items and seeds\n\n" + text)


if __name__ == "__main__":
    main()
