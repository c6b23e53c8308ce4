"""The student contract: which arch a teacher's student has, its shape flags, and its checkpoint.

A student checkpoint (``makd-init``, ``makd-shrink``) is the teacher's checkpoint with the arch switched to its
``lowrank_*`` counterpart, the ranks in the model config and fresh training state, so that
``fairseq-train --finetune-from-model S.pt`` and ``fairseq-generate --path S.pt`` rebuild it. Its dimensions travel
with it: a low-rank arch takes every shape field the command line leaves unset from the student named by
``--finetune-from-model`` (``shape_from_student``).
"""

import argparse
import functools
import os

from .files import USER_DIR


def student_arch(teacher_arch: str) -> str:
    from fairseq.models import ARCH_MODEL_REGISTRY

    name = "lowrank_" + teacher_arch
    if name in ARCH_MODEL_REGISTRY:
        return name
    return "lowrank_transformer_lm" if is_lm(teacher_arch) else "lowrank_transformer"


def task_of(arch: str) -> str:
    """The distillation task for a student of ``arch``."""
    return "makd_language_modeling" if is_lm(arch) else "makd_translation"


# architecture fields a student must repeat on fairseq-train's command line (fairseq builds from the CLI)
ARCH_FIELDS = (
    "encoder_layers", "decoder_layers", "encoder_embed_dim", "decoder_embed_dim", "encoder_ffn_embed_dim",
    "decoder_ffn_embed_dim", "encoder_attention_heads", "decoder_attention_heads", "activation_fn",
    "encoder_normalize_before", "decoder_normalize_before", "encoder_learned_pos", "decoder_learned_pos",
    "share_all_embeddings", "share_decoder_input_output_embed", "layernorm_embedding", "no_scale_embedding",
)
# transformer_lm's CLI also sets these (its defaults do not follow --decoder-embed-dim); translation derives them
LM_ARCH_FIELDS = ("decoder_input_dim", "decoder_output_dim", "no_decoder_final_norm")


def is_lm(arch: str) -> bool:
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.models.transformer_lm import TransformerLanguageModel

    return issubclass(ARCH_MODEL_REGISTRY[arch], TransformerLanguageModel)


def arch_flags(args: argparse.Namespace) -> list:
    """The CLI flags that rebuild ``args``'s shape on top of its arch's defaults."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    defaults = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[args.arch](defaults)
    flags = []
    for name in ARCH_FIELDS + (LM_ARCH_FIELDS if is_lm(args.arch) else ()):
        value = getattr(args, name, None)
        if value is None or value == getattr(defaults, name, None):
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False:  # a store_true default of True cannot be switched off from the CLI
            flags += [flag, str(value)]
    return flags


def student_checkpoint(teacher_state: dict, sargs: argparse.Namespace, model_state: dict) -> dict:
    """A checkpoint of the teacher's config with model args ``sargs`` and weights ``model_state``, at update 0."""
    from omegaconf import OmegaConf

    cfg = teacher_state["cfg"]
    cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg) else dict(cfg)
    cfg["model"] = sargs
    return {
        "cfg": cfg,
        "args": None,  # as fairseq's own checkpoints: readers such as CTranslate2's converter look for the key
        "model": model_state,
        # fresh training state in fairseq's own layout: fairseq-train starts at update 0, epoch 1
        "optimizer_history": [{"criterion_name": None, "optimizer_name": None,
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
    }


class ShapeError(ValueError):
    """A command line whose shape contradicts the student it fine-tunes."""


@functools.lru_cache(maxsize=8)
def _student_args(path: str, mtime: float):
    from .checkpoint import load_checkpoint, model_args

    return model_args(load_checkpoint(path))


def shape_from_student(args) -> None:
    """Fill the shape fields ``args`` leaves unset (None) from the low-rank student ``args.finetune_from_model``.

    Called by the low-rank archs before their presets fill defaults, so a student brings its dimensions and
    ``fairseq-train --arch lowrank_transformer --finetune-from-model S.pt`` needs no shape flags. A flag given with
    another value than the student's is a ``ShapeError`` naming both shapes."""
    path = getattr(args, "finetune_from_model", None)
    if not path or not os.path.isfile(path):
        return
    sargs = _student_args(os.path.abspath(path), os.path.getmtime(path))
    if not getattr(sargs, "lowrank_ranks", None):
        return  # a dense checkpoint: its shape is the command line's business, as in fairseq
    conflicts = []
    for name in ARCH_FIELDS + LM_ARCH_FIELDS:
        want, given = getattr(sargs, name, None), getattr(args, name, None)
        if want is None:
            continue
        if given is None or (given is False and want is True):  # unset, or a store_true flag left off
            setattr(args, name, want)
        elif given != want:
            conflicts.append(name)
    if conflicts:
        raise ShapeError(
            f"--finetune-from-model {path} is a student with "
            + ", ".join(f"{n}={getattr(sargs, n)}" for n in conflicts) + "; the command line gives "
            + ", ".join(f"{n}={getattr(args, n)}" for n in conflicts)
            + ": drop those flags (the student brings its shape) or fine-tune another student")


# optimisation of a distilled student (and of the benchmarks' teachers): Adam with inverse-sqrt warm-up. makd-compress
# and the benchmarks both take it from here; --dropout 0.1 is what every benchmarked student was trained with
OPTIMIZATION = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr-scheduler", "inverse_sqrt",
                "--warmup-updates", "100", "--clip-norm", "1.0", "--dropout", "0.1", "--weight-decay", "0.0001",
                "--seed", "1", "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "json"]


def brings_shape(arch: str) -> bool:
    """A low-rank student (encoder-decoder or decoder-only) takes its dimensions from its checkpoint
    (``shape_from_student``); a dense one (makd-shrink's) needs them on the command line."""
    return arch.startswith("lowrank_")


def distill_command(data: str, teacher: str, student: str, flags=()) -> list:
    """The ``fairseq-train`` command distilling ``student`` (a makd-init or makd-shrink checkpoint) from ``teacher`` on
    ``data``: task, teacher, arch, the shape flags a student cannot bring itself, then ``flags`` (the method and the
    optimisation; later flags win, as in argparse). The one place this command is assembled."""
    from .checkpoint import load_checkpoint, model_args

    sargs = model_args(load_checkpoint(student))
    shape = [] if brings_shape(sargs.arch) else arch_flags(sargs)
    return ["fairseq-train", data, "--user-dir", USER_DIR, "--task", task_of(sargs.arch), "--teacher-path", teacher,
            "--arch", sargs.arch, *shape, "--finetune-from-model", student, *flags]


# the teacher's task settings a student's training and evaluation must repeat, and makd-teacher-data's decoding reads
# with (fairseq builds the task from the command line): language pair, padding side, truncation, lengths, LM blocks
TASK_FIELDS = {
    "makd_translation": ("source_lang", "target_lang", "left_pad_source", "left_pad_target", "truncate_source",
                         "max_source_positions", "max_target_positions"),
    "makd_language_modeling": ("tokens_per_sample", "sample_break_mode", "max_target_positions"),
}


def task_flags(state: dict) -> list:
    """CLI flags repeating the teacher checkpoint's task settings where they differ from the task's defaults."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    from .checkpoint import model_args

    task = task_of(model_args(state).arch)
    defaults = TASK_DATACLASS_REGISTRY[task]()
    cfg = state["cfg"]["task"] if state.get("cfg") is not None else model_args(state)
    flags = []
    for name in TASK_FIELDS[task]:
        value = cfg.get(name) if hasattr(cfg, "get") else getattr(cfg, name, None)
        default = getattr(defaults, name)
        default = getattr(default, "value", default)  # a ChoiceEnum default (sample_break_mode)
        if value is None or value == default:
            continue
        flag = "--" + name.replace("_", "-")
        # a bool field's flag flips its default (fairseq: store_true when False, store_false when True)
        flags += [flag] if isinstance(default, bool) else [flag, str(value)]
    return flags


def main(argv=None) -> int:
    """``python3 -m makd_fairseq.student DATA TEACHER STUDENT [fairseq-train flags]``: the command, one word a line
    (for shell scripts: ``mapfile -t cmd < <(python3 -m makd_fairseq.student ...)``)."""
    import sys

    import makd_fairseq  # noqa: F401  (allow-list, archs)

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3:
        print("usage: python3 -m makd_fairseq.student DATA TEACHER STUDENT [fairseq-train flags...]", file=sys.stderr)
        return 2
    print("\n".join(distill_command(argv[0], argv[1], argv[2], argv[3:])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
