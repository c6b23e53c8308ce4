#!/usr/bin/env python3
"""Train a benchmark teacher with fairseq-train (label-smoothed cross-entropy) on a binarized data dir.

    python3 benchmarks/train_teacher.py --data /tmp/debian/summarization/bin --size cpu --save-dir DIR

Extra fairseq-train flags after ``--`` override the size's (``-- --max-update 200``). Prints the checkpoint path.
"""
import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sizes import TEACHER_ARCH, TEACHER_TRAIN, common_flags, teacher_criterion  # noqa: E402


USER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "makd_fairseq")


def teacher_command(data, size, save_dir, extra=()):
    # the plugin's checkpoint allow-list lets an interrupted teacher resume from its checkpoint_last.pt (torch >= 2.6)
    return ["fairseq-train", data, "--user-dir", USER_DIR, *TEACHER_ARCH[size], *common_flags(size), *TEACHER_TRAIN[size],
            *teacher_criterion(size), "--save-dir", save_dir, *extra]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
