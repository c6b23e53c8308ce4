"""The race's length, decided on validation (docs/benchmarks.md, "The race's length"): per seed-task pair where both
racers finished, which racer ``word_kd_race`` kept after its first updates and which ended with the better best
validation score (``word_kd_race_full``), and what the short race cost: the better end minus the end of the racer it
kept. Reads only the validation values the races recorded in the results files (``records.add_races``), no test
score::

    python3 -m benchmarks.race_rule benchmarks/results/rerun/patience8/summarization.json \\
        benchmarks/results/rerun/patience8/translation.json [--budget 0.5] [--seeds 1 2 3] [--threshold 0.3]

The rule is decided when every pair it names (tasks × seeds) is in the files, or earlier when the pairs in hand
already put the mean over all of them above the threshold (a cost is never negative); until then the table is
printed with the pairs still missing and no verdict.
"""
import argparse
import json

from makd_fairseq import fairseq_logs

SHORT, FULL = "word_kd_race", "word_kd_race_full"  # the two races (sizes.RACES) of the same racers


def pairs(result, budget):
    """{seed: (short race record, full race record)} of ``result`` at ``budget``, where both races were derived."""
    races = {m["method"]: {r["seed"]: r.get("race") for r in m.get("seeds") or []}
             for m in result["methods"] if m["method"] in (SHORT, FULL) and m["budget"] == budget}
    short, full = races.get(SHORT, {}), races.get(FULL, {})
    return {seed: (short[seed], full[seed]) for seed in sorted(set(short) & set(full)) if short[seed] and full[seed]}


def cost(short, full):
    """How much better the better racer's best validation at the end is than that of the racer the short race kept
    (0 when it kept the better one; never negative: the better end is the higher metric or the lower nll)."""
    better, kept = full["values"][full["winner"]], full["values"][short["winner"]]
    return kept - better if fairseq_logs.best_of([0, 1], full["selected_on"]) == 0 else better - kept


def n_pairs(n):
    return f"{n} pair" + ("" if n == 1 else "s")


def listed(values):
    return ", ".join(f"{m} {v}" for m, v in values.items())


def table(results, budget, seeds, threshold):
    lines = ["| task | seed | kept after the short race (updates: values) | better at the end (values) | cost |",
             "|---|---|---|---|---|"]
    costs, missing = [], []
    for result in results:
        found = pairs(result, budget)
        for seed in seeds:
            if seed not in found:
                missing.append(f"{result['task']} seed {seed}")
                continue
            short, full = found[seed]
            c = cost(short, full)
            costs.append(c)
            lines.append(f"| {result['task']} | {seed} | {short['winner']} ({short['updates']:,}: "
                         f"{listed(short['values'])}) | {full['winner']} ({listed(full['values'])}) | {c:+.2f} |")
    mean = sum(costs) / len(costs) if costs else None
    lines.append(f"| mean over {n_pairs(len(costs))} | | | | " + ("–" if mean is None else f"{mean:+.2f}") + " |")
    lines.append("")
    at_least = sum(costs) / (len(costs) + len(missing))  # a cost is never negative: the missing pairs add >= 0
    if missing and at_least > threshold:
        lines.append(f"Decided with {n_pairs(len(missing))} not finished ({', '.join(missing)}): costs are never "
                     f"negative, so the mean over all {len(costs) + len(missing)} pairs is at least {at_least:+.2f} > "
                     f"{threshold}: the full race is makd-compress's default.")
    elif missing:
        lines.append(f"Not decided: {n_pairs(len(missing))} not finished ({', '.join(missing)}).")
    else:
        verdict = "the full race" if mean > threshold else f"the {SHORT} race"
        lines.append(f"Decided: mean cost {mean:+.2f} {'>' if mean > threshold else '<='} {threshold}: {verdict} "
                     "is makd-compress's default.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="quality results JSON files (benchmarks.quality --out)")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args(argv)
    results = []
    for path in args.results:
        try:
            with open(path) as f:
                results.append(json.load(f))
        except (OSError, ValueError) as e:
            parser.error(f"{path}: {e}")
    print(table(results, args.budget, args.seeds, args.threshold), end="")


if __name__ == "__main__":
    main()
