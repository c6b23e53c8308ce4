"""``makd-compress``: teacher + data + budget -> a distilled low-rank student and a report, in one command.

    makd-compress --teacher T.pt --data BIN --param-budget 0.5 --out DIR
                  [--method word_kd|makd|ce] [--max-update N] [--metric rouge|bleu|chrf|ppl] [--select-on nll|metric]
                  [--fairseq-args "..."]

The stages (init, train, evaluate, report), each reused when its output exists: ``makd_fairseq.compress``.
"""

import argparse
import logging
import os
import shlex
import sys
import time

from .. import compress, fairseq_logs
from ..checkpoint import CheckpointError, load_checkpoint, model_args
from ..compress import METHODS, METRICS, CompressError
from ..lowrank import RankError
from ..student import is_lm, task_flags
from . import fail


def race_length(text):
    """--race's value: a number of updates, or 'full' (``compress.FULL_RACE``)."""
    if text == compress.FULL_RACE:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of updates or '{compress.FULL_RACE}'") from None


def get_parser():
    parser = argparse.ArgumentParser(prog="makd-compress", description="teacher + data + budget -> a distilled "
                                                                       "low-rank student and a report, in one command")
    parser.add_argument("--teacher", required=True, metavar="T.pt")
    parser.add_argument("--data", required=True, metavar="BIN", help="the teacher's binarized data (train/valid/test)")
    parser.add_argument("--param-budget", type=float, required=True, metavar="F",
                        help="student parameters as a fraction of the teacher's (embeddings included)")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--method", choices=sorted(METHODS),
                        help="the training recipe (criterion flags: makd_fairseq.compress.METHODS). Default: word_kd "
                             "(CE + KL at T 1) for sequence-to-sequence teachers, where it led makd on both tasks of "
                             "the diagnosis (validation; docs/benchmarks.md), makd for language models")
    parser.add_argument("--init", choices=("whiten", "svd"), default="whiten")
    parser.add_argument("--calibration-tokens", type=int, default=32768)
    parser.add_argument("--max-update", type=int, default=15000,
                        help="cap on training updates (a training ends earlier when validation stops improving: "
                             "--patience; in the benchmark's rerun at patience 8 after 5,750 updates to the cap)")
    parser.add_argument("--validate-interval-updates", type=int, default=250)
    parser.add_argument("--patience", type=int, default=8,
                        help="validations without a better value (--select-on) before stopping (8: with 4, five of "
                             "six summarization students of the benchmark's rerun stopped while their validation "
                             "metric still rose; docs/benchmarks.md, \"A longer patience, measured\")")
    parser.add_argument("--select-on", choices=("nll", "metric"),
                        help="choose the checkpoint and stop on the validation nll, or on --metric of beam-search "
                             "hypotheses of the valid split (--beam, the lengths in --eval-args; logged as "
                             "valid_bleu / valid_chrf / valid_rougeL). Default: metric; nll for language models "
                             "(their metric, perplexity, is the nll)")
    parser.add_argument("--race", type=race_length, metavar="N",
                        help="'full': train --method and plain cross-entropy fine-tuning (ce) from the same init, "
                             "each to its own stop, and keep the one with the better validation metric (twice the "
                             "training); the report says which. N: race them N updates each and continue the better "
                             "to --max-update (a quarter of the cap, at most 1000 updates, in whole validation "
                             "intervals: 1000 of 15000). Default: full with --select-on metric, else 0 (no race)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--metric", choices=METRICS, help="default: ppl for language models, else rouge")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per generation batch")
    parser.add_argument("--remove-bpe", default="sentencepiece", help="fairseq-generate's --remove-bpe ('none': off)")
    parser.add_argument("--fairseq-args", default="", help="more fairseq-train flags, one quoted string")
    parser.add_argument("--eval-args", default="", help="more fairseq-generate / fairseq-eval-lm flags")
    parser.add_argument("--speed-rounds", type=int, default=3, metavar="N",
                        help="the report's speed: after the evaluation passes (the warm-up), N interleaved rounds of "
                             "teacher and student generation, median and range (as benchmarks.speed times it)")
    parser.add_argument("--gpu", action="store_true", help="train and decode on the GPU (default: --cpu)")
    parser.add_argument("--quiet", action="store_true",
                        help="do not echo fairseq's output (still in DIR/*.log); the progress bar stays")
    parser.add_argument("--force", action="store_true", help="use a non-empty --out that holds another run")
    return parser


def resolve_defaults(args, lm) -> None:
    """The defaults that depend on the teacher. Sequence-to-sequence: word-level KD at T 1 (``word_kd``), the checkpoint
    chosen on the task's metric, and the method races plain fine-tuning (on en→de plain fine-tuning beat every
    distillation variant: a user must not get a student worse than plain fine-tuning unannounced). On the diagnosis's
    curves (docs/benchmarks.md, "Diagnosis"; one seed per task, validation) a race over a quarter of the cap gave the
    best student of makd, word_kd and ce on both tasks: it kept plain fine-tuning on en→de and word KD on
    summarization, where a race of makd kept makd, 0.6 ROUGE-L below word KD. The race is now a full one (each racer
    to its own stop, the better kept): trained on, the racers' order at 1,000 updates did not hold (the rerun's
    race-length rule, decided on validation: docs/benchmarks.md, "The race's length"). No race when no validation
    comes before the cap (``compress.default_race`` is 0). The cap is 15,000: trainings end when validation stops
    improving. Language models: makd (not diagnosed), the validation nll (their perplexity), no race."""
    if args.method is None:
        args.method = "makd" if lm else "word_kd"
    if args.select_on is None:
        args.select_on = "nll" if lm else "metric"
    if args.race is None:
        plain = lm or args.select_on != "metric" or args.method == compress.RACE_BASELINE
        short = compress.default_race(args.max_update, args.validate_interval_updates)
        args.race = compress.FULL_RACE if short and not plain else 0


def run_arguments(args) -> dict:
    """What identifies a run in DIR/compress.json (a resumed run must have the same): the arguments, defaults resolved,
    less those that do not change the result (the speed rounds time it: DIR/generate/speed.json is redone)."""
    arguments = {k: v for k, v in vars(args).items() if k not in ("force", "quiet", "speed_rounds")}
    for name, default in (("select_on", "nll"), ("race", 0)):  # flags added later: a run started before resumes
        if arguments[name] == default:
            del arguments[name]
    return {**arguments, "teacher": os.path.abspath(args.teacher), "data": os.path.abspath(args.data)}


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    if args.quiet:  # fairseq's INFO lines from the in-process init (subprocess output goes to DIR/*.log anyway)
        logging.getLogger().setLevel(logging.WARNING)
    started = time.time()
    command = shlex.join(["makd-compress", *(argv if argv is not None else sys.argv[1:])])
    path = lambda *p: os.path.join(args.out, *p)  # noqa: E731
    init = None
    # every check, and the init itself, before DIR is created or touched: bad input leaves nothing behind
    try:
        if not os.path.isdir(args.data):
            raise CompressError(f"--data {args.data}: no such directory (binarize with fairseq-preprocess)")
        if args.speed_rounds < 1:
            raise CompressError(f"--speed-rounds must be at least 1, got {args.speed_rounds}")
        if not 0 < args.param_budget < 1:
            raise CompressError(f"--param-budget must be in (0, 1), got {args.param_budget}")
        state = load_checkpoint(args.teacher)
        lm = is_lm(model_args(state).arch)
        args.metric = args.metric or ("ppl" if lm else "rouge")
        if (args.metric == "ppl") != lm:
            raise CompressError(f"--metric {args.metric} does not fit a {'decoder-only' if lm else 'sequence-to-sequence'}"
                                " teacher (ppl is for language models)")
        if lm and args.race:
            raise CompressError("--race is for sequence-to-sequence teachers")
        if lm and args.select_on == "metric":
            raise CompressError("--select-on metric is for sequence-to-sequence teachers: a language model's metric "
                                "(perplexity) is its validation nll already")
        resolve_defaults(args, lm)
        if args.race and not compress.full_race(args) and not 0 < args.race < args.max_update:
            raise CompressError(f"--race {args.race} must be between 0 and --max-update {args.max_update}")
        if args.race and args.select_on != "metric":
            raise CompressError("--race compares the racers on the task's metric: add --select-on metric (on the "
                                "validation nll plain fine-tuning wins by construction: distillation pulls away "
                                "from the references)")
        if args.race and args.method == compress.RACE_BASELINE:
            raise CompressError(f"--race runs --method against {compress.RACE_BASELINE}: choose another --method")
        manifest = {"arguments": run_arguments(args), "command": command}
        start_over = compress.check_out_dir(args, manifest)
        if start_over or not os.path.isfile(path("init.pt")):
            print(f"[makd-compress] init: --init {args.init} factors at uniform ranks, --param-budget "
                  f"{args.param_budget} (makd-init's make_student)", flush=True)
            init = compress.init_student(args, state)
    except (CompressError, CheckpointError, RankError, FileNotFoundError, RuntimeError, ValueError) as e:
        return fail("makd-compress", e)
    args.task_flags = task_flags(state)  # the teacher's language pair, truncation or block layout, for every stage
    del state
    if init is not None:
        if start_over:
            compress.clear_run(args)
        compress.write_init(args, *init, manifest)  # from here on DIR is this run's
        if not args.quiet:
            print(init[1], flush=True)
    else:
        compress.write_manifest(args, manifest)

    if not fairseq_logs.finished(fairseq_logs.read(path("train.log"))):
        method = compress.race(args, lm, path("init.pt"))["winner"] if args.race else args.method
        if not compress.full_race(args):  # after a full race the winner's run is the whole training
            print(f"[makd-compress] train{'' if method == args.method else ' ' + method}", flush=True)
            compress.train(args, lm, path("init.pt"), path("train.log"), method)
    compress.keep_best(args)
    results, warmed_up = compress.evaluate_both(args, lm)  # both evaluated just now: the timing's warm-up
    report = compress.report(args, lm, manifest, results, compress.time_both(args, lm, warmup=0 if warmed_up else 1),
                             round(time.time() - started, 1))
    compress.write_report(args, report)
    print(compress.report_markdown(report))
    print(f"wrote {path('student.pt')}, {path('report.md')} and {path('report.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
