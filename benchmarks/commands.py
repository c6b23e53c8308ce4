"""The commands a benchmark run starts: fairseq-train for teachers and students, makd-teacher-data, and the
evaluations (fairseq-generate, fairseq-eval-lm, fairseq-validate, the LM continuation worker), built from
``sizes`` presets and a run's arguments. The distillation and generation commands are the package's own
(``makd_fairseq.student.distill_command``, makd-compress's ``generate_command`` and ``eval_lm_command``)."""
import shlex
import sys

from makd_fairseq.files import USER_DIR

from .sizes import (GENERATE, STUDENT_TRAIN, TEACHER_ARCH, TEACHER_TRAIN, common_flags, teacher_criterion,
                    until_converged)


def flag_value(flags, name):
    """The value of the last ``name`` in a flag list (the one argparse keeps)."""
    return flags[len(flags) - flags[::-1].index(name)]


def teacher_command(data, size, save_dir, extra=()):
    """fairseq-train of a benchmark teacher of ``size`` (label-smoothed CE; cross-entropy for language models)."""
    # the plugin's checkpoint allow-list lets an interrupted teacher resume from its checkpoint_last.pt (torch >= 2.6)
    return ["fairseq-train", data, "--user-dir", USER_DIR, *TEACHER_ARCH[size], *common_flags(size),
            *TEACHER_TRAIN[size], *teacher_criterion(size), "--save-dir", save_dir, *extra]


def on_gpu(args):
    """``--device cuda``: a size's recipe (fp32 unless it says ``--fp16``) runs on the GPU instead of ``--cpu``."""
    return getattr(args, "device", "cpu") == "cuda"


def device_flags(args):
    if "--fp16" in STUDENT_TRAIN[args.size]:
        return ["--fp16"]
    return [] if on_gpu(args) else ["--cpu"]


# the validation metric of ``--select-on metric`` per task (what --eval-metric logs: valid_bleu, valid_rougeL)
VALID_METRIC = {"translation": "bleu", "summarization": "rougeL"}


def selection_flags(args):
    """How a student's checkpoint is chosen and its training stopped: validation nll (``--select-on nll``), or the
    task's metric of beam-search hypotheses of the valid split with the test generation's flags (``metric``)."""
    if getattr(args, "select_on", "nll") == "nll":
        return ["--best-checkpoint-metric", "nll_loss"]
    from makd_fairseq.validation import generation_args

    metric = VALID_METRIC[args.task]
    return ["--eval-metric", metric,
            "--eval-metric-args", generation_args([*GENERATE[args.task], *shlex.split(args.generate_args)]),
            *(["--eval-metric-remove-bpe", args.remove_bpe] if args.remove_bpe != "none" else []),
            "--best-checkpoint-metric", metric, "--maximize-best-checkpoint-metric"]


def student_training(args):
    """A size's student training flags, with ``--stopping CAP EVERY PATIENCE`` in place of its stopping rule."""
    stopping = getattr(args, "stopping", None)
    recipe = [f for f in STUDENT_TRAIN[args.size] if f not in ("--cpu", "--fp16")] + device_flags(args)
    return [*recipe, *(until_converged(*stopping) if stopping else [])]  # later flags win


AVERAGED_AT_MOST = 5  # benchmarks.averaging's largest window (score --max-k)


def keep_interval(patience):
    """Interval checkpoints a student keeps: the best is at most ``patience`` validations before the last, and the
    windows ending there go back ``AVERAGED_AT_MOST - 1`` more, so these hold every window benchmarks.averaging scores
    (at the stop and at the best); not part of the protocol (student_training): what stays on disk, not the
    training."""
    return patience + AVERAGED_AT_MOST


def train_command(args, teacher, init, method_flags, save_dir, data=None):
    """fairseq-train distilling ``init`` from ``teacher`` on ``data`` (default: the benchmark's data)."""
    from makd_fairseq.student import distill_command

    training = student_training(args)
    return distill_command(data or args.data, teacher, init, [
        *common_flags(args.size), *training,
        "--keep-interval-updates", str(keep_interval(int(flag_value(training, "--patience")))),
        *selection_flags(args), "--save-dir", save_dir, *method_flags])


def seq_kd_splits(args):
    """The splits whose targets sequence-level KD replaces by the teacher's outputs: train and valid, so that the nll
    rule validates a seq-KD student on what it is trained to produce; train alone under ``--select-on metric``, whose
    rule scores the valid split's references (the quality that is measured)."""
    return "train" if getattr(args, "select_on", "nll") == "metric" else "train,valid"


def teacher_data_command(args, teacher, out):
    """makd-teacher-data: the ``seq_kd_splits`` with the teacher's beam outputs as targets (sequence-level KD)."""
    return ["makd-teacher-data", "--teacher", teacher, "--data", args.data, "--out", out,
            "--splits", seq_kd_splits(args), *GENERATE[args.task], "--batch-size", str(args.batch_size),
            *(["--cpu"] if device_flags(args) == ["--cpu"] else [])]


def generate_command(args, checkpoint, subset="test"):
    """makd-compress's fairseq-generate (test split, or ``subset``) with the benchmark's beam, lengths, batch and
    truncation."""
    from makd_fairseq.compress import generate_command as generate

    train = common_flags(args.size) + STUDENT_TRAIN[args.size]
    return generate(args.data, checkpoint, [
        *GENERATE[args.task], "--batch-size", str(args.batch_size), "--truncate-source",
        "--max-source-positions", flag_value(train, "--max-source-positions"), *shlex.split(args.generate_args)],
        args.remove_bpe, device_flags(args), subset)


def eval_lm_command(args, checkpoint):
    """makd-compress's fairseq-eval-lm on the test set, with the training run's block layout."""
    from makd_fairseq.compress import eval_lm_command as eval_lm

    common = common_flags(args.size)
    layout = [f for name in ("--tokens-per-sample", "--sample-break-mode") for f in (name, flag_value(common, name))]
    return eval_lm(args.data, checkpoint, [*layout, "--max-tokens", "6000"], device_flags(args))


def continue_command(args, checkpoint, out):
    """``benchmarks.lm``: greedy continuations of ``--continue-docs`` test descriptions into ``out``."""
    return [sys.executable, "-m", "benchmarks.lm", checkpoint, out, "--data", args.data, "--remove-bpe",
            args.remove_bpe, "--docs", str(args.continue_docs), "--batch-size", str(args.batch_size)]


def validate_command(args, checkpoint):
    """fairseq-validate on the valid split with the training runs' data flags and criterion (nll in bits)."""
    flags = common_flags(args.size)
    keep = [f for name in ("--max-source-positions",) for f in (name, flag_value(flags, name))]
    return ["fairseq-validate", args.data, "--user-dir", USER_DIR, "--path", checkpoint, "--valid-subset", "valid",
            "--task", "translation", "--model-overrides", repr({"data": args.data}),
            "--truncate-source", *keep, "--skip-invalid-size-inputs-valid-test", "--max-tokens", "4000",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--num-workers", "0", "--cpu"]
