"""The command-line tools: thin argparse layers over the library modules (entry points in setup.py).

    makd-init          cli/init.py           -> student_init.make_student
    makd-shrink        cli/shrink.py         -> shrink.make_dense_student
    makd-teacher-data  cli/teacher_data.py   -> teacher_data.plan / make
    makd-score         cli/score.py          -> score.read_generation / score
    makd-compress      cli/compress.py       -> compress (stages), student_init, student.distill_command

Each answers bad input with one line, ``<prog>: error: ...``, and exit status 2. Importing any of them imports the
package, which registers its fairseq models, tasks and criterion and allow-lists checkpoint types.
"""


def add_student_paths(parser) -> None:
    """--teacher, --out and --force: how makd-init and makd-shrink name their input and output checkpoints."""
    parser.add_argument("--teacher", required=True, metavar="T.pt", help="teacher checkpoint")
    parser.add_argument("--out", required=True, metavar="S.pt", help="student checkpoint to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")


def check_student_out(args) -> None:
    """--out is neither the teacher nor, without --force, an existing file (``FileExistsError``)."""
    import os

    if os.path.exists(args.out) and os.path.samefile(args.out, args.teacher):
        raise FileExistsError(f"--out {args.out} is the teacher itself; choose another path")
    if os.path.exists(args.out) and not args.force:
        raise FileExistsError(f"{args.out} exists; pass --force to overwrite it")


def save_student(student: dict, args, distill_flags) -> None:
    """Write the student to --out and print the fairseq-train command that distills it."""
    from ..files import save_torch
    from ..student import distill_command

    save_torch(student, args.out)
    print(f"wrote {args.out}")
    print("distill it with:\n  " + " ".join(distill_command("DATA", args.teacher, args.out, distill_flags)))


def fail(prog: str, error: Exception) -> int:
    """Bad input: one line on stderr, exit status 2 (argparse's convention)."""
    import sys

    print(f"{prog}: error: {str(error).splitlines()[0]}", file=sys.stderr)
    return 2
