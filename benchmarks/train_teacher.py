#!/usr/bin/env python3
"""Train a benchmark teacher with fairseq-train (label-smoothed cross-entropy) on a binarized data dir.

    python3 -m benchmarks.train_teacher --data /tmp/debian/summarization/bin --size cpu --save-dir DIR

Extra fairseq-train flags after ``--`` override the size's (``-- --max-update 200``). Prints the checkpoint path.
"""
import argparse
import os
import subprocess

from .commands import teacher_command
from .sizes import TEACHER_ARCH


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
    cmd = teacher_command(args.data, args.size, args.save_dir, args.extra)
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    print(best)


if __name__ == "__main__":
    main()
