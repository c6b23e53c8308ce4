"""Checkpoint averaging, measured on validation: issue 34's first untried lever for summarization's 95% goal.

  python3 -m benchmarks.averaging replay STUDENT_DIR WORK    # the student's training again, every interval
                                                              # checkpoint kept (WORK/replay)
  python3 -m benchmarks.averaging score WORK --task summarization --data BIN --original STUDENT_DIR \
      --out benchmarks/results/averaging

A rerun student trained before 15387be kept only its best and last checkpoints (``--keep-interval-updates 1``;
those since keep their last ``benchmarks.commands.keep_interval(patience)``, every window scored here). ``replay``
trains it again from its recorded command (one start only: a training resumed midway is not replayed) with every
interval checkpoint kept; on the CPU the same command at the same thread count repeats the same updates, and ``score`` checks
that (the replay's validation curve against the original's, value for value) before it pairs anything with the
original's test score.

``score`` averages the parameters of the last k interval checkpoints at the stop (fairseq's
``scripts/average_checkpoints.py --num-update-checkpoints k``), k = 1..--max-k, and of the k ending at the best
validation, and decodes the valid split with each (the validation's own generation flags); k is chosen on valid
only, and the chosen average and the best checkpoint are then decoded on test.
"""
import argparse
import os
import sys

from makd_fairseq.files import git_state, write_json

from .commands import AVERAGED_AT_MOST
from .provenance import command
from .runner import Run, read_json
from .stages import finished, has


def replay_command(student_dir, out_dir):
    """The student's one recorded fairseq-train command with ``--save-dir out_dir`` and every interval checkpoint
    kept; SystemExit when it was started more than once or its record is missing."""
    prov = os.path.join(student_dir, "train.log.provenance.json")
    starts = read_json(prov, None)
    if not starts:
        raise SystemExit(f"benchmarks.averaging: {prov}: no such provenance record")
    if len(starts) != 1:
        raise SystemExit(f"benchmarks.averaging: {student_dir} was started {len(starts)} times: a resumed training "
                         "is not replayed update for update; choose a student trained in one start")
    cmd = list(starts[0]["command"])
    i = cmd.index("--save-dir")
    cmd[i + 1] = out_dir
    return cmd + ["--keep-interval-updates", "-1"]  # later flags win: every interval checkpoint stays


def replay(args):
    out = os.path.join(args.work, "replay")
    cmd = replay_command(args.student, out)
    run = Run(argparse.Namespace(work=args.work, threads=args.threads, jobs=1))
    log = os.path.join(out, "train.log")
    run.stage("replay", cmd, log, lambda: finished(log), resumes=True)
    write_json(os.path.join(args.work, "replay.json"), {"original": os.path.abspath(args.student), "command": cmd,
                                                       "by": command("benchmarks.averaging")})


def interval_checkpoints(save_dir):
    """{updates: path} of fairseq's interval checkpoints (checkpoint_EPOCH_UPDATES.pt) in ``save_dir``."""
    found = {}
    for name in os.listdir(save_dir):
        parts = name[:-3].split("_") if name.endswith(".pt") else []
        if len(parts) == 3 and parts[0] == "checkpoint" and parts[1].isdigit() and parts[2].isdigit():
            found[int(parts[2])] = os.path.join(save_dir, name)
    return dict(sorted(found.items()))


def average(paths, out):
    """fairseq's ``average_checkpoints``: the mean of every parameter of ``paths``' models, the newest checkpoint's
    everything else (its optimizer state dropped: the average is for decoding), written to ``out``."""
    import torch

    from makd_fairseq.checkpoint import load_checkpoint

    states = [load_checkpoint(p) for p in paths]
    newest = states[-1]
    model = {}
    for key, value in newest["model"].items():
        if value.is_floating_point():
            model[key] = sum(s["model"][key].double() for s in states).div(len(states)).to(value.dtype)
        else:
            model[key] = value
    newest = {**newest, "model": model, "last_optimizer_state": None}
    torch.save(newest, out + ".tmp")
    os.replace(out + ".tmp", out)


def best_validation(curve):
    """The updates of fairseq's best validation (the last of equal maxima); ``curve``: [updates, value] rows."""
    return max(curve, key=lambda row: (row[1], row[0]))[0]


def candidates(curve, kept, max_k):
    """{name: updates averaged}: the last k checkpoints at the stop and the k ending at the best validation (fairseq's
    best: the last of equal maxima), k = 1..max_k, each only where ``kept`` (sorted updates) has all k;
    ``curve``: [updates, value] rows of the validations."""
    best = best_validation(curve)
    updates = list(kept)
    out = {}
    for k in range(1, max_k + 1):
        for name, window in ((f"best{k}", [u for u in updates if u <= best][-k:]), (f"last{k}", updates[-k:])):
            if len(window) == k and window not in out.values():  # the same checkpoints are decoded once
                out[name] = window
    return out, best


def score_verb(args):
    from makd_fairseq.fairseq_logs import read, valid_curve
    from makd_fairseq.score import seeds_and_items_bootstrap

    from .commands import VALID_METRIC, generate_command
    from .scoring import read_generation, score

    metric = VALID_METRIC[args.task]
    # the replay's checkpoints, or (--in-place) the student's own: a training that kept its last ones
    save_dir = args.original if args.in_place else os.path.join(args.work, "replay")
    replayed = valid_curve(read(os.path.join(save_dir, "train.log")), (metric,))
    original = valid_curve(read(os.path.join(args.original, "train.log")), (metric,))
    if not replayed or (args.in_place and not finished(os.path.join(save_dir, "train.log"))):
        raise SystemExit(f"benchmarks.averaging: {save_dir}/train.log: not a finished training"
                         + ("" if args.in_place else " (run replay first)"))
    identical = None if args.in_place else replayed == original
    kept = interval_checkpoints(save_dir)
    best = best_validation(replayed)
    if best not in kept:  # deleted (--keep-interval-updates), or at an epoch's end (no interval checkpoint there)
        if not args.in_place:
            raise SystemExit(f"benchmarks.averaging: {save_dir} has no interval checkpoint of its best validation "
                             f"({best} updates)")
        kept = dict(sorted({**kept, best: os.path.join(save_dir, "checkpoint_best.pt")}.items()))
    named, _ = candidates(replayed, kept, args.max_k)
    gen_args = argparse.Namespace(task=args.task, size="cpu", data=args.data, batch_size=64, generate_args="",
                                  remove_bpe=args.remove_bpe, device="cpu")
    run = Run(argparse.Namespace(work=args.work, threads=args.threads, jobs=1))
    os.makedirs(os.path.join(args.work, "avg"), exist_ok=True)

    def decoded(name, updates, subset):
        ckpt = kept[updates[0]] if len(updates) == 1 else os.path.join(args.work, "avg", f"{name}.pt")
        if not os.path.isfile(ckpt):
            average([kept[u] for u in updates], ckpt)
        log = os.path.join(args.work, "generate", f"{name}.{subset}.log")
        run.stage(f"generate {name} {subset}", generate_command(gen_args, ckpt, subset), log,
                  lambda: has(log, f"Generate {subset} with beam"))
        return read_generation(log)

    valid = {}
    for name, updates in named.items():
        hyps, refs = decoded(name, updates, "valid")
        valid[name] = {"updates": updates, metric: score(args.task, hyps, refs)[0][metric]}
    # chosen on valid only: the highest score, ties to fewer checkpoints, then to the best-ending window
    chosen = max(valid, key=lambda n: (valid[n][metric], -len(valid[n]["updates"]), n.startswith("best")))
    test = {}
    for name in dict.fromkeys(["best1", chosen]):
        hyps, refs = decoded(name, named[name], "test")
        test[name] = {"scores": score(args.task, hyps, refs)[0], "hypotheses": hyps}
    difference = seeds_and_items_bootstrap(metric, [test[chosen]["hypotheses"]], [test["best1"]["hypotheses"]], refs)
    results = {
        "task": args.task, "metric": metric, "original": os.path.abspath(args.original),
        "replay_identical": identical, "replay_curve": replayed, "original_curve": original,
        "best_updates": best, "kept_updates": list(kept), "valid": valid, "chosen_on_valid": chosen,
        "test": {n: t["scores"] for n, t in test.items()},
        "test_chosen_minus_best": difference,
        "trained_at": [{k: v for k, v in start.items() if k != "command"}
                       for start in read_json(os.path.join(save_dir, "train.log.provenance.json"), [])],
        "scored_at": git_state(),
        "in_place": args.in_place,
        "note": "k chosen on the valid split only; test decoded for the best checkpoint (best1: the rerun's student "
                "when replay_identical or in_place) and the chosen average; interval: paired bootstrap over test items "
                "(one student, one seed, one teacher)",
        "by": command("benchmarks.averaging"),
    }
    write_json(args.out + ".json", results)
    with open(args.out + ".md", "w") as f:
        f.write(report(results))
    print(report(results))


def report(r):
    m = r["metric"]
    lines = [f"# Checkpoint averaging on {r['task']} ({m}), measured on validation", "",
             (f"Student: `{r['original']}`, averaged from the checkpoints it kept. Best validation at "
              if r.get("in_place") else
              f"Student: `{r['original']}`, replayed with every interval checkpoint kept; replay's validation curve "
              f"identical to the original's: **{'yes' if r['replay_identical'] else 'no'}**. Best validation at ")
             + f"{r['best_updates']:,} updates, stop at {r['kept_updates'][-1]:,}. "
             + ("Trained at " if r.get("in_place") else "Replay trained at ")
             + ", ".join(f"{t['commit'][:7]}{' (dirty)' if t['dirty'] else ''}" for t in r["trained_at"]) + ".", "",
             f"| average | updates | valid {m} |", "|---|---|---|"]
    for name, v in r["valid"].items():
        mark = " (chosen)" if name == r["chosen_on_valid"] else ""
        lines.append(f"| {name}{mark} | {', '.join(f'{u:,}' for u in v['updates'])} | {v[m]:.2f} |")
    d = r["test_chosen_minus_best"]
    lines += ["", f"Test {m}: " + ", ".join(f"{n} {t[m]:.2f}" for n, t in r["test"].items())
              + f"; chosen minus best {d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] ({r['note']}).", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.averaging", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("replay", help="train a finished student again with every interval checkpoint kept")
    p.add_argument("student", help="the student's save dir (its train.log.provenance.json: one start)")
    p.add_argument("work", help="WORK: the replay trains in WORK/replay")
    p.add_argument("--threads", type=int, default=1, help="OMP threads (the original's: the rerun trains with 1)")
    p = sub.add_parser("score", help="the averages of the replay's checkpoints on valid; the chosen one on test")
    p.add_argument("work", help="WORK of a finished replay (with --in-place: where the averages and decodes go)")
    p.add_argument("--task", required=True, choices=("summarization", "translation"))
    p.add_argument("--data", required=True, help="the binarized data the student trained on")
    p.add_argument("--original", required=True, help="the replayed student's save dir (its validation curve)")
    p.add_argument("--in-place", action="store_true",
                   help="average the student's own interval checkpoints (a training that kept its last ones, "
                        "benchmarks.commands.keep_interval) instead of a replay's; its checkpoint_best.pt stands for "
                        "its best validation when that interval checkpoint is gone")
    p.add_argument("--max-k", type=int, default=AVERAGED_AT_MOST,
                   help="average up to this many checkpoints (default %(default)s)")
    p.add_argument("--remove-bpe", default="sentencepiece", help="as the benchmark's ('none' for word-level data)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    args = parser.parse_args(argv)
    {"replay": replay, "score": score_verb}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
