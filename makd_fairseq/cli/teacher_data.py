"""``makd-teacher-data``: sequence-level KD data (Kim & Rush, 2016): the train targets replaced by the teacher's beam.

    makd-teacher-data --teacher T.pt --data BIN --out BIN_KD [--splits train[,valid]] [--beam 4] [--batch-size 64]
        [--max-len-a A --max-len-b B]

What is decoded and written, and how a run resumes or is reused: ``makd_fairseq.teacher_data``.
"""

import argparse
import logging
import shlex
import sys

from .. import teacher_data
from ..checkpoint import CheckpointError
from . import fail


def get_parser():
    parser = argparse.ArgumentParser(
        prog="makd-teacher-data",
        description="Sequence-level KD data: write a copy of a binarized translation data directory whose train "
                    "targets (with --splits train,valid also the valid targets) are the teacher's beam-search "
                    "outputs (sources, dictionaries and the other splits unchanged).")
    parser.add_argument("--teacher", required=True, metavar="T.pt", help="encoder-decoder teacher checkpoint")
    parser.add_argument("--data", required=True, metavar="BIN", help="fairseq-preprocess output (translation pair)")
    parser.add_argument("--out", required=True, metavar="BIN_KD", help="data directory to write")
    parser.add_argument("--splits", default="train", choices=["train", "train,valid"],
                        help="splits whose targets become the teacher's outputs: train (default) or train,valid "
                             "(students are then validated on the teacher's outputs too); test keeps its references")
    parser.add_argument("--beam", type=int, default=4, help="beam size (default: 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per decoding batch (default: 64)")
    parser.add_argument("--max-len-a", type=float, default=0.0, help="max length = a·source length + b (default: 0)")
    parser.add_argument("--max-len-b", type=int, default=200, help="(default: 200, as fairseq-generate)")
    parser.add_argument("--shard-size", type=int, default=1000,
                        help="sentences decoded between two saves under BIN_KD/.partial (default: 1000)")
    parser.add_argument("--cpu", action="store_true", help="decode on CPU even when CUDA is available")
    parser.add_argument("--force", action="store_true",
                        help="rebuild an --out that holds other files or teacher data made with other arguments")
    return parser


def main(argv=None) -> int:
    # importing fairseq lets every DEBUG record through; stderr is for the error line and the progress bar
    for name in ("fairseq", "hydra"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = get_parser().parse_args(argv)
    args.splits = args.splits.split(",")
    command = shlex.join(["makd-teacher-data", *(argv if argv is not None else sys.argv[1:])])
    try:
        plan = teacher_data.plan(args)
    except (CheckpointError, teacher_data.TeacherDataError, FileNotFoundError, OSError) as e:
        return fail("makd-teacher-data", e)
    if plan["reuse"]:
        print(f"{args.out}: already holds this teacher's outputs (beam {args.beam}) for the "
              f"{' and '.join(args.splits)} split{'s' * (len(args.splits) > 1)} of {args.data}: reused", flush=True)
        return 0
    hyps, seconds = teacher_data.make(args, plan, command)
    counts = " and ".join(f"{len(h)} {split}" for split, h in hyps.items())
    print(f"wrote {args.out}: {counts} targets decoded by {args.teacher} (beam {args.beam}) in {seconds:.0f} s; "
          f"sources, dictionaries and the other splits copied from {args.data}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
