#!/usr/bin/env python3
"""Choose the distillation defaults on validation data: a sweep of makd and word-level KD with the same budget.

    python3 -m benchmarks.sweep --task translation --data /tmp/debian1k/translation/bin \\
        --teacher /tmp/qb/translation/teacher/checkpoint_best.pt --work /tmp/sweep/translation --jobs 2

1. Students at ``--budget`` of the teacher's parameters with ``makd-init`` for every ``INITS`` entry (truncated SVD
   or whitened factors, uniform or spectrum allocation); each is scored untrained on the valid split
   (``fairseq-validate``, nll in bits) — the init comparison.
2. Every configuration in ``SWEEP`` trains from the whitened uniform student with the benchmark's student flags
   and ``--max-update`` (the same updates, seed and data for all); its best validation nll (bits) is its score.
   Each family (``makd``, ``word_kd``) has the same number of configurations: the same tuning budget.
3. Only then, the test split: the teacher, the best configuration of each family and the untrained students are
   decoded with ``fairseq-generate`` and scored (ROUGE / sacreBLEU) — test numbers never choose anything.

Results (every configuration, its flags, validation nll, updates, seed, the commit each training ran at and whether
the tree was dirty) are merged into ``--out`` under the task's name, so the two tasks can run side by side.
Finished steps in WORK are reused: an interrupted sweep resumes.
"""
import argparse
import fcntl
import json
import os
import time

from makd_fairseq import fairseq_logs
from makd_fairseq.files import git_state, write_json, write_text

from . import RESULTS
from .commands import flag_value, generate_command, train_command, validate_command
from .provenance import command, hardware
from .report import sweep_tables
from .runner import Run
from .scoring import read_generation, score
from .sizes import STUDENT_TRAIN, common_flags
from .stages import finished

# makd-init variants compared untrained (name -> flags); the sweep trains from "whiten"
INITS = {
    "svd": ["--init", "svd"],
    "svd_spectrum": ["--init", "svd", "--allocation", "spectrum"],
    "whiten": ["--init", "whiten"],
    "whiten_spectrum": ["--init", "whiten", "--allocation", "spectrum"],
}
TRAIN_INIT = "whiten"

# six configurations per family, the same budget. Round 1: word_kd temperature x KD weight; makd with scale-free
# terms (--feature-norm teacher), temperature x aspect weight, the paper's hierarchy (matrix aspect on shallow
# layers, layer aspect on deep ones) kept; and makd as it was before this sweep (raw MSE terms, unit weights), a point
# of the same space (--feature-norm none). Round 2, chosen from round 1's validation nll only: the larger KD weight
# was better for word-level KD on both tasks, so word_kd gets KD weight 4 at both temperatures and makd KD weight 2.
_NORM = ["--feature-norm", "teacher"]


def _word_kd(t, w):  # the makd criterion with the model aspect only (spelled out: METHODS holds the diagnosis's choice)
    return ["--criterion", "makd", "--matrix-weight", "0", "--layer-weight", "0", "--kd-temperature", str(t),
            "--model-weight", str(w)]


def _makd(t, a, w=1, norm=_NORM):
    return ["--criterion", "makd", *norm, "--kd-temperature", str(t), "--model-weight", str(w),
            "--matrix-weight", str(a), "--layer-weight", str(a)]


SWEEP = {
    "word_kd": {**{f"word_kd_T{t}_w{w}": _word_kd(t, w) for t in (1, 2) for w in (1, 2)},
                "word_kd_T2_w4": _word_kd(2, 4), "word_kd_T1_w4": _word_kd(1, 4)},
    "makd": {**{f"makd_T{t}_a{a}": _makd(t, a) for t in (1, 2) for a in (0.3, 1)},
             "makd_raw_T1_a1": _makd(1, 1, norm=["--feature-norm", "none"]),
             "makd_T2_a0.3_w2": _makd(2, 0.3, 2)},
}


def defaults_across_tasks(result):
    """Per family, the configuration with the smallest mean regret (nll minus the task's best in that family) over
    the tasks whose family is complete: one setting of the defaults serves every task."""
    chosen = {}
    for family, table in SWEEP.items():
        tasks = [r for r in result.values() if all(name in r["configs"] and r["configs"][name]["valid_nll"] is not None
                                                   for name in table)]
        if not tasks:
            continue
        regret = {name: sum(r["configs"][name]["valid_nll"] - min(r["configs"][n]["valid_nll"] for n in table)
                            for r in tasks) / len(tasks) for name in table}
        best = min(regret, key=regret.get)
        chosen[family] = {"config": best, "mean_regret_bits": round(regret[best], 4),
                          "tasks": sorted(r["task"] for r in tasks), "flags": table[best],
                          "mean_regret_bits_of_every_config": {n: round(v, 4) for n, v in sorted(regret.items())}}
    return chosen


def read_valid_nll(log):
    try:
        return fairseq_logs.validate_nll(fairseq_logs.read(log), log)
    except fairseq_logs.LogError as e:
        raise SystemExit(f"benchmarks.sweep: {e}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=("summarization", "translation"))
    parser.add_argument("--data", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--size", default="cpu", choices=sorted(STUDENT_TRAIN))
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--max-update", type=int, default=300, help="updates of every configuration")
    parser.add_argument("--calibration-tokens", type=int, default=32768)
    parser.add_argument("--configs", nargs="+", help="train only these configurations (default: all)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--remove-bpe", default="sentencepiece")
    parser.add_argument("--generate-args", default="")
    parser.add_argument("--no-test", action="store_true", help="stop after choosing on validation")
    parser.add_argument("--out", default=os.path.join(RESULTS, "sweep.json"))
    args = parser.parse_args(argv)
    for path, what in ((args.data, "directory"), (args.teacher, "file")):
        if not (os.path.isdir if what == "directory" else os.path.isfile)(path):
            parser.error(f"{path}: no such {what}")
    started = time.time()
    os.makedirs(args.work, exist_ok=True)
    run = Run(args)

    def pool(stages):
        run.pool(run.stage, stages)

    # 1. students, each scored untrained on valid
    inits = {name: run.path("init", f"{name}.pt") for name in INITS}
    pool([(f"init/{name}", ["makd-init", "--teacher", args.teacher, "--param-budget", str(args.budget),
                            "--data", args.data, "--calibration-tokens", str(args.calibration_tokens),
                            *flags, "--out", inits[name]], run.path("init", f"{name}.log"),
           lambda p=inits[name]: os.path.isfile(p)) for name, flags in INITS.items()])
    pool([(f"validate/{name}", validate_command(args, inits[name]), run.path("init", f"{name}.valid.log"),
           lambda p=run.path("init", f"{name}.valid.log"): os.path.isfile(p) and "nll_loss" in open(p).read())
          for name in INITS])
    init_results = {name: {"flags": INITS[name], "valid_nll": read_valid_nll(run.path("init", f"{name}.valid.log"))}
                    for name in INITS}

    # 2. the sweep, on validation only
    configs = {name: (family, flags) for family, table in SWEEP.items() for name, flags in table.items()}
    chosen = args.configs or list(configs)
    unknown = set(chosen) - set(configs)
    if unknown:
        parser.error(f"unknown --configs {sorted(unknown)}; known: {sorted(configs)}")
    fixed = ["--max-update", str(args.max_update), "--patience", "-1"]
    jobs = []
    for name in chosen:
        save = run.path("train", name)
        log = os.path.join(save, "train.log")
        cmd = train_command(args, args.teacher, inits[TRAIN_INIT], configs[name][1] + fixed, save)
        if not finished(log):  # the commit each training runs at, recorded when it starts
            write_json(os.path.join(save, "provenance.json"), {**git_state(), "command": cmd})
        jobs.append((f"train/{name}", cmd, log, lambda p=log: finished(p)))
    pool(jobs)
    trained = {}
    for name in chosen:
        save = run.path("train", name)
        prov = json.load(open(os.path.join(save, "provenance.json")))
        log = fairseq_logs.read(os.path.join(save, "train.log"))
        trained[name] = {"family": configs[name][0], "flags": configs[name][1],
                         "valid_nll": fairseq_logs.best_valid_nll(log), "updates": fairseq_logs.last_updates(log),
                         "seed": int(flag_value(prov["command"], "--seed")), "commit": prov["commit"],
                         "dirty": prov["dirty"], "command": " ".join(prov["command"])}
    best = {}
    for family in SWEEP:
        scored = [(c["valid_nll"], name) for name, c in trained.items() if c["family"] == family]
        if len(scored) == len(SWEEP[family]):  # choose only from a complete family
            best[family] = min(scored)[1]

    # 3. the test split, after choosing
    tests = {}
    if not args.no_test:
        models = {"teacher": args.teacher, **{f"untrained_{name}": inits[name] for name in ("svd", "whiten")}}
        models.update({name: run.path("train", name, "checkpoint_best.pt") for name in best.values()})
        # and the configurations chosen as defaults across the tasks swept so far (this one's results included)
        merged = json.load(open(args.out)) if os.path.isfile(args.out) else {}
        merged.pop("defaults", None)
        merged[args.task] = {"task": args.task, "configs": trained}
        for d in defaults_across_tasks(merged).values():
            models[d["config"]] = run.path("train", d["config"], "checkpoint_best.pt")
        logs = {name: run.path("generate", f"{name}.txt") for name in models}
        pool([(f"generate/{name}", generate_command(args, models[name]), logs[name],
               lambda p=logs[name]: os.path.isfile(p) and "Generate test with beam" in open(p).read())
              for name in models])
        for name in models:
            tests[name], signatures = score(args.task, *read_generation(logs[name]))
            tests[name]["signature"] = signatures

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".lock", "w") as lock:  # the tasks' sweeps run side by side and share --out
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = json.load(open(args.out)) if os.path.isfile(args.out) else {}
        result.pop("defaults", None)
        result[args.task] = task_result(args, run, init_results, trained, best, tests, fixed, argv, started)
        result["defaults"] = defaults_across_tasks({k: v for k, v in result.items() if k != "defaults"})
        write_json(args.out, result)
    if os.path.exists(args.out + ".lock"):
        os.remove(args.out + ".lock")
    write_text(os.path.splitext(args.out)[0] + ".md", sweep_tables(result))
    print(json.dumps({k: result[args.task][k] for k in ("inits_untrained_valid_nll", "best_on_valid", "test")},
                     indent=1))
    for name, c in sorted(trained.items(), key=lambda kv: kv[1]["valid_nll"] or 1e9):
        print(f"{name:24s} {c['family']:10s} valid nll {c['valid_nll']}")


def task_result(args, run, init_results, trained, best, tests, fixed, argv, started):
    return {
        "task": args.task, "budget": args.budget, "max_update": args.max_update, "train_init": TRAIN_INIT,
        "student_training": " ".join(common_flags(args.size) + STUDENT_TRAIN[args.size] + fixed),
        "inits_untrained_valid_nll": init_results, "configs": trained, "best_on_valid": best, "test": tests,
        "command": command("benchmarks.sweep", argv), "scored_at": git_state(), "hardware": hardware(
            f"{args.jobs} job(s) of {args.threads} thread(s)"), "stage_seconds": run.stages,
        "wall_s": round(time.time() - started, 1),
    }


if __name__ == "__main__":
    main()
