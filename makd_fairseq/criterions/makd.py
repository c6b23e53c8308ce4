"""The ``makd`` criterion: cross-entropy plus the multi-aspect distillation terms, each logged by name.

    loss = ce_weight · loss_ce + model_weight · loss_model
         + f · matrix_weight · (mha_weight · loss_mha + ffn_weight · loss_ffn)
         + f · layer_weight · (attn_weight · loss_attn + hidn_weight · loss_hidn)

with ce_weight, model_weight = 1 − A, A under ``--kd-alpha A`` (fairseq's convex kd_label_smoothed_cross_entropy) and
f = max(0, 1 − num_updates / N) under ``--anneal-updates N`` (else 1). ``--kd-topk`` and ``--kd-select-ratio`` change
loss_model's target (the teacher's top K tokens) and its positions (the hardest tokens of the batch).

Teacher and student run on the same batch; ``Taps`` read only the features the aspect table asks for.
All terms are sums over target-token-scaled positions (see ``makd_fairseq.aspects``), so fairseq's division
by ``sample_size`` (target tokens) makes each one a per-token value independent of batch size and padding.
Logged values are per target token: ``loss``/``nll_loss`` in base 2 as fairseq does, the six components in
their natural units (nats for KL/CE; squared activations for MSE, or relative squared errors averaged over a
term's features with ``--feature-norm teacher``), unweighted.
"""

import math
import weakref
from dataclasses import dataclass, field, fields

import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II
from torch import nn

from ..aspects import TERMS, anneal_factor, build_table, hardest_tokens, output_kl, position_weights, row_loss
from ..taps import Taps, num_heads, shape_of

COMPONENTS = ("loss_ce", "loss_model", *TERMS)
FEATURE_NORMS = ("none", "teacher")
# the terms read inside a layer (projections, FFN, attention maps): fairseq's --checkpoint-activations runs a layer's
# first forward under no_grad, so these would carry no gradient (layer outputs and logits are outside that region)
INSIDE_LAYER = ("loss_mha", "loss_ffn", "loss_attn")


@dataclass
class MakdConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the reference cross-entropy"})
    kd_temperature: float = field(default=1.0, metadata={"help": "temperature T of the output KL (scaled by T²)"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of loss_ce (reference cross-entropy)"})
    model_weight: float = field(default=1.0, metadata={"help": "model aspect: weight of loss_model (output KL)"})
    matrix_weight: float = field(default=1.0, metadata={"help": "matrix aspect: weight of loss_mha + loss_ffn"})
    layer_weight: float = field(default=1.0, metadata={"help": "layer aspect: weight of loss_attn + loss_hidn"})
    mha_weight: float = field(default=1.0, metadata={"help": "weight of loss_mha inside the matrix aspect"})
    ffn_weight: float = field(default=1.0, metadata={"help": "weight of loss_ffn inside the matrix aspect"})
    attn_weight: float = field(default=1.0, metadata={"help": "weight of loss_attn inside the layer aspect"})
    hidn_weight: float = field(default=1.0, metadata={"help": "weight of loss_hidn inside the layer aspect"})
    matrix_layers: str = field(default="shallow", metadata={
        "help": "student layers given the matrix aspect: shallow (first half), deep, all, none, '0,1', "
                "or 'encoder:0,1;decoder:0'"})
    layer_layers: str = field(default="deep", metadata={
        "help": "student layers given the layer aspect (same forms as --matrix-layers)"})
    layer_map: str = field(default="skip", metadata={
        "help": "teacher layer each student layer mimics: skip (uniform), last, or '0:1,1:3'"})
    hidn_embeddings: bool = field(default=False, metadata={
        "help": "also match the embedding outputs in loss_hidn"})
    # the default: benchmarks/results/sweep.json (validation nll at 50% on summarization and en->de)
    feature_norm: ChoiceEnum(FEATURE_NORMS) = field(default="teacher", metadata={
        "help": "scale of the MSE terms (loss_mha, loss_ffn, loss_hidn): none (squared activations, summed over the "
                "features of a term) or teacher (each position's squared error divided by the teacher feature's "
                "mean square there, so an untrained student starts near 1 whatever the width or activation scale; "
                "every intermediate term, loss_attn included, is then the mean over its features, not their sum)"})
    # the KD target (issue 34's diagnosis); every default is the plain additive objective above
    kd_alpha: float = field(default=-1.0, metadata={
        "help": "convex form of fairseq's kd_label_smoothed_cross_entropy: loss_ce weighed 1 − A and loss_model A "
                "(the matrix and layer terms as configured), A in [0, 1]; -1: off (--ce-weight, --model-weight "
                "apply, and are refused when set with A)"})
    kd_topk: int = field(default=0, metadata={
        "help": "loss_model against the teacher's K most likely tokens at temperature T, renormalized (the student's "
                "log-probabilities over the whole vocabulary); 0: the full vocabulary"})
    kd_select_ratio: float = field(default=1.0, metadata={
        "help": "selective KD (Wang et al. 2021, batch level): loss_model only on this fraction of the batch's target "
                "tokens, those with the highest student cross-entropy on the reference; in (0, 1], 1: every token"})
    anneal_updates: int = field(default=0, metadata={
        "help": "multiply the matrix and layer aspects' weights by max(0, 1 − num_updates / N), linear to 0 at update "
                "N (then neither computed nor tapped); logged as aspect_factor. 0: off"})
    recompute_teacher: bool = field(default=False, metadata={
        "help": "hold the teacher's q, k, v and fc1 activation as their module's (smaller) input and recompute them when "
                "their loss is formed and again in its backward: less memory per update for more time (same loss and "
                "gradients). fairseq's --checkpoint-activations does not combine with the matrix aspect or loss_attn "
                "(refused: the features they read inside a checkpointed layer would carry no gradient)"})
    sentence_avg: bool = II("optimization.sentence_avg")


DEFAULTS = {f.name: f.default for f in fields(MakdConfig)}


@register_criterion("makd", dataclass=MakdConfig)
class MakdCriterion(FairseqCriterion):
    def __init__(self, task, cfg: MakdConfig, student_shape: dict):
        """``student_shape``: ``taps.shape_of(student)``, which sizes the aspect table (and the projections into the
        teacher's width); fairseq-train passes the one of the model the task built (``build_criterion``)."""
        super().__init__(task)
        if cfg.kd_temperature <= 0:
            raise ValueError(f"--kd-temperature must be > 0, got {cfg.kd_temperature}")
        if cfg.feature_norm not in FEATURE_NORMS:
            raise ValueError(f"--feature-norm must be one of {FEATURE_NORMS}, got {cfg.feature_norm!r}")
        # the weights of loss_ce and loss_model: the configured ones, or (1 − A, A) under --kd-alpha
        self.ce_weight, self.model_weight = cfg.ce_weight, cfg.model_weight
        if cfg.kd_alpha != -1:
            if not 0 <= cfg.kd_alpha <= 1:
                raise ValueError(f"--kd-alpha must be in [0, 1] (or -1: off), got {cfg.kd_alpha}")
            changed = [f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name in ("ce_weight", "model_weight")
                       if getattr(cfg, name) != DEFAULTS[name]]
            if changed:
                raise ValueError(f"--kd-alpha sets the weights of loss_ce (1 − A) and loss_model (A): drop "
                                 f"{' and '.join(changed)}")
            self.ce_weight, self.model_weight = 1.0 - cfg.kd_alpha, cfg.kd_alpha
        if cfg.kd_topk < 0:
            raise ValueError(f"--kd-topk must be >= 0 (0: the full vocabulary), got {cfg.kd_topk}")
        if not 0 < cfg.kd_select_ratio <= 1:
            raise ValueError(f"--kd-select-ratio must be in (0, 1], got {cfg.kd_select_ratio}")
        if cfg.anneal_updates < 0:
            raise ValueError(f"--anneal-updates must be >= 0 (0: off), got {cfg.anneal_updates}")
        # the trainer's update count, given by the task's train_step (``set_num_updates``); validation uses the last
        self.num_updates = 0
        if not hasattr(task, "teacher_for"):
            raise ValueError("criterion makd needs a task with a teacher: --task makd_translation (or "
                             "makd_language_modeling) --teacher-path T.pt")
        self.cfg = cfg
        teacher = task.teacher  # loads and checks the teacher now, before training starts
        tshape = shape_of(teacher)
        student = student_shape
        self.rows = build_table(cfg, {s: student[s]["layers"] for s in student},
                                {s: tshape[s]["layers"] for s in tshape},
                                {s: student[s]["attentions"] for s in student})
        self.heads = {row: num_heads(teacher, row.teacher) for row in self.rows if row.loss == "kl"}
        self.projections = nn.ModuleDict()
        for stack in student:
            s, t = student[stack], tshape[stack]
            terms = {row.term for row in self.rows if row.student.stack == stack}
            if terms & {"loss_mha", "loss_ffn"} and (s["width"], s["ffn"]) != (t["width"], t["ffn"]):
                raise ValueError(
                    f"the matrix aspect needs equal widths: student {stack} is {s['width']}/{s['ffn']} "
                    f"(hidden/FFN), teacher {t['width']}/{t['ffn']}; use --matrix-weight 0 or --matrix-layers none")
            if "loss_attn" in terms and s["heads"] != t["heads"]:
                raise ValueError(f"loss_attn compares heads one to one: student {stack} has {s['heads']} heads, "
                                 f"teacher {t['heads']}; use --attn-weight 0")
            if "loss_hidn" in terms and s["width"] != t["width"]:
                # TinyBERT-style: a learned map into the teacher's width, trained with the student, not exported
                self.projections[stack] = nn.Linear(s["width"], t["width"], bias=False)
        # --feature-norm teacher: a term is the mean of its rows (relative errors, KLs), not their sum
        self.relative = cfg.feature_norm == "teacher"
        self.share = {row.term: 1.0 for row in self.rows}
        if self.relative:
            for term in TERMS:
                self.share[term] = 1.0 / max(1, sum(row.term == term for row in self.rows))
        # the row after which each feature is let go (its last use): a row's loss keeps only what its backward needs
        self.last_use = {f: i for i, row in enumerate(self.rows) for f in (("s", row.student), ("t", row.teacher))}
        self.student_features = {row.student for row in self.rows}
        self.teacher_features = {row.teacher for row in self.rows}
        self._checked_student = lambda: None

    def set_num_updates(self, num_updates: int) -> None:
        """The update about to be computed (``TeacherMixin.train_step`` passes fairseq's ``update_num``)."""
        self.num_updates = num_updates

    @property
    def aspect_factor(self) -> float:
        """The factor of the matrix and layer aspects' weights now (``--anneal-updates``)."""
        return anneal_factor(self.num_updates, self.cfg.anneal_updates)

    @classmethod
    def build_criterion(cls, cfg: MakdConfig, task):
        """fairseq's entry: the student's shape comes from the task, which built the student just before."""
        shape = getattr(task, "student_shape", None)
        if shape is None:
            raise ValueError("criterion makd needs the student's shape: build the student with the task first "
                             "(task.build_model, as fairseq-train does) or pass student_shape=shape_of(model)")
        return cls(task, cfg, student_shape=shape)

    def check_student(self, model) -> None:
        """Once per model: refuse what would silently leave terms without gradient."""
        if self._checked_student() is model:
            return
        checkpointed = [name for name, m in model.named_modules() if hasattr(m, "precheckpoint_forward")]
        inside = sorted({row.term for row in self.rows if row.term in INSIDE_LAYER})
        if checkpointed and inside:
            raise ValueError(
                f"--checkpoint-activations does not combine with {', '.join(inside)}: fairseq runs a checkpointed "
                "layer's first forward without gradients, so the features these terms read inside it would train "
                "nothing; drop --checkpoint-activations (--recompute-teacher saves the teacher's share of memory) or "
                "set --matrix-weight 0 --attn-weight 0")
        self._checked_student = weakref.ref(model)  # not the module itself: it would become a submodule


    def forward(self, model, sample, reduce=True):
        self.check_student(model)
        teacher = self.task.teacher_for(model)
        # annealed to 0 (--anneal-updates), the table's rows are skipped as a weight of 0 would leave them out
        factor = self.aspect_factor
        rows = self.rows if factor > 0 else []
        # teacher first: its transient activations peak before the student's are allocated
        # --recompute-teacher: q, k, v and fc1 of the teacher are held as their (smaller) inputs and recomputed
        with torch.no_grad(), Taps(teacher, self.teacher_features if rows else (),
                                   recompute=self.cfg.recompute_teacher) as t_taps:
            t_logits = teacher(**sample["net_input"])[0]
        with Taps(model, self.student_features if rows else ()) as s_taps:
            net_output = model(**sample["net_input"])

        pad = self.padding_idx
        target = model.get_targets(sample, net_output)
        mask = target.ne(pad)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        loss_ce, nll_loss = label_smoothed_nll_loss(
            lprobs.view(-1, lprobs.size(-1)), target.view(-1), self.cfg.label_smoothing, ignore_index=pad)
        values = {name: lprobs.new_zeros((), dtype=torch.float32) for name in COMPONENTS}
        values["loss_ce"] = loss_ce.float()
        T = self.cfg.kd_temperature
        loss = self.ce_weight * values["loss_ce"]
        extra = {}
        if self.model_weight > 0:  # weight 0: not computed (B x T x V fp32 tensors), logged as 0
            kd_mask = mask
            if self.cfg.kd_select_ratio < 1:  # selective KD: the tokens the student finds hardest on the reference
                nll = -lprobs.detach().gather(-1, target.unsqueeze(-1)).squeeze(-1)
                kd_mask = hardest_tokens(nll, mask, self.cfg.kd_select_ratio)
                extra["kd_tokens"] = kd_mask.sum()
            values["loss_model"] = output_kl(net_output[0], t_logits, kd_mask.float(), T,
                                             student_lprobs=lprobs.float() if T == 1 else None, topk=self.cfg.kd_topk)
            loss = loss + self.model_weight * values["loss_model"]

        weights = position_weights(sample, pad)
        # each feature is let go once its last row is formed (s − t or the two attention maps are what stays), so the
        # features and the losses' tensors are never all alive together
        for i, row in enumerate(rows):
            s, t = s_taps.values[row.student], t_taps.values[row.teacher]
            for side, taps, f in (("s", s_taps, row.student), ("t", t_taps, row.teacher)):
                if self.last_use[(side, f)] == i:
                    del taps.values[f]
            if row.term == "loss_hidn" and row.student.stack in self.projections:
                s = self.projections[row.student.stack](s)
            value = row_loss(row, s, t, weights, self.heads.get(row),
                             (s_taps.scales[row.student], t_taps.scales[row.teacher]), self.relative)
            del s, t
            value = value * self.share[row.term]
            values[row.term] = values[row.term] + value
            loss = loss + factor * row.weight * value

        ntokens = sample["ntokens"]
        sample_size = sample["target"].size(0) if self.cfg.sentence_avg else ntokens
        agree = (net_output[0].argmax(-1).eq(t_logits.argmax(-1)) & mask).sum()
        if self.cfg.anneal_updates > 0:  # summable like every logged value: the factor times the sample size
            extra["aspect_factor"] = factor * sample_size
        logging_output = {
            "loss": loss.data, "nll_loss": nll_loss.data, "ntokens": ntokens,
            "nsentences": sample["target"].size(0), "sample_size": sample_size, "agree": agree.data,
            **{name: v.data for name, v in values.items()}, **extra,
        }
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size, ntokens = total("sample_size"), total("ntokens")
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        for name in COMPONENTS:
            metrics.log_scalar(name, total(name) / sample_size, sample_size, round=4)
        # weighted by tokens, the meter's average is Σ agree / Σ ntokens over the whole log interval
        metrics.log_scalar("agreement", 100.0 * total("agree") / max(ntokens, 1), ntokens, round=2)
        if any("kd_tokens" in log for log in logging_outputs):  # --kd-select-ratio: % of tokens given loss_model
            metrics.log_scalar("kd_selected", 100.0 * total("kd_tokens") / max(ntokens, 1), ntokens, round=2)
        if any("aspect_factor" in log for log in logging_outputs):  # --anneal-updates
            metrics.log_scalar("aspect_factor", total("aspect_factor") / sample_size, sample_size, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
