"""Issue 34's diagnosis report: validation curves of students, read from quality results files, side by side.

    python3 -m benchmarks.diagnosis WORK/translation_long.json WORK/translation_target.json ... \
        --out benchmarks/results/diagnosis

Each input is a ``benchmarks.quality --validation-only`` results file (nothing decoded on test), or an earlier
report's OUT.json (its students kept: their work directories may be gone with a machine; one still training then is
marked interrupted unless ``--in-progress`` goes on with it). Students trained on a GPU (``--device cuda``) are other
students than the same training on the CPU (their numerics differ) and race only against a GPU svd_ce. For every trained
student (method, budget, seed) its curve — ``[updates, valid nll, valid metric]`` at every validation — gives:

- the checkpoint the project's rule picks today (lowest nll) and the metric there;
- the checkpoint chosen on the metric (highest), and the metric there;
- ``stopped on nll``: where today's stopping rule (``--patience`` validations without a lower nll) would have ended
  this very training, and the metric of its best-nll checkpoint up to there. Training is deterministic (one seed, one
  data order), so the curve's prefix is what a run stopped on nll would have logged: one long run answers both
  "which checkpoint" (a) and "how long" (b).

``--cap N`` (default 3,000, the benchmark's standard cap) adds each curve's best metric up to N updates: a long run's
value where the standard-cap runs end, so that both compare at the same training length.

``--in-progress TASK=WORK`` (repeatable: a task's standard-cap and long runs live in two work directories) adds the
students of a ``benchmarks.quality`` work directory that has no results file yet: their curves so far, read from each
``train.log``, with the stopping rule and commit of the command that started them (``train.log.provenance.json``);
the table marks those whose training has not ended "in progress" (their rows can still change). ``--stopped
TASK=WORK`` reads a work directory whose trainings will not go on (copied back from a machine since given back):
its unfinished trainings are marked "interrupted".

A results file's ``teacher_valid`` (the teacher decoded on the valid split as the students are validated) gives each
task's teacher metric; the table shows each best metric's share of it.

Writes OUT.json (every curve and summary, with the commits the students trained at), OUT.md (the table) and OUT.png
(metric and nll against updates).
"""

import argparse
import glob
import json
import os

from makd_fairseq import fairseq_logs
from makd_fairseq.files import git_state, write_json, write_text

from .commands import VALID_METRIC, flag_value
from .provenance import command
from .report import pyplot


def stopped_on_nll(curve, patience):
    """(the validation index today's rule stops at, the index of the lowest nll up to there) for ``curve``."""
    best, since = 0, 0
    for i in range(1, len(curve)):
        if curve[i][1] < curve[best][1]:
            best, since = i, 0
        else:
            since += 1
            if since >= patience:
                return i, best
    return len(curve) - 1, best


def best_on_metric(curve, until=None):
    """The index of the highest metric (the earliest of equals) among the validations up to ``until`` updates."""
    with_metric = [i for i, row in enumerate(curve) if row[2] is not None and (until is None or row[0] <= until)]
    return max(with_metric, key=lambda i: (curve[i][2], -curve[i][0])) if with_metric else None


def summarize(curve, patience, cap=None):
    """The three choices of one curve (see the module docstring), and with ``cap`` the metric's best up to ``cap``
    updates (what the curve gives at the standard cap: long runs compare there with the standard-cap ones); metric
    values None where none was logged."""
    by_nll = min(range(len(curve)), key=lambda i: (curve[i][1], curve[i][0]))
    stop, chosen = stopped_on_nll(curve, patience)
    point = lambda i: None if i is None else {"updates": curve[i][0], "nll": curve[i][1], "metric": curve[i][2]}  # noqa: E731
    summary = {"best_nll": point(by_nll), "best_metric": point(best_on_metric(curve)),
               "stopped_on_nll": {**point(chosen), "stopped_at": curve[stop][0]}}
    if cap is not None:
        summary["best_metric_at_cap"] = {"cap": cap, **(point(best_on_metric(curve, cap)) or {})}
    return summary


def teachers(paths):
    """{task: the teacher's validation metric} from the results files (``teacher_valid``) and earlier reports."""
    found = {}
    for path in paths:
        result = json.load(open(path))
        if "students" in result:
            found.update(result.get("teacher_valid") or {})
        elif result.get("teacher_valid"):
            found[result["task"]] = result["teacher_valid"][VALID_METRIC[result["task"]]]
    return found


def collect(paths, cap=None):
    """Every trained student of the given results files, with its summary. A file may also be an earlier report
    (OUT.json): its students are kept as they are (their work directories may be gone with a machine). A student in
    several files is taken from the last (give the earlier report first)."""
    rows = []
    for path in paths:
        result = json.load(open(path))
        if "students" in result:  # still training then: interrupted, unless an --in-progress directory goes on with it
            rows += [{**{k: v for k, v in r.items() if k not in ("race_against_svd_ce", "in_progress")},
                      "device": r.get("device", "cpu"),
                      "interrupted": bool(r.get("in_progress") or r.get("interrupted")),
                      **summarize(r["curve"], r["stopping"]["patience"], cap)} for r in result["students"]]
            continue
        patience = result["stopping"]["patience"]
        for m in result["methods"]:
            for seed in m.get("seeds") or []:
                if not seed.get("curve"):
                    continue
                rows.append({"task": result["task"], "results": os.path.relpath(path), "method": m["method"],
                             "budget": m["budget"], "seed": seed["seed"], "device": result.get("device", "cpu"),
                             "flags": m.get("flags"), "stopping": result["stopping"],
                             "selection": result.get("checkpoint_selection"),
                             "updates": seed["updates"], "early_stopped": seed["early_stopped"],
                             "trained_at": seed.get("trained_at"), "curve": seed["curve"],
                             **summarize(seed["curve"], patience, cap)})
    latest = {key(r): r for r in rows}  # one student read twice (an earlier report, then its results file): the later
    return [r for r in rows if latest[key(r)] is r]


def key(row):
    """What makes two rows one student: a long run and a standard-cap run of one method are two, and so are the same
    training on the CPU and on a GPU."""
    return row["task"], row["method"], row["budget"], row["seed"], row["stopping"]["max_update"], row["device"]


def in_progress(task, work, known, cap=None, going_on=True):
    """The students under ``work`` (WORK/b<budget>/<method>/seed<k>/train.log) whose ``key`` is not in ``known``, with
    their curves so far and the stopping rule and device of the command that started them. An unfinished training
    is in progress, or interrupted when ``going_on`` is False (its machine is gone)."""
    rows = []
    for log in sorted(glob.glob(os.path.join(work, "b*", "*", "seed*", "train.log"))):
        budget_dir, method, seed_dir = log.split(os.sep)[-4:-1]
        budget, seed = int(budget_dir[1:]) / 100, int(seed_dir[4:])
        started = json.load(open(log + ".provenance.json"))
        cmd = [str(c) for c in started[-1]["command"]]
        metric = flag_value(cmd, "--eval-metric") if "--eval-metric" in cmd else None
        text = fairseq_logs.read(log)
        curve = fairseq_logs.valid_curve(text, ("nll_loss", metric)) if metric else [
            row + [None] for row in fairseq_logs.valid_curve(text)]
        stopping = {"max_update": int(flag_value(cmd, "--max-update")),
                    "validate_interval_updates": int(flag_value(cmd, "--validate-interval-updates")),
                    "patience": int(flag_value(cmd, "--patience"))}
        if not curve:
            continue
        unfinished = not fairseq_logs.finished(text)
        row = {"task": task, "results": None, "in_progress": unfinished and going_on,
               "interrupted": unfinished and not going_on, "method": method, "budget": budget, "seed": seed,
               "device": "cpu" if "--cpu" in cmd else "cuda", "flags": None, "stopping": stopping,
               "selection": "metric" if metric else "nll", "updates": curve[-1][0],
               "early_stopped": fairseq_logs.early_stopped(text), "trained_at": [s["commit"] for s in started],
               "curve": curve}
        if key(row) not in known:
            rows.append({**row, **summarize(curve, stopping["patience"], cap)})
    return rows


def settles(curve, baseline, cap):
    """How long a ``makd-compress --race`` of this curve's method against ``baseline`` (svd_ce's curve, same
    validation grid) must run to pick what training to ``cap`` would: for every race length N on both grids, the
    racer with the higher best-so-far metric at N; ``settled_at`` the first N from which that is always the racer with
    the higher best up to ``compared_at`` (``cap``, or the last update both curves reached while one is still
    training; None when even the last N disagrees). Ties go to the method."""
    def best_until(c, n):
        i = best_on_metric(c, n)
        return None if i is None else c[i][2]

    until = min(cap, curve[-1][0], baseline[-1][0])
    grid = sorted({row[0] for row in curve} & {row[0] for row in baseline if row[0] <= until})
    final = "method" if (best_until(curve, until) or 0) >= (best_until(baseline, until) or 0) else "baseline"
    picks = [[n, "method" if (best_until(curve, n) or 0) >= (best_until(baseline, n) or 0) else "baseline"]
             for n in grid]
    settled = None
    for n, pick in reversed(picks):
        if pick != final:
            break
        settled = n
    return {"cap": cap, "compared_at": until, "better": final, "picks": picks, "settled_at": settled}


def fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def share(row, value):
    """``value`` as a share of the row's teacher on validation ('' when the report has no teacher for its task)."""
    teacher = row.get("teacher_metric")
    return "" if value is None or not teacher else f" = {value / teacher:.1%}"


def table(rows):
    capped = rows and "best_metric_at_cap" in rows[0]
    lines = ["| task | method | budget | seed | device | cap / every / patience | updates | lowest nll (at) | "
             "metric there | best metric (at) | stopped on nll: at, metric |"
             + (f" best metric up to {rows[0]['best_metric_at_cap']['cap']} (at) |" if capped else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if capped else "")]
    for r in rows:
        s, n, b, o = r["stopping"], r["best_nll"], r["best_metric"], r["stopped_on_nll"]
        c = r.get("best_metric_at_cap") or {}
        lines.append(
            f"| {r['task']} | {r['method']} | {r['budget']:.0%} | {r['seed']} | {r['device']} | {s['max_update']} / "
            f"{s['validate_interval_updates']} / {s['patience']} | {r['updates']}"
            f"{' (in progress)' if r.get('in_progress') else ' (interrupted)' if r.get('interrupted') else ''} | "
            f"{n['nll']:.3f} ({n['updates']}) | "
            f"{fmt(n['metric'])} | {fmt(b and b['metric'])}{share(r, b and b['metric'])} ({b and b['updates']}) | "
            f"{o['stopped_at']}, "
            f"{fmt(o['metric'])} |" + (f" {fmt(c.get('metric'))} ({c.get('updates')}) |" if capped else ""))
    return "\n".join(lines)


def plot(rows, path):
    plt = pyplot()
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(2, len(tasks), figsize=(6.5 * len(tasks), 8), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for j, task in enumerate(tasks):
        for i, r in enumerate(r for r in rows if r["task"] == task):
            label = (f"{r['method']} {r['budget']:.0%} s{r['seed']} (cap {r['stopping']['max_update']}"
                     f"{', ' + r['device'] if r['device'] != 'cpu' else ''})")
            updates = [c[0] for c in r["curve"]]
            style = {"color": colors[i % len(colors)], "ls": "--" if r["device"] != "cpu" else "-"}
            line, = axes[0][j].plot(updates, [c[2] for c in r["curve"]], label=label, **style)
            axes[1][j].plot(updates, [c[1] for c in r["curve"]], **style)
            axes[0][j].axvline(r["stopped_on_nll"]["stopped_at"], color=line.get_color(), ls=":", lw=0.8)
        axes[0][j].set(title=f"{task}: validation metric", ylabel="metric")
        axes[1][j].set(xlabel="updates", ylabel="validation nll (bits)")
        axes[0][j].legend(fontsize=7)
    fig.suptitle("dotted lines: where nll stopping ends; dashed curves: trained on a GPU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.diagnosis", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", help="benchmarks.quality --validation-only results files")
    parser.add_argument("--in-progress", action="append", default=[], metavar="TASK=WORK",
                        help="also the students still training in this benchmarks.quality --work directory")
    parser.add_argument("--stopped", action="append", default=[], metavar="TASK=WORK",
                        help="also the students of a work directory whose trainings will not go on (e.g. copied back "
                             "from a machine since given back): the unfinished ones are marked interrupted")
    parser.add_argument("--cap", type=int, default=3000,
                        help="also each curve's best metric up to this many updates (default: the benchmark's "
                             "standard cap, where long runs compare with the standard-cap ones; 0: not reported)")
    parser.add_argument("--out", required=True, help="OUT.json, OUT.md and OUT.png are written")
    args = parser.parse_args(argv)
    missing = [p for p in args.results if not os.path.isfile(p)]
    if missing:
        parser.error(f"no such results file: {missing[0]}")
    specs = [(spec, True) for spec in args.in_progress] + [(spec, False) for spec in args.stopped]
    work = [(*spec.split("=", 1), going_on) for spec, going_on in specs if "=" in spec]
    if len(work) != len(specs) or any(not os.path.isdir(w) for _, w, _ in work):
        parser.error("--in-progress and --stopped take TASK=WORK, WORK a benchmarks.quality --work directory")
    cap = args.cap or None
    rows = collect(args.results, cap)
    for task, directory, going_on in work:  # a TASK may have several (standard-cap and long runs)
        read = in_progress(task, directory, {key(r) for r in rows if not r.get("interrupted")}, cap, going_on)
        replaced = {key(r) for r in read}
        rows = [r for r in rows if key(r) not in replaced] + read
    if not rows:
        parser.error("no student with a validation curve in these files (run benchmarks.quality --validation-only)")
    teacher_valid = teachers(args.results)
    for r in rows:  # the same teacher for every student of a task
        r["teacher_metric"] = teacher_valid.get(r["task"])
    for r in rows if cap else ():  # how long a race against svd_ce (same task, budget, device) must be: makd-compress
        base = [b for b in rows if b["method"] == "svd_ce" and (b["task"], b["budget"], b["device"]) == (
            r["task"], r["budget"], r["device"])]
        if base and r["method"] != "svd_ce":
            r["race_against_svd_ce"] = settles(r["curve"], base[0]["curve"], cap)
    write_json(args.out + ".json", {"students": rows, "teacher_valid": teacher_valid,
                                    "command": command("benchmarks.diagnosis", argv),
                                    "reported_at": git_state()})
    raced = [r for r in rows if r.get("race_against_svd_ce")]
    races = ["A race against svd_ce (`makd-compress --race N`, best validation metric so far at N): which racer "
             "it picks at each N, and from which N on it always picks what training to the cap would.", "",
             "| task | method | budget | device | better at (updates) | settled from N = | picks (N: m = method, "
             "c = svd_ce) |", "|---|---|---|---|---|---|---|"] + [
        f"| {r['task']} | {r['method']} | {r['budget']:.0%} | {r['device']} | "
        f"{r['method'] if x['better'] == 'method' else 'svd_ce'} ({x['compared_at']}) "
        f"| {x['settled_at'] if x['settled_at'] is not None else '–'} | "
        f"{' '.join(f'{n}:{p[0]}' for n, p in x['picks']).replace(':b', ':c')} |"
        for r in raced for x in [r["race_against_svd_ce"]]] if raced else []
    teacher_line = ["The teacher on validation (each best metric's share of it follows the metric): " + ", ".join(
        f"{task} {value:.2f}" for task, value in sorted(teacher_valid.items()))] if teacher_valid else []
    text = "\n\n".join([f"`{command('benchmarks.diagnosis', argv)}`", *teacher_line, table(rows), "\n".join(races),
                         ""])
    write_text(args.out + ".md", text)
    plot(rows, args.out + ".png")
    print(table(rows))


if __name__ == "__main__":
    main()
