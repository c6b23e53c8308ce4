#!/usr/bin/env python3
"""Train a benchmark teacher with fairseq-train (label-smoothed cross-entropy) on a binarized data dir.

    python3 -m benchmarks.train_teacher --data /tmp/debian/summarization/bin --size cpu --save-dir DIR

Extra fairseq-train flags after ``--`` override the size's (``-- --max-update 200``). fairseq's output goes to
DIR/train.log, each start's commit and command to DIR/train.log.provenance.json. Run again, it resumes an interrupted
teacher from checkpoint_last.pt (its ``--patience`` state kept), leaves a finished one as it is, and refuses a DIR
begun with another command. Prints the checkpoint path.
"""
import argparse
import os
import subprocess

from .commands import teacher_command
from .runner import read_json, record_start
from .sizes import TEACHER_ARCH
from .stages import finished


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.train_teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="fairseq-preprocess output directory")
    parser.add_argument("--size", choices=sorted(TEACHER_ARCH), default="cpu")
    parser.add_argument("--save-dir", required=True)
    parser.add_argument("extra", nargs="*", help="more fairseq-train flags (after --)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        parser.error(f"--data {args.data} is not a directory (run examples/debian_descriptions/prepare.py)")
    best = os.path.join(args.save_dir, "checkpoint_best.pt")
    log = os.path.join(args.save_dir, "train.log")
    cmd = teacher_command(args.data, args.size, args.save_dir, args.extra)
    # a resume must go on with the very recipe it began with (fairseq would take other flags silently)
    starts = read_json(log + ".provenance.json", [])
    if starts and starts[0]["command"] != cmd:
        parser.error(f"--save-dir {args.save_dir} holds a teacher begun with another command ({log}.provenance.json): "
                     f"{' '.join(starts[0]['command'])}; give another --save-dir")
    if finished(log):
        print(f"already trained ({log}): {best}")
        return
    os.makedirs(args.save_dir, exist_ok=True)
    record_start(log, cmd)
    print(" ".join(cmd), f"\n(log: {log})", flush=True)
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"benchmarks.train_teacher: fairseq-train failed (exit {rc}); see {log}")
    print(best)


if __name__ == "__main__":
    main()
