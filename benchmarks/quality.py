#!/usr/bin/env python3
"""Quality of low-rank students against every baseline, on one binarized task, from real fairseq runs.

    python3 -m benchmarks.quality --task summarization --data /tmp/debian1k/summarization/bin \\
        --size cpu --work /tmp/qb/summarization --jobs 2

1. Teacher: ``benchmarks.train_teacher`` (fairseq-train, label-smoothed CE) unless WORK/teacher/checkpoint_best.pt
   exists.
2. Students for each ``--budgets`` fraction of the teacher's parameters: ``makd-init`` (uniform ranks; ``--init
   whiten`` factors fitted to the teacher's inputs on train, or plain truncated SVD) and ``makd-shrink`` (dense,
   fewer copied layers, as in shrink-and-fine-tune).
3. Sequence-level KD data, if a ``sizes.SEQ_KD_METHODS`` method runs: ``makd-teacher-data --splits train,valid``
   writes WORK/seq_kd_data, the data with every train and valid target replaced by the teacher's beam output (the
   generation flags of step 5; ``--splits train`` with ``--select-on metric``).
4. ``sizes.QUALITY_METHODS``: every trained method starts from its student and runs ``fairseq-train`` with the same
   flags and seed until it converges (``sizes.until_converged``: validation every N updates, ``--patience``
   validations without a lower ``nll_loss``, a cap on updates); ``--best-checkpoint-metric nll_loss`` (the one number
   every criterion logs alike) picks the checkpoint. Each method is validated on the targets it is trained on: the
   references, or for the seq-KD methods the teacher's outputs for the valid sources (on the references their nll
   rises while their own objective still falls, and the rule would stop them after a few hundred updates).
   ``--select-on metric`` chooses and stops on the task's metric instead (BLEU, ROUGE-L of beam-search hypotheses of
   the valid split with step 5's generation flags: ``--eval-metric``, makd_fairseq/validation.py), for every method
   on the references (the seq-KD data then replaces the train targets only); either way every validation's nll and
   metric (when logged) are kept in each seed's record as its ``curve``.
   ``--jobs`` runs that many at once, one thread each.
5. ``fairseq-generate`` with beam search on the test set, sentencepiece removed; summarization is scored with
   ``rouge-score`` (ROUGE-1/2/L F1, Porter stemming), translation with sacreBLEU (BLEU and chrF, signatures kept).
   ``--task language_modeling`` (decoder-only, ``lm_*`` sizes): ``fairseq-eval-lm`` perplexity on test and ROUGE-L
   of greedy continuations (fairseq's generator) of held-out descriptions from their first sentence.

Steps whose outputs exist in WORK are reused (so an interrupted run resumes); their recorded times are kept in
WORK/stages.json. ``--reuse RESULTS_JSON`` resumes on another machine: the seeds an earlier run finished are taken
from its results file and kept hypotheses, not trained again, once this run's teacher has shown it is the same model
(same data hash, the same test hypotheses byte for byte). Writes ``--out`` (JSON: per method its scores, parameters,
best validation nll and the updates it trained for), the same path with ``.md`` (table) and ``.png`` (quality vs
budget).
"""
import argparse
import json
import os
import threading
import time

from makd_fairseq import fairseq_logs
from makd_fairseq.compress import default_race
from makd_fairseq.files import git_state, write_json, write_text

from . import RESULTS
from .archive import reusable_seeds
from .commands import (flag_value, generate_command, selection_flags, seq_kd_splits, student_training,
                       teacher_command, teacher_data_command)
from .provenance import command, hardware
from .diagnosis import collect as collect_curves
from .diagnosis import table as diagnosis_table
from .records import add_races, method_entries, seed_record, seq_kd_manifest, teacher_arch, with_races
from .report import plot, table
from .runner import Run, model_name, seeds_of
from .scoring import INTERVAL, METRICS, compare_with_makd, read_generation, score
from .sizes import (ALL_METHODS, GENERATE, QUALITY_METHODS, RACES, SEQ_KD_METHODS, STUDENT_TRAIN, TEACHER_ARCH,
                    common_flags, is_lm_size)
from .stages import evaluations, finished, has, plan, score_models, seq_kd_dir, time_generation

# decoder-only students: no dense shrink-and-fine-tune baseline (makd-shrink cuts encoder-decoder models)
LM_METHODS = ("teacher", "svd_only", "svd_ce", "svd_word_kd", "makd")


def parse(argv):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(METRICS))
    parser.add_argument("--data", required=True, help="fairseq-preprocess output (prepare.py's OUT/<task>/bin)")
    parser.add_argument("--size", choices=sorted(STUDENT_TRAIN), default="cpu")
    parser.add_argument("--work", required=True, help="teacher, students, logs and generations go here")
    parser.add_argument("--teacher", help="an already trained teacher checkpoint (default: train one with "
                                          "benchmarks.train_teacher --size SIZE into WORK/teacher)")
    parser.add_argument("--out", help="results JSON (default: benchmarks/results/<task>.json)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--methods", nargs="+", choices=[*ALL_METHODS, *RACES],
                        help="default: every method of sizes.QUALITY_METHODS (language modeling: " + ", ".join(LM_METHODS)
                             + "); sizes.DIAGNOSIS_METHODS only when named")
    parser.add_argument("--stopping", type=int, nargs=3, metavar=("CAP", "EVERY", "PATIENCE"),
                        help="students validate every EVERY updates and stop after PATIENCE validations without "
                             "improvement, at most CAP updates (default: the size's rule in sizes.STUDENT_TRAIN)")
    parser.add_argument("--extend", metavar="WORK",
                        help="the work directory of a run with a lower --stopping cap or patience and otherwise "
                             "the same trainings: each training not begun here continues that run's finished "
                             "training of the same student from its last checkpoint instead of starting over (its "
                             "log and validations kept; one that stopped early under the same patience is taken as "
                             "it is)")
    parser.add_argument("--validation-only", action="store_true",
                        help="train the students and report their validation curves only (nothing is decoded on "
                             "test): issue 34's diagnosis, read by python3 -m benchmarks.diagnosis")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="training seeds of every trained method at --seeded-budgets (default: %(default)s)")
    parser.add_argument("--seeded-budgets", type=float, nargs="*", default=[0.5],
                        help="budgets trained with every --seeds; the others with the first seed only")
    parser.add_argument("--time-generation", action="store_true",
                        help="also time each model's generation, one at a time (run when nothing else is running)")
    parser.add_argument("--partial", action="store_true",
                        help="score and report the students that have finished training; train nothing (a long run "
                             "goes on in another process; its results so far)")
    parser.add_argument("--reuse", metavar="RESULTS_JSON",
                        help="take over the trained seeds of an earlier run of this benchmark (e.g. on a machine "
                             "since lost) instead of training them again: their records from RESULTS_JSON, their test "
                             "hypotheses (hypotheses/<task>/ beside it) rescored here; only when that run had this "
                             "data hash and this run's teacher writes its test hypotheses byte for byte")
    parser.add_argument("--hypotheses", help="where the xz-compressed hypotheses go (default: "
                                             "benchmarks/results/hypotheses/<task> next to --out)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings/generations run at once")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per job")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where students train and decode: cuda runs a CPU size's fp32 recipe on the GPU "
                             "(the --jobs share it); the initial students are made as on the CPU")
    parser.add_argument("--select-on", choices=("nll", "metric"), default="nll",
                        help="students' checkpoint choice and stopping: validation nll (default), or the task's "
                             "metric by beam search on the valid split (translation BLEU, summarization ROUGE-L; "
                             "the teacher's recipe is unchanged)")
    parser.add_argument("--init", choices=("whiten", "svd"), default="whiten",
                        help="makd-init's factors for every low-rank student: whitened on the train split's inputs "
                             "(default; benchmarks/results/sweep.json) or the plain truncated SVD")
    parser.add_argument("--batch-size", type=int, default=64, help="fairseq-generate sentences per batch")
    parser.add_argument("--remove-bpe", default="sentencepiece",
                        help="fairseq-generate's --remove-bpe before scoring ('none' for word-level data)")
    parser.add_argument("--generate-args", default="", help="more fairseq-generate flags, e.g. BART's "
                                                             "'--bpe gpt2' (one quoted string)")
    parser.add_argument("--continue-docs", type=int, default=500,
                        help="language modeling: test descriptions continued from their first sentence")
    args = parser.parse_args(argv)
    lm = args.task == "language_modeling"
    if args.extend and not os.path.isdir(args.extend):
        parser.error(f"--extend {args.extend}: no such directory (a benchmarks.quality --work directory)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible here (torch.cuda.is_available() is False)")
    if lm != is_lm_size(args.size):
        parser.error(f"--size {args.size} does not fit --task {args.task} (language modeling takes lm_* sizes)")
    args.methods = args.methods or list(LM_METHODS if lm else QUALITY_METHODS)
    if lm and "dense_sft_kd" in args.methods:
        parser.error("dense_sft_kd (makd-shrink) is for encoder-decoder models, not --task language_modeling")
    if lm and args.select_on == "metric":
        parser.error("--select-on metric is for encoder-decoder tasks: a language model's perplexity is its nll")
    if lm and set(SEQ_KD_METHODS) & set(args.methods):
        parser.error(f"{', '.join(SEQ_KD_METHODS)} decode sources with the teacher: encoder-decoder models only, "
                     "not --task language_modeling")
    args.out = args.out or os.path.join(RESULTS, f"{args.task}.json")
    if not os.path.isfile(os.path.join(args.data, "dict.txt")) and not any(
            f.startswith("dict.") for f in (os.listdir(args.data) if os.path.isdir(args.data) else [])):
        parser.error(f"--data {args.data}: no fairseq dictionary there (run examples/debian_descriptions/prepare.py)")
    if not args.teacher and args.size not in TEACHER_ARCH:
        parser.error(f"--size {args.size} has no teacher recipe in benchmarks/sizes.py: give --teacher T.pt")
    if args.teacher and not os.path.isfile(args.teacher):
        parser.error(f"--teacher {args.teacher}: no such file")
    if args.reuse and not os.path.isfile(args.reuse):
        parser.error(f"--reuse {args.reuse}: no such file")
    if any(not 0 < b < 1 for b in args.budgets):
        parser.error(f"--budgets must be fractions in (0, 1), got {args.budgets}")
    args.races = [m for m in args.methods if m in RACES]
    if args.races and (lm or args.select_on != "metric"):
        parser.error(f"{', '.join(args.races)}: a race is decided on the validation metric of an encoder-decoder "
                     "task: add --select-on metric")
    # what a race derives from is trained (named or not); the race itself trains nothing
    args.methods = list(dict.fromkeys(m for name in args.methods for m in (RACES[name][:2] if name in RACES
                                                                             else (name,))))
    if "teacher" not in args.methods:
        args.methods.insert(0, "teacher")  # every score is also reported as a share of the teacher's
    return args


def main(argv=None):
    args = parse(argv)
    lm = args.task == "language_modeling"
    started = time.time()
    import makd_fairseq  # noqa: F401  (checkpoint allow-list for the parameter counts)

    os.makedirs(args.work, exist_ok=True)
    run = Run(args)
    teacher = args.teacher or run.path("teacher", "checkpoint_best.pt")
    if not args.teacher:
        run.stage("teacher", teacher_command(args.data, args.size, run.path("teacher"), ["--log-interval", "100"]),
                  run.path("teacher.log"), lambda: os.path.isfile(teacher) and finished(run.path("teacher.log")),
                  resumes=True)
    if "teacher" not in run.stages and os.path.isfile(run.path("teacher.log")):  # trained by an earlier command
        run.stages["teacher"] = fairseq_logs.training_seconds(fairseq_logs.read(run.path("teacher.log")))

    manifest = os.path.join(args.data, "..", "..", "manifest.json")  # prepare.py's hash of its outputs
    data_hash = json.load(open(manifest)).get("sha256") if os.path.isfile(manifest) else None
    reused = {}
    if args.reuse:  # the teacher's test generation first: it decides whether the earlier students fit this teacher
        log = run.path("generate", "teacher.txt")
        run.stage("generate teacher", generate_command(args, teacher), log,
                  lambda: has(log, "Generate test with beam"))
        reused = reusable_seeds(args, data_hash, log, training_fields(args))

    models, inits_of, jobs = plan(run, teacher, reused)
    seq_kd_data, seq_kd_lock = seq_kd_dir(run), threading.Lock()
    built = os.path.join(seq_kd_data, "teacher_data.json")
    if set(SEQ_KD_METHODS) & set(args.methods) and os.path.isfile(built) \
            and ",".join(json.load(open(built))["splits"]) != seq_kd_splits(args):
        raise SystemExit(f"benchmarks.quality: {seq_kd_data} holds the teacher's outputs for "
                         f"{','.join(json.load(open(built))['splits'])}; --select-on {args.select_on} needs them for "
                         f"{seq_kd_splits(args)}: use another --work")

    def train(name, cmd, log, done, needs_seq_kd):
        if needs_seq_kd and not done():
            with seq_kd_lock:  # built once, by the first sequence-level KD training that needs it
                run.stage("seq_kd_data", teacher_data_command(args, teacher, seq_kd_data), run.path("seq_kd_data.log"),
                          lambda: os.path.isfile(os.path.join(seq_kd_data, "teacher_data.json")))
        run.stage(name, cmd, log, done, resumes=True)

    pending = []
    if args.partial:  # report what has finished training, start nothing new
        pending = [name for name, _, log, done, _ in jobs if not done()]
        models = [m for m in models if m[2] is None or model_name(*m[:3]) not in pending]
        if not any(m[2] is not None for m in models):
            raise SystemExit("benchmarks.quality: --partial: no student has finished training yet")
    else:
        run.pool(train, jobs)
    if args.validation_only:
        return report_validation(run, argv, models, pending, data_hash, started)
    stages, outputs = evaluations(run, models, lm)
    run.pool(run.stage, stages)
    speeds = time_generation(run, models) if args.time_generation and not lm else {}

    hyp_dir = args.hypotheses or os.path.join(os.path.dirname(os.path.abspath(args.out)), "hypotheses", args.task)
    scored, signatures, references = score_models(args, models, outputs, reused, hyp_dir)
    stopping = training_fields(args)["stopping"]
    races = add_races(run, args.races, models, scored,
                      default_race(stopping["max_update"], stopping["validate_interval_updates"]), reused)
    methods = with_races(method_entries(run, models, scored, reused, inits_of, speeds), races)
    for anchor in ["makd", *args.races]:  # against makd, and against each raced recipe (makd-compress's) run
        compare_with_makd(args.task, methods, models, scored, references, anchor=anchor)
    result = {
        "task": args.task, "size": args.size, "teacher_arch": teacher_arch(teacher),
        "methods": methods, "scoring": signatures, "pending": pending,
        "seeds": {f"{b:g}": seeds_of(args, b) for b in args.budgets},
        "paired_bootstrap": INTERVAL,
        **training_fields(args),
        "seq_kd_data": seq_kd_manifest(seq_kd_data),
        "generation": "greedy continuations, 40 new tokens" if lm else " ".join(GENERATE[args.task]),
        "speed": None if not speeds else "fairseq-generate's sentences/s on the test set, one model at a time, "
                                         f"{args.threads} thread(s), batch {args.batch_size}, the first seed trained "
                                         "in this run",
        "reused": None if not reused else {
            "results": os.path.abspath(args.reuse), "seeds": [model_name(*m[:3]) for m in models
                                                   if m[3] is None and tuple(m[:3]) not in races]},
        "hypotheses": os.path.relpath(hyp_dir, os.path.dirname(os.path.abspath(args.out))),  # where this file is
        **provenance(run, argv, data_hash, started),
    }
    write_json(args.out, result)
    stem = os.path.splitext(args.out)[0]
    write_text(stem + ".md", table(result))
    plot(result, stem + ".png")
    print(table(result))
    print(f"wrote {args.out}, {stem}.md and {stem}.png")


def training_fields(args):
    """How the students were made and trained, for a results file."""
    return {"student_init": f"makd-init --init {args.init} (uniform ranks)",
            "student_training": " ".join(common_flags(args.size) + student_training(args)),
            "stopping": {name.strip("-").replace("-", "_"): int(flag_value(student_training(args), name))
                         for name in ("--max-update", "--patience", "--validate-interval-updates")},
            "checkpoint_selection": " ".join(selection_flags(args))}


def gpu_name(args):
    """', trained on <the GPU>' for --device cuda (the students trained there; their initial students on the CPU)."""
    if args.device != "cuda":
        return ""
    import torch

    return f", students trained on {torch.cuda.get_device_name()}"


def provenance(run, argv, data_hash, started):
    """The command, commit, data and machine of a results file, and the time its steps took."""
    args = run.args
    return {"command": command("benchmarks.quality", argv), "scored_at": git_state(), "data_sha256": data_hash,
            "hardware": hardware(f"{args.jobs} job(s) of {args.threads} thread(s)" + gpu_name(args)),
            # this invocation's wall time; the steps it reused from WORK took stage_seconds (sum: compute time)
            "stage_seconds": run.stages, "stage_seconds_sum": round(sum(v or 0 for v in run.stages.values()), 1),
            "wall_s": round(time.time() - started, 1)}


def teacher_on_valid(run, teacher):
    """The teacher's scores on the valid split, as the students' ``valid_<metric>`` measures theirs (makd_fairseq/
    validation.py: makd-score of fairseq-generate with the test generation's flags): what their share of the teacher
    is taken of in the diagnosis."""
    log = run.path("generate", "teacher.valid.txt")
    run.stage("generate teacher valid", generate_command(run.args, teacher, subset="valid"), log,
              lambda: has(log, "Generate valid with beam"))
    return score(run.args.task, *read_generation(log))[0]


def report_validation(run, argv, models, pending, data_hash, started):
    """--validation-only: each trained student's record (validation curve, updates, the commits it trained at), the
    teacher's scores on the valid split and the diagnosis table of the curves; nothing is decoded on test."""
    args = run.args
    methods = []
    for method, budget in dict.fromkeys((m, b) for m, b, s, _ in models if s is not None):
        seeds = [seed_record(run, m, s, c, {}) for m, b, s, c in models
                 if (m, b) == (method, budget) and c is not None and model_name(m, b, s) not in pending]
        methods.append({"method": method, "budget": budget, "flags": ALL_METHODS[method][1], "seeds": seeds})
    write_json(args.out, {"task": args.task, "size": args.size, "device": args.device, "validation_only": True,
                          "teacher_valid": teacher_on_valid(run, models[0][3]), "methods": methods,
                          "pending": pending, **training_fields(args), **provenance(run, argv, data_hash, started)})
    text = diagnosis_table(collect_curves([args.out]))
    write_text(os.path.splitext(args.out)[0] + ".md", text + "\n")
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
