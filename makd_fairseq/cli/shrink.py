"""``makd-shrink``: a dense student with fewer layers at a parameter budget (the shrink-and-fine-tune baseline).

    makd-shrink --teacher T.pt --param-budget 0.5 --out S.pt

The student is built by ``makd_fairseq.shrink.make_dense_student``; see there.
"""

import argparse
import sys

from tabulate import tabulate

from ..aspects import STACKS
from ..checkpoint import CheckpointError, load_checkpoint
from ..lowrank import RankError
from ..shrink import make_dense_student
from . import add_student_paths, check_student_out, fail, save_student


def get_parser():
    parser = argparse.ArgumentParser(
        prog="makd-shrink", description="Write a dense student with fewer (copied) teacher layers and, if needed, "
                                        "narrower FFNs at a parameter budget: the shrink-and-fine-tune baseline.")
    add_student_paths(parser)
    parser.add_argument("--param-budget", required=True, type=float, metavar="F",
                        help="student parameters as a fraction of the teacher's (embeddings included)")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        check_student_out(args)
        student, p = make_dense_student(load_checkpoint(args.teacher), args.param_budget)
    except (CheckpointError, RankError, FileExistsError, RuntimeError, ValueError) as e:
        return fail("makd-shrink", e)
    print(tabulate([[s, p["teacher_layers"][s], ",".join(map(str, p["keep"][s])), p["teacher_ffn"][s], p["ffn"][s]]
                    for s in STACKS], headers=["stack", "teacher layers", "kept layers", "teacher FFN", "FFN"]))
    print(f"teacher params: {p['teacher_params']}")
    print(f"student params: {p['params']}")
    print(f"ratio: {p['params'] / p['teacher_params']:.4f}")
    save_student(student, args, ["--criterion", "makd", "--matrix-weight", "0", "--layer-weight", "0"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
