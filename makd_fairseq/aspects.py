"""The aspect table of MaKD and its losses.

Each distilled feature is one row: (term, student feature, teacher feature, loss, weight). The terms are

    matrix aspect  loss_mha  (q, k, v, out projection outputs, MSE)   loss_ffn (fc1 activation, fc2 output, MSE)
    layer aspect   loss_attn (per-head attention distributions, KL)   loss_hidn (layer outputs, MSE)

and the model aspect (``loss_model``, output KL) is computed by the criterion from the logits. Which layers
receive which aspect, and with what weight, is configuration (``build_table``), not code.

Normalisation: every loss is a **sum over positions**, each position weighted so that the sum is additive
over sentences and ignores padding. A decoder position weighs 1 (like a target token in cross-entropy). An
encoder position of sentence b weighs ``n_tgt_b / n_src_b``: a sentence contributes its mean encoder loss
times its target length, so encoder terms live on the same per-target-token scale as the rest, whatever the
source/target length ratio. fairseq then divides by the number of target tokens (``sample_size``).
"""

import functools
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .taps import ATTENTIONS, PROJECTIONS, Feature, Recomputable

TERMS = ("loss_mha", "loss_ffn", "loss_attn", "loss_hidn")
STACKS = ("encoder", "decoder")


@dataclass(frozen=True)
class Row:
    term: str  # one of TERMS
    student: Feature
    teacher: Feature
    loss: str  # "mse" | "kl"
    weight: float


def select_layers(spec: str, n: int, stack: str) -> List[int]:
    """Layer indices of a stack of ``n`` layers named by ``spec``.

    ``shallow`` = the first half (n // 2, at least 1), ``deep`` = the rest, ``all``, ``none``, a comma list of
    indices for both stacks (``0,1``), or per stack ``encoder:0,1;decoder:2``.
    """
    spec = spec.strip()
    if ";" in spec or ":" in spec:
        per_stack = dict(part.split(":", 1) for part in spec.split(";") if part.strip())
        unknown = set(per_stack) - set(STACKS)
        if unknown:
            raise ValueError(f"layer spec {spec!r}: unknown stack {sorted(unknown)}; use encoder:/decoder:")
        return select_layers(per_stack.get(stack, "none"), n, stack)
    cut = max(1, n // 2)
    named = {"shallow": list(range(cut)), "deep": list(range(cut, n)), "all": list(range(n)), "none": []}
    if spec in named:
        return named[spec]
    try:
        layers = [int(i) for i in spec.split(",") if i.strip()]
    except ValueError:
        raise ValueError(f"layer spec {spec!r}: expected shallow, deep, all, none, 0,1 or encoder:0,1;decoder:2") from None
    for i in layers:
        if not 0 <= i < n:
            raise ValueError(f"layer spec {spec!r}: the student's {stack} has {n} layers (0..{n - 1}); no layer {i}")
    return layers


def map_layers(spec: str, n_student: int, n_teacher: int, stack: str) -> Dict[int, int]:
    """Teacher layer that each student layer mimics: ``skip`` (uniform, last to last), ``last``, or ``0:1,1:3``."""
    if spec in ("skip", "last") and n_student > n_teacher:
        raise ValueError(f"--layer-map {spec}: the student's {stack} has {n_student} layers, more than the "
                         f"teacher's {n_teacher}; give an explicit map such as 0:0,1:0,2:1")
    if spec == "skip":
        return {i: (i + 1) * n_teacher // n_student - 1 for i in range(n_student)}
    if spec == "last":
        return {i: n_teacher - n_student + i for i in range(n_student)}
    try:
        mapping = {int(a): int(b) for a, b in (pair.split(":") for pair in spec.split(",") if pair.strip())}
    except ValueError:
        raise ValueError(f"--layer-map {spec!r}: expected skip, last, or student:teacher pairs like 0:1,1:3") from None
    for i, j in mapping.items():
        if not (0 <= i < n_student and 0 <= j < n_teacher):
            raise ValueError(f"--layer-map {spec}: {i}:{j} is outside the student's {n_student} / "
                             f"teacher's {n_teacher} {stack} layers")
    return mapping


def build_table(cfg, n_student: Dict[str, int], n_teacher: Dict[str, int],
                attentions: Optional[Dict[str, tuple]] = None) -> List[Row]:
    """The rows the configuration asks for; rows of weight 0 are left out (their features are not tapped).

    ``n_student``/``n_teacher``: layers per stack the models have (a language model: the decoder only);
    ``attentions``: the attentions of each stack's layers (default: the decoder also has cross-attention)."""
    weights = {
        "loss_mha": cfg.matrix_weight * cfg.mha_weight,
        "loss_ffn": cfg.matrix_weight * cfg.ffn_weight,
        "loss_attn": cfg.layer_weight * cfg.attn_weight,
        "loss_hidn": cfg.layer_weight * cfg.hidn_weight,
    }
    rows = []
    if set(n_student) != set(n_teacher):
        raise ValueError(f"student stacks {sorted(n_student)} differ from the teacher's {sorted(n_teacher)}")
    for stack in (s for s in STACKS if s in n_student):
        layer_map = map_layers(cfg.layer_map, n_student[stack], n_teacher[stack], stack)
        stack_attentions = (attentions or {}).get(stack) or (ATTENTIONS if stack == "decoder" else ATTENTIONS[:1])
        aspects = {
            "matrix": select_layers(cfg.matrix_layers, n_student[stack], stack),
            "layer": select_layers(cfg.layer_layers, n_student[stack], stack),
        }
        for i in sorted(set(aspects["matrix"]) | set(aspects["layer"])):
            if i not in layer_map:
                raise ValueError(f"--layer-map {cfg.layer_map} gives no teacher layer for student {stack} layer {i}")
            j = layer_map[i]
            pairs = []  # (term, name, attention, loss)
            if i in aspects["matrix"]:
                pairs += [("loss_mha", p, a, "mse") for a in stack_attentions for p in PROJECTIONS]
                pairs += [("loss_ffn", name, None, "mse") for name in ("fc1", "fc2")]
            if i in aspects["layer"]:
                pairs += [("loss_attn", "attn", a, "kl") for a in stack_attentions]
                pairs += [("loss_hidn", "hidden", None, "mse")]
            rows += [Row(term, Feature(stack, i, name, a), Feature(stack, j, name, a), loss, weights[term])
                     for term, name, a, loss in pairs if weights[term] > 0]
        if cfg.hidn_embeddings and weights["loss_hidn"] > 0:
            emb = Feature(stack, -1, "hidden")
            rows.append(Row("loss_hidn", emb, emb, "mse", weights["loss_hidn"]))
    return rows


def position_weights(sample: dict, pad: int) -> Dict[str, Tensor]:
    """B x L weights of encoder and decoder positions (see the module docstring)."""
    tgt = sample["target"].ne(pad).float()
    src = sample["net_input"]["src_tokens"].ne(pad).float()
    n_tgt, n_src = tgt.sum(1, keepdim=True), src.sum(1, keepdim=True).clamp_min(1)
    return {"decoder": tgt, "encoder": src * n_tgt / n_src}


def positions_of(f: Feature) -> str:
    """Which stack's positions a feature runs over (cross-attention keys/values run over the source)."""
    return "encoder" if f.attention == "encoder_attn" and f.name in ("k", "v") else f.stack


def _autocast_state(device_type: str) -> dict:
    """``torch.autocast`` arguments that re-enter the autocast state in force now on ``device_type``."""
    return {"device_type": device_type, "enabled": torch.is_autocast_enabled(device_type),
            "dtype": torch.get_autocast_dtype(device_type), "cache_enabled": torch.is_autocast_cache_enabled()}


def in_fp32(loss):
    """Form ``loss`` in fp32 under autocast too (``--amp``), which would run its vecdots in half precision."""
    @functools.wraps(loss)
    def wrapper(student: Tensor, *args, **kwargs):
        with torch.autocast(student.device.type, enabled=False):
            return loss(student, *args, **kwargs)

    return wrapper


@in_fp32
def mse(student: Tensor, teacher: Tensor, weight: Tensor, relative: bool = False) -> Tensor:
    """Σ_positions weight · mean_channels (s − t)², in fp32. student/teacher: L x B x C; weight: B x L.

    ``relative``: each position's error is divided by the teacher's mean square there, ‖s − t‖² / ‖t‖², so the
    term is scale-free (an untrained student is near 1, the teacher's own features give 0) and stays additive over
    positions. Autograd keeps only d = s − t for the backward (not s and t, as ``F.mse_loss`` would): the
    teacher's feature is freed as soon as the loss is formed."""
    t = teacher.float()  # one fp32 copy of a half-precision teacher feature, shared by both uses
    d = student.float() - t
    per_position = torch.linalg.vecdot(d, d) / d.size(-1)
    if relative:
        t = t.detach()
        per_position = per_position / (torch.linalg.vecdot(t, t) / t.size(-1)).clamp_min(1e-8)
    return (per_position.t() * weight).sum()


class _RecomputedMSE(torch.autograd.Function):
    """``mse`` against a teacher feature given as ``Recomputable`` (its module's input x and the module).

    Saves the student feature s (which the student's own backward keeps anyway: q, k, v for its attention products,
    the fc1 activation for fc2) and x (a quarter of an FFN feature, or one tensor for q, k and v together), not
    s − t; the backward recomputes t = fn(x). Value and gradient are ``mse``'s: d/ds = 2 w (s − t) / (C · e)."""

    @staticmethod
    def forward(ctx, student: Tensor, x: Tensor, weight: Tensor, fn, relative: bool, autocast: dict) -> Tensor:
        # t is computed under the caller's autocast state (``autocast``), as the teacher's forward computed it; the
        # backward runs outside autocast (autograd's thread) and recomputes t under that same state, as
        # torch.utils.checkpoint does, so the gradient belongs to the t the value was computed from
        ctx.autocast = autocast
        with torch.no_grad(), torch.autocast(**autocast):
            t = fn(x).float()
        coef = weight.t() / t.size(-1)  # L x B
        if relative:
            coef = coef / (torch.linalg.vecdot(t, t) / t.size(-1)).clamp_min(1e-8)
        ctx.save_for_backward(student, x, coef)
        ctx.fn = fn
        d = t.sub_(student.float())  # t − s, in t's memory: one feature-sized buffer at a time
        return (torch.linalg.vecdot(d, d) * coef).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        student, x, coef = ctx.saved_tensors
        with torch.no_grad(), torch.autocast(**ctx.autocast):
            g = ctx.fn(x).float().sub_(student.float())  # t − s; the backward runs before the student's, at the peak
        return g.mul_((-2 * grad) * coef.unsqueeze(-1)).to(student.dtype), None, None, None, None, None


def recomputed_mse(student: Tensor, teacher: Recomputable, weight: Tensor, relative: bool = False) -> Tensor:
    """``mse(student, teacher(), weight, relative)`` keeping only the student feature and the teacher's input for the
    backward (see ``_RecomputedMSE``)."""
    autocast = _autocast_state(student.device.type)
    with torch.autocast(student.device.type, enabled=False):  # the loss in fp32, t under ``autocast``
        return _RecomputedMSE.apply(student, teacher.input.detach(), weight, teacher.fn, relative, autocast)


class _AttentionKL(torch.autograd.Function):
    """Row-wise KL(p_t ‖ p_s) = Σ p_t log p_t − Σ p_t log p_s over the last dim, in fp32, without autograd's copies.

    Saves only p_s (which softmax's backward keeps anyway) and p_t, in the dtype they come in: under half precision
    no fp32 copy of a B·H·T·S map lives from the forward to the backward (fp32 ones exist only while a value or a
    gradient is formed). The gradient −p_t / p_s is formed in the backward. Adding the smallest normal float inside
    the logs keeps 0 · log 0 = 0 at masked keys.
    """

    @staticmethod
    def forward(ctx, p_s: Tensor, p_t: Tensor) -> Tensor:
        tiny = torch.finfo(torch.float32).tiny
        ctx.save_for_backward(p_s, p_t)
        p_t = p_t.float()
        return torch.linalg.vecdot(p_t, (p_t + tiny).log_()) - torch.linalg.vecdot(p_t, (p_s.float() + tiny).log_())

    @staticmethod
    def backward(ctx, grad: Tensor):
        p_s, p_t = ctx.saved_tensors
        g = p_s.float() + torch.finfo(torch.float32).tiny  # a new fp32 tensor, also when p_s is fp32
        torch.div(p_t.float(), g, out=g)
        g.mul_(grad.unsqueeze(-1).neg())
        # rows of weight 0 (padding) may be NaN (a query whose keys are all masked): their gradient is exactly 0
        return g.masked_fill_((grad == 0).unsqueeze(-1), 0).to(p_s.dtype), None


@in_fp32
def attention_kl(student: Tensor, teacher: Tensor, weight: Tensor, heads: int) -> Tensor:
    """Σ_queries weight · mean_heads KL(teacher ‖ student), in fp32.

    student/teacher: (B * heads) x T x S probabilities (masked keys are exact zeros); weight: B x T.
    """
    kl = _AttentionKL.apply(student, teacher.detach())
    kl = kl.view(weight.size(0), heads, -1).mean(1)
    return torch.where(weight > 0, kl, kl.new_zeros(())).mul(weight).sum()  # padded rows may be NaN


@in_fp32
def output_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float,
              student_lprobs: Optional[Tensor] = None, topk: int = 0) -> Tensor:
    """Σ_tokens T² · KL(p_t ‖ softmax(s/T)), in fp32, p_t = softmax(t/T). logits: B x T x V; mask: B x T (0 drops a
    position: padding, or a token that selective KD leaves out).

    ``student_lprobs``: log_softmax(s/T) in fp32 when the caller has it already (at T = 1, the model's own
    normalized output), saving a softmax over the vocabulary and its backward.
    ``topk`` K > 0: p_t is the teacher's distribution at T restricted to its K most likely tokens and renormalized,
    Σ_{i∈topK} p̃_t,i (log p̃_t,i − log p_s,i) with the student's log-probabilities over the whole vocabulary; the
    teacher side is then B x T x K (no B x T x V tensor beyond the student's log-probabilities)."""
    lp_s = student_lprobs if student_lprobs is not None else F.log_softmax(student_logits.float() / temperature, -1)
    if topk > 0:
        # the K largest logits are the K most likely tokens at any T > 0
        top, index = teacher_logits.topk(min(topk, teacher_logits.size(-1)), dim=-1)
        lp_t = F.log_softmax(top.float() / temperature, dim=-1)
        lp_s = lp_s.gather(-1, index)
    else:
        lp_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (lp_t.exp() * (lp_t - lp_s)).sum(-1)
    return (kl * mask).sum() * temperature ** 2


def hardest_tokens(nll: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """B x T bool: the ``ratio`` fraction (rounded, at least one) of the positions in ``mask`` (B x T bool) with the
    highest ``nll`` (B x T, the student's cross-entropy on the reference), for selective KD (Wang et al. 2021, batch
    level). Ties go to the earlier position in the batch (a stable sort), so the choice is deterministic."""
    n = int(mask.sum())
    if ratio >= 1 or n == 0:
        return mask
    k = max(1, min(n, int(ratio * n + 0.5)))
    scores = nll.detach().float().masked_fill(~mask, float("-inf")).flatten()
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    chosen[scores.argsort(descending=True, stable=True)[:k]] = True
    return chosen.view_as(mask)


def anneal_factor(num_updates: int, anneal_updates: int) -> float:
    """The intermediate (matrix and layer) terms' factor: max(0, 1 − num_updates / N), linear to 0 at update N;
    1 when N is 0 (no annealing)."""
    if anneal_updates <= 0:
        return 1.0
    return max(0.0, 1.0 - num_updates / anneal_updates)


def row_loss(row: Row, student: Tensor, teacher: Tensor, weights: Dict[str, Tensor],
             heads: Optional[int] = None, scales=(1.0, 1.0), relative: bool = False) -> Tensor:
    """The row's loss; ``scales`` (student, teacher) turn recorded values into features (see ``Taps.scales``);
    ``relative``: MSE rows divided by the teacher's energy (see ``mse``)."""
    weight = weights[positions_of(row.student)]
    s_scale, t_scale = scales
    if isinstance(teacher, Recomputable):
        if row.loss == "mse" and s_scale == t_scale:
            return recomputed_mse(student, teacher, weight if relative else weight * s_scale ** 2, relative)
        teacher = teacher()
    if row.loss == "kl":
        return attention_kl(student, teacher, weight, heads)
    if s_scale != t_scale:  # different head widths: unscale each side
        student, teacher, s_scale = student * s_scale, teacher * t_scale, 1.0
    if relative:  # a common scale cancels out of the ratio
        return mse(student, teacher, weight, relative=True)
    return mse(student, teacher, weight * s_scale ** 2)  # equal scales factor out of the squared difference
