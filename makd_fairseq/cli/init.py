"""``makd-init``: a low-rank student checkpoint from a trained fairseq Transformer teacher.

    makd-init --teacher T.pt --param-budget 0.5 --out S.pt [--init whiten --data BIN] [--allocation spectrum]

The student is built by ``makd_fairseq.student_init.make_student``; see there.
"""

import argparse
import sys

from ..checkpoint import CheckpointError, load_checkpoint
from ..lowrank import RankError
from ..models.lowrank_transformer import add_rank_args
from ..student_init import INITS, SPECTRUM_WARNING, check_student_args, make_student, ranks_table
from . import add_student_paths, check_student_out, fail, save_student


def get_parser():
    parser = argparse.ArgumentParser(
        prog="makd-init", description="Write a low-rank student checkpoint initialised by truncated SVD "
                                      "of a trained fairseq Transformer teacher.")
    add_student_paths(parser)
    add_rank_args(parser)
    parser.add_argument("--init", choices=INITS, default="svd",
                        help="svd: truncated SVD of each weight; whiten: data-aware factors that minimise the error of "
                             "each matrix's output on --data's train inputs (SVD-LLM's truncation-aware whitening)")
    parser.add_argument("--data", metavar="BIN",
                        help="the teacher's binarized data (fairseq-preprocess output): calibration inputs for "
                             "--init whiten, and each matrix's output error on its valid split in the table")
    parser.add_argument("--calibration-tokens", type=int, default=32768, metavar="N",
                        help="target tokens of train (and of valid, for the table) run through the teacher")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        check_student_out(args)
        check_student_args(args.rank, args.rank_ratio, args.param_budget, args.init, args.data,
                           args.calibration_tokens)  # before the teacher loads: bad flags answer at once
        state = load_checkpoint(args.teacher)
        if args.allocation == "spectrum" and args.param_budget is not None:
            print(f"makd-init: {SPECTRUM_WARNING}", file=sys.stderr)
        student, rows, totals = make_student(
            state, args.teacher, rank=args.rank, rank_ratio=args.rank_ratio, param_budget=args.param_budget,
            allocation=args.allocation, targets=args.lowrank_targets, init=args.init, data=args.data,
            calibration_tokens=args.calibration_tokens)
    except (CheckpointError, RankError, FileExistsError, FileNotFoundError, RuntimeError, ValueError) as e:
        return fail("makd-init", e)
    print(ranks_table(rows, totals), end="")
    save_student(student, args, ["--criterion", "makd"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
