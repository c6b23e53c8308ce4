"""The stages of a quality benchmark run over its models (method, budget, seed or None if untrained, checkpoint or
None if taken over with --reuse): the students to make and train, their evaluations, the timed generations, and
scoring what they wrote."""
import json
import os
import sys

from makd_fairseq import fairseq_logs
from makd_fairseq.files import copy_file, write_json, write_text

from .archive import keep_text
from .commands import continue_command, eval_lm_command, flag_value, generate_command, train_command
from .runner import model_name, read_json, seeds_of, student_paths
from .scoring import read_continuations, read_generation, read_lm_scores, score
from .sizes import ALL_METHODS, SEQ_KD_METHODS, STUDENT_KINDS


def finished(log):
    """fairseq-train ran to its end (a checkpoint_best.pt alone may be from an interrupted run)."""
    return fairseq_logs.finished(fairseq_logs.read(log))


FREE = ("--max-update", "--patience", "--save-dir", "--finetune-from-model", "--keep-interval-updates")  # what may
# differ from the training one extends (the last: what stays on disk)
LONGER = ("--max-update", "--patience")  # of which the extension's may only be higher


DEVICE = ("--cpu",)  # where a training runs: one begun on a lent GPU goes on on the CPU (as a resumed one does)


def _fixed(cmd):
    """``cmd`` without the flags of ``FREE`` and their values, and without ``DEVICE``."""
    cmd = [str(c) for c in cmd]
    return [c for i, c in enumerate(cmd)
            if c not in FREE and c not in DEVICE and (i == 0 or cmd[i - 1] not in FREE)]


def extend(source, save, cmd):
    """Begin the training ``cmd`` (into ``save``) where the same student's training in ``source`` (a run with a lower
    cap or a lower patience) ended: its checkpoints, log and provenance are copied into ``save``, whose fairseq-train
    then continues from the checkpoint_last.pt to its own stop, the log keeping every validation. fairseq reseeds every
    update from the seed and the update number and restores the optimizer, schedule (inverse_sqrt: no cap in it) and
    data position, and our tasks the patience count (``makd_fairseq.tasks.patience``), so the result is a training to
    the higher cap or patience, less the updates done twice (on the fixtures the very curve of a straight run; on the
    real data it leaves that curve after the resume point, by as much as another run of the same recipe:
    docs/benchmarks.md). One that stopped early under the same patience stopped where the longer one would (same
    grid) and is kept whole, finished; under a lower patience it goes on, its count of validations without
    improvement carried over. Nothing is copied when ``save`` has begun or ``source`` has not finished; a source
    whose command differs in more than ``FREE`` and the device, or has a higher cap or patience, is refused (the
    initial student is not compared: the training goes on from the source's weights). One that must go on but has no
    checkpoint_last.pt (``benchmarks.carry`` brings a finished training back with its best checkpoint only) is not
    copied: the training begins afresh, with its own log, and says so."""
    log = os.path.join(source, "train.log")
    if os.path.exists(os.path.join(save, "train.log")) or not finished(log):
        return False
    started = read_json(log + ".provenance.json", [])
    theirs = started[-1]["command"] if started else []
    if _fixed(theirs) != _fixed(cmd) or any(int(flag_value(theirs, f)) > int(flag_value(cmd, f)) for f in LONGER):
        raise SystemExit(f"benchmarks: --extend: the training in {source} is not this one with a lower cap or "
                         f"patience (its fairseq-train command differs beyond {', '.join(FREE)}, or its cap or "
                         "patience is higher)")
    text = fairseq_logs.read(log)
    # ended at its cap, or stopped early with less patience than this one's: it goes on (a log without the end is
    # resumed) from its checkpoint_last.pt, without which fairseq-train would begin afresh under the source's log
    goes_on = not fairseq_logs.early_stopped(text) or flag_value(theirs, "--patience") != flag_value(cmd, "--patience")
    if goes_on and not os.path.isfile(os.path.join(source, "checkpoint_last.pt")):
        print(f"benchmarks: --extend: {source} has no checkpoint_last.pt to go on from (a finished training carried "
              f"back from a lent machine holds its best checkpoint only): {save} trains afresh", file=sys.stderr)
        return False
    os.makedirs(save, exist_ok=True)
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        if os.path.isfile(os.path.join(source, name)):
            copy_file(os.path.join(source, name), os.path.join(save, name))
    if goes_on:
        text = "".join(line for line in text.splitlines(keepends=True)
                       if fairseq_logs.DONE not in line and fairseq_logs.EARLY_STOP not in line)
    write_json(os.path.join(save, "train.log.provenance.json"), started)
    write_text(os.path.join(save, "train.log"), text)
    return True


def has(path, text):
    return os.path.isfile(path) and text in open(path).read()


def seq_kd_dir(run):
    """Where the sequence-KD data is (built): WORK/seq_kd_data, or the --extend run's, whose trainings go on here on
    the very data they began on (the same teacher's outputs: a beam search over every training source not run
    twice)."""
    extended = os.path.join(run.args.extend, "seq_kd_data") if getattr(run.args, "extend", None) else None
    if extended and os.path.isfile(os.path.join(extended, "teacher_data.json")):
        return extended
    return run.path("seq_kd_data")


def plan(run, teacher, reused):
    """The students to make and train: makes the initial students (stages), returns the models (method, budget, seed
    or None if untrained, checkpoint or None if taken over with --reuse), the student each trained method starts from
    ((method, budget) -> checkpoint) and the trainings (name, command, log, done, needs the seq-KD data)."""
    args = run.args
    models = [("teacher", None, None, teacher)]
    inits_of, jobs = {}, []
    for budget in args.budgets:  # in the order given: the first budget's every seed trains before the next budget
        inits, key = student_paths(run, budget)
        for kind, (tool, kind_flags) in STUDENT_KINDS.items():
            if any(ALL_METHODS[m] and ALL_METHODS[m][0] == kind for m in args.methods):
                init_flags = ["--init", args.init, "--data", args.data] if tool == "makd-init" else []
                run.stage(f"{key}/{kind}", [tool, "--teacher", teacher, "--param-budget", str(budget), *init_flags,
                                            *kind_flags, "--out", inits[kind]], run.path(key, f"{kind}.log"),
                          lambda p=inits[kind]: os.path.isfile(p))
        models += [(m, budget, None, inits[ALL_METHODS[m][0]]) for m in args.methods[1:]
                   if ALL_METHODS[m][1] is None]
        for seed in seeds_of(args, budget):
            for method in args.methods[1:]:
                init, flags = ALL_METHODS[method]
                if flags is None:
                    continue
                save = run.path(key, method, f"seed{seed}")
                log = os.path.join(save, "train.log")
                inits_of[(method, budget)] = inits[init]
                if (method, budget, seed) in reused and not finished(log):
                    models.append((method, budget, seed, None))
                    continue
                data = seq_kd_dir(run) if method in SEQ_KD_METHODS else None
                cmd = train_command(args, teacher, inits[init], [*flags, "--seed", str(seed)], save, data=data)
                if args.extend:
                    extend(os.path.join(args.extend, os.path.relpath(save, run.work)), save, cmd)
                jobs.append((model_name(method, budget, seed), cmd, log, lambda p=log: finished(p),
                             method in SEQ_KD_METHODS))
                models.append((method, budget, seed, os.path.join(save, "checkpoint_best.pt")))
    return models, inits_of, jobs


def evaluations(run, models, lm):
    """The evaluation stages of ``models`` and, per model, the files they write (None for a model taken over)."""
    stages, outputs = [], []
    for method, budget, seed, checkpoint in models:
        name = model_name(method, budget, seed).replace("/", "_")
        log = run.path("generate", name + ".txt")
        if checkpoint is None:
            outputs.append(None)
        elif lm:
            cont = run.path("generate", name + ".continuations.tsv")
            stages.append((f"eval-lm {name}", eval_lm_command(run.args, checkpoint), log,
                           lambda p=log: has(p, "Perplexity:")))
            stages.append((f"continue {name}", continue_command(run.args, checkpoint, cont), cont + ".log",
                           lambda p=cont: os.path.isfile(p)))
            outputs.append((log, cont))
        else:
            stages.append((f"generate {name}", generate_command(run.args, checkpoint), log,
                           lambda p=log: has(p, "Generate test with beam")))
            outputs.append((log,))
    return stages, outputs


def time_generation(run, models):
    """Each model's generation throughput, measured one model at a time (the first seed of a trained method whose
    checkpoint is here; seeds taken over with ``--reuse`` have none): fairseq-generate on the test set with the
    benchmark's beam, batch and threads; the 1-minute load average before each measurement is kept, so a reader can
    tell a quiet machine from a busy one. Returns {(method, budget): speed, with the seed timed}."""
    loads_path = run.path("timing", "load.json")
    loads = json.load(open(loads_path)) if os.path.isfile(loads_path) else {}
    speeds = {}
    for method, budget, seed, checkpoint in models:
        if checkpoint is None or (method, budget) in speeds:
            continue
        name = model_name(method, budget, seed)
        log = run.path("timing", name.replace("/", "_") + ".txt")
        done = lambda p=log: has(p, "Translated")  # noqa: E731
        if not done():
            loads[name] = round(os.getloadavg()[0], 2)
            write_json(loads_path, loads)
        run.stage(f"time {name}", generate_command(run.args, checkpoint), log, done)
        speeds[(method, budget)] = {**fairseq_logs.generation_speed(fairseq_logs.read(log), log),
                                    "load_before": loads.get(name), "seed": seed}
    return speeds


def score_models(args, models, outputs, reused, hyp_dir):
    """{(method, budget, seed): (metrics, hypotheses)}, the scoring signatures and the references; every model's
    hypotheses (and the references) kept in ``hyp_dir``."""
    lm = args.task == "language_modeling"
    scored, signatures, references = {}, {}, None
    for (method, budget, seed, checkpoint), files in zip(models, outputs):
        if files is None:
            record, hyps = reused[(method, budget, seed)]
            refs = references
            metrics, signatures = score(args.task, hyps, refs)
            if metrics != record["metrics"]:
                raise SystemExit(f"benchmarks.quality: --reuse {args.reuse}: {model_name(method, budget, seed)} scores "
                                 f"{metrics} here, {record['metrics']} there")
        elif lm:
            hyps, refs = read_continuations(files[1])
            metrics, signatures = read_lm_scores(files[0], hyps, refs)
        else:
            hyps, refs = read_generation(*files)
            metrics, signatures = score(args.task, hyps, refs)
        if references is None:
            references = refs
            keep_text(os.path.join(hyp_dir, "references.txt.xz"), refs)
        elif refs != references:
            raise SystemExit(f"benchmarks.quality: {files[-1]} scores other test items than the teacher's generation")
        keep_text(os.path.join(hyp_dir, model_name(method, budget, seed).replace("/", "_") + ".txt.xz"), hyps)
        scored[(method, budget, seed)] = (metrics, hyps)
    return scored, signatures, references
