"""A low-rank student from a trained fairseq Transformer teacher: what ``makd-init`` and ``makd-compress`` build.

    student, rows, totals = make_student(load_checkpoint("T.pt"), "T.pt", param_budget=0.5, init="whiten", data=BIN)
    print(ranks_table(rows, totals))

The student keeps the teacher's config (task, dictionaries, dimensions), switches the arch to
its ``lowrank_*`` counterpart and stores the ranks, so ``fairseq-train --finetune-from-model S.pt``
and ``fairseq-generate --path S.pt`` rebuild it without further flags.
"""

import copy
import os

from tabulate import tabulate
from torch import nn

from .calibration import calibrate, distillation_task
from .checkpoint import build_model_from_state, model_args
from .lowrank import (
    DEFAULT_TARGETS,
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
from .student import student_arch, student_checkpoint, task_of

INITS = ("svd", "whiten")
# measured (benchmarks/results/sweep.json, the fixtures' test): spectrum allocation gives students a worse validation
# nll than uniform, with plain and with whitened spectra alike; it stays available, with this warning
SPECTRUM_WARNING = ("warning: --allocation spectrum has given students a worse validation nll than "
                    "uniform in every measurement so far (docs/cli.md, makd-init; docs/benchmarks.md); prefer uniform")
TABLE_HEADERS = ["matrix", "shape", "rank", "params before", "params after", "residual ‖W−W_r‖/‖W‖",
                 "output error ‖(W−W_r)X‖/‖WX‖ (valid)", "at inference"]


def check_student_args(rank=None, rank_ratio=None, param_budget=None, init="svd", data=None,
                       calibration_tokens=32768) -> None:
    """The checks ``make_student`` runs before any work (one-line ``RankError``/``ValueError``/``FileNotFoundError``)."""
    if sum(x is not None for x in (rank, rank_ratio, param_budget)) != 1:
        raise RankError("give exactly one of --rank, --rank-ratio, --param-budget")
    if init not in INITS:
        raise ValueError(f"--init must be one of {INITS}, got {init!r}")
    if init == "whiten" and not data:
        raise ValueError("--init whiten needs --data BIN: the teacher's inputs on its train split")
    if data and not os.path.isdir(data):
        raise FileNotFoundError(f"--data {data}: no such directory (binarize with fairseq-preprocess)")
    if calibration_tokens < 1:
        raise ValueError(f"--calibration-tokens must be >= 1, got {calibration_tokens}")


def make_student(state: dict, teacher: str, rank=None, rank_ratio=None, param_budget=None, allocation="uniform",
                 targets=",".join(DEFAULT_TARGETS), init="svd", data=None, calibration_tokens=32768):
    """Factorize the teacher ``state`` (loaded from the path ``teacher``); returns (student checkpoint state, table
    rows, (teacher params, student params, student params at inference)).

    With ``data``, the teacher also runs over that data (its dictionaries checked as in training): ``init="whiten"``
    fits the factors to the inputs of ``calibration_tokens`` train tokens, and the table adds each matrix's output
    error on the valid split. Bad input raises before any work (``check_student_args``); a budget that cannot be
    met is a ``RankError``, a data dictionary other than the teacher's a ``CheckpointError``."""
    check_student_args(rank, rank_ratio, param_budget, init, data, calibration_tokens)
    margs = model_args(state)
    task = None
    if data:
        task = distillation_task(teacher, state, data, task_of(margs.arch))
        model = copy.deepcopy(task.teacher)  # checked against the data's dictionaries
    else:
        model = build_model_from_state(state)
    found = find_targets(model, targets.split(","))
    if not found:
        raise RankError(f"arch {margs.arch!r} has no Linear layer matching --targets {targets}")
    names = [name for name, module in found.items() if isinstance(module, nn.Linear)]  # embeddings: no inputs
    grams, valid_grams, used_tokens = None, {}, 0
    if init == "whiten":
        grams, used_tokens = calibrate(model, task, "train", calibration_tokens, names)
    if task is not None:
        valid_grams, _ = calibrate(model, task, "valid", calibration_tokens, names)
    matrices, facts = svd_matrices(found, with_spectrum=True, grams=grams)
    teacher_params = count_params(model)
    ranks = allocate_ranks(matrices, teacher_params, rank=rank, rank_ratio=rank_ratio, param_budget=param_budget,
                           allocation=allocation)
    weights = {name: lin.weight.detach().clone() for name, lin in found.items()}
    tied = {name: shared_uses(model, name) for name in found}
    factorize_(model, ranks, facts)
    modules = dict(model.named_modules())
    rows = []
    for m in matrices:
        approx, r = modules[m.name].merged_weight(), ranks[m.name]
        output_error = (f"{relative_error(weights[m.name], approx, valid_grams[m.name]):.4f}"
                        if m.name in valid_grams else "–")
        rows.append([m.name + "".join(f" = {n}" for n in tied[m.name]), f"{m.d_out}x{m.d_in}", r, m.dense_params,
                     m.params(r), f"{relative_error(weights[m.name], approx):.4f}", output_error,
                     "dense (merged)" if m.past_break_even(r) else "factored"])
    student_params = count_params(model)
    inference_params = student_params + sum(m.inference_params(ranks[m.name]) - m.params(ranks[m.name])
                                            for m in matrices)

    sargs = copy.deepcopy(margs)
    sargs.arch = sargs._name = student_arch(margs.arch)
    sargs.lowrank_ranks = dumps_ranks(ranks)
    sargs.lowrank_targets, sargs.allocation = targets, allocation
    sargs.rank = sargs.rank_ratio = sargs.param_budget = None
    student = student_checkpoint(state, sargs, model.state_dict())
    student["makd"] = {"teacher": os.path.abspath(teacher), "teacher_params": teacher_params,
                       "student_params": student_params, "inference_params": inference_params,
                       "allocation": allocation, "init": init,
                       "calibration": None if init != "whiten" else {
                           "data": os.path.abspath(data), "split": "train", "tokens": used_tokens}}
    return student, rows, (teacher_params, student_params, inference_params)


def ranks_table(rows, totals) -> str:
    """``make_student``'s rows and totals as the text makd-init prints and makd-compress reports."""
    teacher_params, student_params, inference_params = totals
    lines = [tabulate(rows, headers=TABLE_HEADERS, disable_numparse=True),
             f"teacher params: {teacher_params}", f"student params: {student_params}",
             f"ratio: {student_params / teacher_params:.4f}"]
    if inference_params != student_params:
        lines.append(f"student params at inference: {inference_params} (ratio {inference_params / teacher_params:.4f})"
                     ": factors at or past break-even r >= d_in*d_out/(d_in+d_out) are merged back to dense by "
                     "fairseq-generate")
    return "\n".join(lines) + "\n"
