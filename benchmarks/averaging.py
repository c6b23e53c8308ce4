"""Checkpoint averaging, measured on validation: issue 34's first untried lever for summarization's 95% goal.

  python3 -m benchmarks.averaging replay STUDENT_DIR WORK    # the student's training again, every interval
                                                              # checkpoint kept (WORK/replay)
  python3 -m benchmarks.averaging score WORK --task summarization --data BIN --original STUDENT_DIR \
      --out benchmarks/results/averaging

A finished rerun student keeps only its best and last checkpoints (``--keep-interval-updates 1``). ``replay`` trains it
again from its recorded command (one start only: a training resumed midway is not replayed) with every interval
checkpoint kept; on the CPU the same command at the same thread count repeats the same updates, and ``score`` checks
that (the replay's validation curve against the original's, value for value) before it pairs anything with the
original's test score.

``score`` averages the parameters of the last k interval checkpoints at the stop (fairseq's
``scripts/average_checkpoints.py --num-update-checkpoints k``), k = 1..--max-k, and of the k ending at the best
validation, and decodes the valid split with each (the validation's own generation flags); k is chosen on valid
only, and the chosen average and the best checkpoint are then decoded on test.
"""
import argparse
import json
import os
import sys

from makd_fairseq.files import write_json

from .provenance import command
from .runner import read_json


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
    from .runner import Run

    out = os.path.join(args.work, "replay")
    cmd = replay_command(args.student, out)
    run = Run(argparse.Namespace(work=args.work, threads=args.threads, jobs=1))
    log = os.path.join(out, "train.log")
    run.stage("replay", cmd, log, lambda: os.path.isfile(log) and "done training" in open(log).read(), resumes=True)
    write_json(os.path.join(args.work, "replay.json"), {"original": os.path.abspath(args.student), "command": cmd,
                                                       "by": command("benchmarks.averaging")})


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.averaging", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("replay", help="train a finished student again with every interval checkpoint kept")
    p.add_argument("student", help="the student's save dir (its train.log.provenance.json: one start)")
    p.add_argument("work", help="WORK: the replay trains in WORK/replay")
    p.add_argument("--threads", type=int, default=1, help="OMP threads (the original's: the rerun trains with 1)")
    args = parser.parse_args(argv)
    {"replay": replay}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
