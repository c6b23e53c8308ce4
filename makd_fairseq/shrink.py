"""A dense student with fewer layers at a parameter budget: the shrink-and-fine-tune baseline (``makd-shrink``).

    student, plan = make_dense_student(load_checkpoint("T.pt"), 0.5)

The low-rank students' natural competitor: same budget, same width, fewer layers. Layers are dropped one at a
time, from the stack with more of them (the decoder on ties, as shrink-and-fine-tune shrinks the decoder), as long
as the smaller model still holds at least the budget; the layers kept are the teacher's, spread evenly with the
first and the last kept (12 -> 6 keeps 0, 2, 4, 7, 9, 11, as distilBART does). If that model is still over the
budget, every FFN is narrowed to the widest width within it, keeping the neurons with the largest
‖fc1 row‖·‖fc2 column‖. The checkpoint keeps the teacher's arch with the new depths and widths, so
``fairseq-train --finetune-from-model S.pt`` (``makd_fairseq.student.distill_command``) continues from it.
"""

import copy

from .aspects import STACKS
from .checkpoint import build_model_from_state, model_args
from .lowrank import RankError, count_params
from .student import student_checkpoint


def spread(n: int, k: int) -> list:
    """k of n layer indices, evenly spread, first and last included (k = 1 keeps layer 0)."""
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def plan(state: dict, budget: float) -> dict:
    """Layers kept per stack and FFN width per stack for ``budget`` (a fraction of the teacher's parameters)."""
    if not 0 < budget <= 1:
        raise RankError(f"--param-budget must be in (0, 1], got {budget:g}")
    sd = state["model"]
    if "encoder.layers.0.fc1.weight" not in sd:
        raise RankError("makd-shrink cuts encoder-decoder Transformers; this checkpoint has no encoder layers")
    total = count_params(build_model_from_state(state))
    n = {s: len({k.split(".")[2] for k in sd if k.startswith(f"{s}.layers.")}) for s in STACKS}
    layer = {s: sum(sd[k].numel() for k in sd if k.startswith(f"{s}.layers.0.")) for s in STACKS}
    ffn = {s: sd[f"{s}.layers.0.fc1.weight"].size(0) for s in STACKS}
    # one FFN neuron: its fc1 row and bias and its fc2 column
    neuron = {s: sd[f"{s}.layers.0.fc1.weight"].size(1) + 1 + sd[f"{s}.layers.0.fc2.weight"].size(0) for s in STACKS}
    target = budget * total

    def params(keep, width):
        return total - sum((n[s] - keep[s]) * layer[s] + keep[s] * (ffn[s] - width[s]) * neuron[s] for s in STACKS)

    keep = dict(n)
    while True:
        order = sorted(STACKS, key=lambda s: (-keep[s], s != "decoder"))  # more layers first, decoder on ties
        smaller = next((dict(keep, **{s: keep[s] - 1}) for s in order
                        if keep[s] > 1 and params(dict(keep, **{s: keep[s] - 1}), ffn) >= target), None)
        if smaller is None:
            break
        keep = smaller
    widest = max(ffn.values())
    widths = ({s: round(ffn[s] * w / widest) for s in STACKS} for w in range(widest, 0, -1))  # widest first
    width = next((w for w in widths if params(keep, w) <= target), None)
    if width is None or min(width.values()) < 1:
        raise RankError(f"--param-budget {budget:g} cannot be met by a dense model of the teacher's width: one layer "
                        f"per stack with one FFN neuron has {params({s: 1 for s in STACKS}, {s: 1 for s in STACKS})} "
                        f"of {total} parameters")
    return {"keep": {s: spread(n[s], keep[s]) for s in STACKS}, "ffn": width, "teacher_layers": n,
            "teacher_ffn": ffn, "params": params(keep, width), "teacher_params": total}


def shrink_state(state: dict, p: dict) -> dict:
    """The teacher's model state restricted to the planned layers and FFN neurons (renumbered from 0)."""
    sd, out = state["model"], {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] not in STACKS or parts[1] != "layers":
            out[key] = value
    for s in STACKS:
        for new, old in enumerate(p["keep"][s]):
            prefix = f"{s}.layers.{old}."
            w1, w2 = sd[prefix + "fc1.weight"], sd[prefix + "fc2.weight"]
            score = w1.norm(dim=1) * w2.norm(dim=0)
            idx = score.topk(p["ffn"][s]).indices.sort().values
            for key, value in sd.items():
                if not key.startswith(prefix):
                    continue
                name = key[len(prefix):]
                if name in ("fc1.weight", "fc1.bias"):
                    value = value[idx]
                elif name == "fc2.weight":
                    value = value[:, idx]
                out[f"{s}.layers.{new}.{name}"] = value.clone()
    return out


def make_dense_student(state: dict, budget: float):
    """(student checkpoint state, plan) for a dense student at ``budget``."""
    p = plan(state, budget)
    sargs = copy.deepcopy(model_args(state))
    for s in STACKS:
        setattr(sargs, f"{s}_layers", len(p["keep"][s]))
        setattr(sargs, f"{s}_ffn_embed_dim", p["ffn"][s])
    student = student_checkpoint(state, sargs, shrink_state(state, p))
    built = count_params(build_model_from_state(student))  # strict load: the planned shapes are the real ones
    if built != p["params"]:
        raise RuntimeError(f"planned {p['params']} parameters but the dense student has {built}")
    student["makd"] = {"teacher_params": p["teacher_params"], "student_params": built, "kept_layers": p["keep"],
                       "ffn": p["ffn"]}
    return student, p
