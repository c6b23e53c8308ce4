"""``makd-init``: a low-rank student checkpoint from a trained fairseq Transformer teacher.

    makd-init --teacher T.pt --param-budget 0.5 --out S.pt [--init whiten --data BIN] [--allocation spectrum]

The student keeps the teacher's config (task, dictionaries, dimensions), switches the arch to
its ``lowrank_*`` counterpart and stores the ranks, so ``fairseq-train --finetune-from-model S.pt``
and ``fairseq-generate --path S.pt`` rebuild it without further flags.
"""

import argparse
import copy
import os
import sys

from tabulate import tabulate
from torch import nn

from .calibration import calibrate, distillation_task
from .checkpoint import CheckpointError, build_model_from_state, load_checkpoint, model_args, save_atomic
from .lowrank import (
    RankError,
    allocate_ranks,
    count_params,
    dumps_ranks,
    factorize_,
    find_targets,
    relative_error,
    shared_uses,
    svd_matrices,
)
from .models.lowrank_transformer import add_rank_args
from .student import distill_command, student_arch, student_checkpoint, task_of


INITS = ("svd", "whiten")
# measured (benchmarks/results/sweep.json, the fixtures' test): spectrum allocation gives students a worse validation
# nll than uniform, with plain and with whitened spectra alike; it stays available, with this warning
SPECTRUM_WARNING = ("makd-init: warning: --allocation spectrum has given students a worse validation nll than "
                    "uniform in every measurement so far (README: makd-init); prefer uniform")


def make_student(state: dict, args: argparse.Namespace):
    """Factorize the teacher in ``state``; returns (student checkpoint state, table rows, totals).

    With ``args.data``, the teacher also runs over that data: ``--init whiten`` fits its factors to the inputs of
    ``args.calibration_tokens`` train tokens, and the table adds each matrix's output error on the valid split."""
    margs = model_args(state)
    task = None
    if args.data:
        task = distillation_task(args.teacher, state, args.data, task_of(margs.arch))
        model = copy.deepcopy(task.teacher)  # checked against the data's dictionaries
    else:
        model = build_model_from_state(state)
    targets = find_targets(model, args.lowrank_targets.split(","))
    if not targets:
        raise RankError(
            f"arch {margs.arch!r} has no Linear layer matching --targets {args.lowrank_targets}"
        )
    names = [name for name, module in targets.items() if isinstance(module, nn.Linear)]  # embeddings: no inputs
    grams, valid_grams, calibration_tokens = None, None, 0
    if args.init == "whiten":
        grams, calibration_tokens = calibrate(model, task, "train", args.calibration_tokens, names)
    if task is not None:
        valid_grams, _ = calibrate(model, task, "valid", args.calibration_tokens, names)
    matrices, facts = svd_matrices(targets, with_spectrum=True, grams=grams)
    teacher_params = count_params(model)
    ranks = allocate_ranks(
        matrices, teacher_params, rank=args.rank, rank_ratio=args.rank_ratio,
        param_budget=args.param_budget, allocation=args.allocation,
    )
    weights = {name: lin.weight.detach().clone() for name, lin in targets.items()}
    tied = {name: shared_uses(model, name) for name in targets}
    factorize_(model, ranks, facts)
    modules = dict(model.named_modules())
    rows = []
    for m in matrices:
        approx = modules[m.name].merged_weight()
        rows.append([m.name + "".join(f" = {n}" for n in tied[m.name]), f"{m.d_out}x{m.d_in}", ranks[m.name], m.dense_params, m.params(ranks[m.name]),
                     f"{relative_error(weights[m.name], approx):.4f}",
                     "–" if m.name not in (valid_grams or {}) else f"{relative_error(weights[m.name], approx, valid_grams[m.name]):.4f}",
                     "dense (merged)" if m.past_break_even(ranks[m.name]) else "factored"])
    student_params = count_params(model)
    inference_params = student_params + sum(m.inference_params(ranks[m.name]) - m.params(ranks[m.name])
                                            for m in matrices)

    sargs = copy.deepcopy(margs)
    sargs.arch = sargs._name = student_arch(margs.arch)
    sargs.lowrank_ranks = dumps_ranks(ranks)
    sargs.lowrank_targets, sargs.allocation = args.lowrank_targets, args.allocation
    sargs.rank = sargs.rank_ratio = sargs.param_budget = None
    student = student_checkpoint(state, sargs, model.state_dict())
    student["makd"] = {"teacher": os.path.abspath(args.teacher), "teacher_params": teacher_params,
                       "student_params": student_params, "inference_params": inference_params,
                       "allocation": args.allocation, "init": args.init,
                       "calibration": None if args.init != "whiten" else {
                           "data": os.path.abspath(args.data), "split": "train", "tokens": calibration_tokens}}
    return student, rows, (teacher_params, student_params, inference_params)


def get_parser():
    parser = argparse.ArgumentParser(
        prog="makd-init", description="Write a low-rank student checkpoint initialised by truncated SVD "
                                      "of a trained fairseq Transformer teacher.")
    parser.add_argument("--teacher", required=True, metavar="T.pt", help="teacher checkpoint")
    parser.add_argument("--out", required=True, metavar="S.pt", help="student checkpoint to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
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
    import makd_fairseq  # noqa: F401  (safe-loading allow-list, architectures)

    args = get_parser().parse_args(argv)
    try:
        if os.path.exists(args.out) and os.path.samefile(args.out, args.teacher):
            raise FileExistsError(f"--out {args.out} is the teacher itself; choose another path")
        if os.path.exists(args.out) and not args.force:
            raise FileExistsError(f"{args.out} exists; pass --force to overwrite it")
        if sum(x is not None for x in (args.rank, args.rank_ratio, args.param_budget)) != 1:
            raise RankError("give exactly one of --rank, --rank-ratio, --param-budget")
        if args.init == "whiten" and not args.data:
            raise ValueError("--init whiten needs --data BIN: the teacher's inputs on its train split")
        if args.data and not os.path.isdir(args.data):
            raise FileNotFoundError(f"--data {args.data}: no such directory (binarize with fairseq-preprocess)")
        if args.calibration_tokens < 1:
            raise ValueError(f"--calibration-tokens must be >= 1, got {args.calibration_tokens}")
        state = load_checkpoint(args.teacher)
        if args.allocation == "spectrum" and args.param_budget is not None:
            print(SPECTRUM_WARNING, file=sys.stderr)
        student, rows, (teacher_params, student_params, inference_params) = make_student(state, args)
    except (CheckpointError, RankError, FileExistsError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"makd-init: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2

    print(tabulate(rows, headers=["matrix", "shape", "rank", "params before", "params after",
                                  "residual ‖W−W_r‖/‖W‖", "output error ‖(W−W_r)X‖/‖WX‖ (valid)", "at inference"],
                   disable_numparse=True))
    print(f"teacher params: {teacher_params}")
    print(f"student params: {student_params}")
    print(f"ratio: {student_params / teacher_params:.4f}")
    if inference_params != student_params:
        print(f"student params at inference: {inference_params} (ratio {inference_params / teacher_params:.4f}): "
              "factors at or past break-even r >= d_in*d_out/(d_in+d_out) are merged back to dense by "
              "fairseq-generate")
    save_atomic(student, args.out)
    print(f"wrote {args.out}")
    print("distill it with:\n  " + " ".join(distill_command("DATA", args.teacher, args.out, ["--criterion", "makd"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
