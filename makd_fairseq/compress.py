"""makd-compress's stages: teacher + data + budget -> a distilled low-rank student and a report.

Stages, each reused when its output exists (an interrupted training continues from its ``checkpoint_last.pt``):

1. ``init``: ``student_init.make_student`` with whitened factors (fitted to the teacher's inputs on BIN's train
   split) -> DIR/init.pt and its ranks table DIR/init.txt. It runs before DIR is created, so bad input it catches (a
   data dictionary other than the teacher's, a budget that cannot be met) leaves nothing behind.
2. ``train``: ``fairseq-train`` with the method's criterion (``student.distill_command``); fairseq's lines kept in
   DIR/train.log as they come (and shown live unless ``--quiet``), a progress bar over the update cap with the last
   validation; validation every ``--validate-interval-updates``, stop after ``--patience`` validations without a
   better value, at most ``--max-update``; the checkpoint with the best value is kept: DIR/student.pt. The value is
   the validation nll (``--select-on nll``), or with ``--select-on metric`` the main metric of beam-search
   hypotheses of the valid split (``validation.py``: ``--eval-metric``; the test generation's beam and lengths).
   With ``--race N`` the method and plain cross-entropy fine-tuning (``ce``) first train N updates each from the same
   init (DIR/race/METHOD, DIR/race/METHOD.log); the one with the better validation value continues from its own
   checkpoint to the cap (DIR/train), and DIR/race.json and the report say what was chosen and on what values: a
   student worse than plain fine-tuning on validation is never returned unannounced. ``--race full`` (the default
   for sequence-to-sequence teachers) trains both to their own stop and keeps the better on validation (twice the
   training; no continuation).
3. ``evaluate``: ``fairseq-generate`` on the test split for teacher and student with the same beam, batch and
   threads (``fairseq-eval-lm`` for language models), scored with ``score``'s functions. The speed is then timed as
   the speed benchmark times it (``timing.interleaved``): after a warm-up, ``--speed-rounds`` rounds of teacher and
   student in turn (``--quiet``), fairseq's own sentences/s (tokens/s for language models), median and range; the
   speed-up is the median of the per-round ratios (DIR/generate/speed.json, reused).
4. DIR/report.md and DIR/report.json: parameters, the ranks table, teacher and student metric and their ratio,
   speed-up, training time and updates, the command and the commit.

The command line is ``makd_fairseq.cli.compress``; the benchmarks build their generation commands here too.
"""

import json
import os
import shlex
import shutil
import sys

from . import fairseq_logs, timing
from .files import USER_DIR, copy_file, git_commit, save_torch, write_json, write_text
from .forking import streamed
from .student import OPTIMIZATION, distill_command
from .validation import FOR_SCORE_METRIC, generation_args

MANIFEST = "compress.json"
METRICS = ("rouge", "bleu", "chrf", "ppl")
# the distillation methods (criterion flags; the student is the same whitened low-rank init). word_kd: CE + KL at
# T 1 (issue 34's diagnosis, validation: 1.7 BLEU above the sweep's T 2 / KD weight 4 on en→de, whose 300-update
# sweep had averaged the two tasks; a label-smoothed teacher distils best at a low temperature, arXiv 2206.14532)
METHODS = {
    "makd": ["--criterion", "makd"],
    "word_kd": ["--criterion", "makd", "--matrix-weight", "0", "--layer-weight", "0", "--kd-temperature", "1"],
    "ce": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
}
# what makd-compress writes in DIR (--force replaces these and nothing else)
OWN_FILES = ("init.pt", "init.txt", "student.pt", "race", "race.json", "train", "train.log", "generate", "report.md",
             "report.json")
RACE_BASELINE = "ce"  # what --race runs the method against
FULL_RACE = "full"  # --race full: both racers trained to their own stop, the better on validation kept


class CompressError(ValueError):
    """Bad input; the message is one line."""


def check_out_dir(args, manifest) -> bool:
    """DIR must be new, empty, or this very run (same arguments): never clobber another run's files. True when DIR
    holds another run and --force was given: that run's files are to go (``clear_run``) once the new init is made."""
    path = os.path.join(args.out, MANIFEST)
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        if previous["arguments"] == manifest["arguments"]:
            return False
        if not args.force:
            before, now = previous["arguments"], manifest["arguments"]
            changed = "; ".join(f"{k}: {shown(before.get(k))} there, {shown(now[k])} now"
                                for k in sorted(k for k in now if before.get(k) != now[k]))
            raise CompressError(f"--out {args.out} holds a run with other arguments ({changed}); give that run's "
                                "arguments to resume it, choose another --out, or pass --force to start over there")
        return True
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise CompressError(f"--out {args.out} is not empty and holds no makd-compress run; choose another --out "
                            "or pass --force")
    return False


def shown(value, most=40) -> str:
    """An argument's value in an error message, cut to ``most`` characters."""
    text = "unset" if value is None else str(value)
    return text if len(text) <= most else text[:most - 1] + "…"


def clear_run(args) -> None:
    """--force over another run: its files go, unrelated files stay."""
    for name in OWN_FILES:
        target = os.path.join(args.out, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)


def init_student(args, state):
    """(student checkpoint state, ranks table text) at ``args.param_budget``, uniform ranks, ``args.init`` factors;
    in memory: makd-init's bad-input errors (``RankError``, ``CheckpointError``, ...) raise before DIR is touched."""
    from .student_init import make_student, ranks_table

    student, rows, totals = make_student(state, args.teacher, param_budget=args.param_budget, init=args.init,
                                         data=args.data, calibration_tokens=args.calibration_tokens)
    return student, ranks_table(rows, totals)


def selection(args) -> str:
    """The validation value that chooses the checkpoint and stops training: nll_loss, or the main metric's key as
    ``--eval-metric`` logs it (bleu, chrf, rougeL)."""
    return "nll_loss" if args.select_on == "nll" else FOR_SCORE_METRIC[args.metric]


def selection_flags(args) -> list:
    """fairseq-train's flags choosing the checkpoint on ``selection(args)`` (the metric: validated by generation with
    the test generation's beam and lengths, BPE removed as for scoring)."""
    if args.select_on == "nll":
        return ["--best-checkpoint-metric", "nll_loss"]
    metric = selection(args)
    generation = generation_args(["--beam", str(args.beam), *shlex.split(args.eval_args)])
    return ["--eval-metric", metric, "--eval-metric-args", generation,
            *(["--eval-metric-remove-bpe", args.remove_bpe] if args.remove_bpe != "none" else []),
            "--best-checkpoint-metric", metric, "--maximize-best-checkpoint-metric"]


def train_flags(args, lm, method=None, max_update=None, save_dir=None) -> list:
    """fairseq-train's flags after ``distill_command``'s: task settings, method, optimisation, schedule, output
    (``method``, ``max_update``, ``save_dir``: a race's run instead of ``args``' method, cap and DIR/train)."""
    every = str(args.validate_interval_updates)
    return [*args.task_flags, *METHODS[method or args.method], *OPTIMIZATION, "--log-interval", "50",
            "--lr", str(args.lr), "--max-tokens", str(args.max_tokens),
            "--max-update", str(max_update or args.max_update),
            "--validate-interval-updates", every, "--save-interval-updates", every,
            "--validate-interval", "1000000", "--save-interval", "1000000", "--patience", str(args.patience),
            "--keep-interval-updates", "1", *selection_flags(args),
            "--save-dir", save_dir or os.path.join(args.out, "train"), *([] if args.gpu else ["--cpu"]),
            *shlex.split(args.fairseq_args), *([] if lm else ["--skip-invalid-size-inputs-valid-test"])]


class TrainProgress:
    """A tqdm bar over the update cap, fed with fairseq-train's ``--log-format json`` lines as they come: the updates
    reached and the last validation ("valid nll 3.21 @ 400", "valid nll 3.21 @ 400, bleu 12.3" with a metric)."""

    def __init__(self, total: int, initial: int = 0, file=None, metric: str = None, desc="[makd-compress] train"):
        from tqdm import tqdm

        self.metric = metric
        file = file or sys.stderr
        self.bar = tqdm(total=total, initial=min(initial, total), unit="update", desc=desc,
                        file=file, mininterval=0.5 if file.isatty() else 30, dynamic_ncols=True)

    def feed(self, line: str) -> None:
        for record in fairseq_logs.records(line):
            updates = next((int(float(v)) for k, v in record.items() if k.endswith("num_updates")), None)
            if updates is None:
                continue
            if updates > self.bar.n:
                self.bar.update(min(updates, self.bar.total) - self.bar.n)
            if "valid_nll_loss" in record:
                text = f"valid nll {float(record['valid_nll_loss']):.2f} @ {updates}"
                if self.metric and f"valid_{self.metric}" in record:
                    text += f", {self.metric} {float(record[f'valid_{self.metric}']):.2f}"
                self.bar.set_postfix_str(text)

    def close(self) -> None:
        self.bar.close()


def run_logged(cmd, log, live=True, progress=None):
    """Run ``cmd``; each line of its output goes to ``log`` as it comes (flushed per line), to ``progress`` and,
    with ``live``, to this terminal. A new interpreter, or with MAKD_BENCHMARKS_FORK=1 (the tests) a fork of one
    that has imported fairseq (``forking.streamed``)."""
    from tqdm import tqdm

    with open(log, "a", buffering=1) as f:  # line-buffered: a user tailing the log sees each line at once
        f.write(f"$ {shlex.join(map(str, cmd))}\n")

        def on_line(line):
            f.write(line)
            if progress is not None:
                progress.feed(line)
            if live:
                tqdm.write(line.rstrip("\n"), file=sys.stdout)  # above the progress bar
                sys.stdout.flush()

        rc = streamed(cmd, on_line)
    if rc != 0:
        raise SystemExit(f"makd-compress: {cmd[0]} failed (exit {rc}); see {log}")


def train(args, lm, student_path: str, log: str, method=None, max_update=None, save_dir=None,
          desc="[makd-compress] train") -> None:
    """Distill until the validation value (``selection``) stops improving (resumes from the save directory's
    checkpoint_last.pt; ``method``, ``max_update``, ``save_dir`` as in ``train_flags``; ``desc`` the progress bar's
    label)."""
    metric = selection(args)
    progress = TrainProgress(max_update or args.max_update, fairseq_logs.last_updates(fairseq_logs.read(log)) or 0,
                             metric=None if metric == "nll_loss" else metric, desc=desc)
    try:
        run_logged(distill_command(args.data, args.teacher, student_path,
                                   train_flags(args, lm, method, max_update, save_dir)), log,
                   live=not args.quiet, progress=progress)
    finally:
        progress.close()


def race(args, lm, student_path: str) -> dict:
    """``--race N``: the method and ``RACE_BASELINE`` trained N updates each from ``student_path`` (each reused when
    finished), the winner the one with the better validation value (``selection``; the method on a tie); its
    checkpoints become DIR/train's, from which ``train`` continues it to the cap. ``--race full``: each trained to
    its own stop (the cap or the patience), the winner's checkpoints DIR/train's, nothing left to train
    (``full_race``). DIR/race.json: {"updates" (None: the whole trainings), "selected_on", "values": {method: best
    value}, "winner"}."""
    path = os.path.join(args.out, "race.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    key, values = selection(args), {}
    length = args.max_update if full_race(args) else args.race
    for method in (args.method, RACE_BASELINE):
        save_dir, log = os.path.join(args.out, "race", method), os.path.join(args.out, "race", f"{method}.log")
        os.makedirs(save_dir, exist_ok=True)
        if not fairseq_logs.finished(fairseq_logs.read(log)):
            print(f"[makd-compress] race: {method}, " + ("to its stop" if full_race(args) else f"{args.race} updates"),
                  flush=True)
            train(args, lm, student_path, log, method, length, save_dir, desc=f"[makd-compress] race {method}")
        values[method] = fairseq_logs.best_valid(fairseq_logs.read(log), key)
        if values[method] is None:
            raise SystemExit(f"makd-compress: the race's {method} run logged no validation {key} (validate more "
                             f"often than --race {args.race}: --validate-interval-updates); see {log}")
    winner = race_winner(values, key, args.method)
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):  # the winner continues from where it stopped
        copy_file(os.path.join(args.out, "race", winner, name), os.path.join(args.out, "train", name))
    result = {"updates": None if full_race(args) else args.race, "selected_on": key, "values": values,
              "winner": winner}
    write_json(path, result)
    return result


def full_race(args) -> bool:
    return args.race == FULL_RACE


RACE_AT_MOST = 1000  # on the diagnosis's curves every race of makd or word KD against ce had settled by 750 updates


def default_race(max_update: int, every: int) -> int:
    """A short race's length (the default until the race-length rule made it full; the benchmark's ``word_kd_race``):
    a quarter of the cap, at most ``RACE_AT_MOST`` updates, in whole validation intervals, at least one (750 of 3,000
    updates validated every 250, 1,000 of 15,000); 0 when no validation comes before the cap (then no race at all)."""
    quarter = max(every, min(max_update // 4, RACE_AT_MOST) // every * every)
    return quarter if quarter < max_update else 0


def race_winner(values: dict, key: str, method: str) -> str:
    """The racer with the better validation value (the lowest nll, the highest metric); ``method`` on a tie."""
    better = fairseq_logs.best_of(values.values(), key)
    return method if values[method] == better else next(m for m in values if values[m] == better)


def race_line(r) -> str:
    """The report's sentence on a race (``race``'s result)."""
    if r is None:
        return ""
    values = ", ".join(f"{m} {v}" for m, v in r["values"].items())
    span, kept = (("the whole trainings (each to its own stop)", "kept") if r["updates"] is None
                  else (f"the first {r['updates']} updates", "continued"))
    return (f"Race over {span} on validation {r['selected_on']}: {values}; {kept} **{r['winner']}**"
            + (" (plain cross-entropy fine-tuning: the method did worse on validation)."
               if r["winner"] == RACE_BASELINE else "."))


def generate_command(data, checkpoint, flags, remove_bpe="sentencepiece", device=("--cpu",), subset="test"):
    """fairseq-generate on the test split (``subset``; ``flags``: beam, batch, lengths, ...): the command makd-compress
    and the quality benchmark evaluate encoder-decoder models with; ``makd_translation``'s generator keeps encoder
    states once per source sentence (fairseq's hypotheses, faster)."""
    # --required-batch-size-multiple 1: fairseq main's default of 8 drops the last batch's remainder, i.e. up to 7
    # test sentences (fairseq#5036)
    return ["fairseq-generate", data, "--user-dir", USER_DIR, "--task", "makd_translation", "--path", checkpoint,
            "--gen-subset", subset, *flags,
            "--required-batch-size-multiple", "1", "--num-workers", "0",
            *(["--remove-bpe", remove_bpe] if remove_bpe != "none" else []),
            "--skip-invalid-size-inputs-valid-test", *device]


def eval_lm_command(data, checkpoint, flags, device=("--cpu",)):
    """fairseq-eval-lm on the test split (``flags``: the training run's block layout, batch, ...)."""
    return ["fairseq-eval-lm", data, "--user-dir", USER_DIR, "--path", checkpoint, "--gen-subset", "test", *flags,
            "--num-workers", "0", *device]


def evaluate_command(args, lm, checkpoint, quiet=False):
    """The evaluation of ``checkpoint``; ``quiet``: without the hypotheses (the timed passes)."""
    device = [] if args.gpu else ["--cpu"]
    if lm:
        return eval_lm_command(args.data, checkpoint, [*args.task_flags, "--max-tokens", "4096",
                                                       *shlex.split(args.eval_args)], device)
    return generate_command(args.data, checkpoint, [*args.task_flags, "--beam", str(args.beam), "--batch-size",
                                                    str(args.batch_size), *shlex.split(args.eval_args),
                                                    *(["--quiet"] if quiet else [])], args.remove_bpe, device)


def evaluate(args, lm, log):
    """(scores, signatures, speed) of one fairseq-generate / fairseq-eval-lm log."""
    from .score import read_generation, score

    text = fairseq_logs.read(log)
    if lm:
        result = fairseq_logs.eval_lm_result(text, log)
        return {"ppl": result["ppl"]}, {"ppl": "fairseq-eval-lm on test"}, {"tokens_per_s": result["tokens_per_s"]}
    hyps, refs = read_generation(text.splitlines(), log)
    scores, signatures = score(args.metric, hyps, refs)
    return scores, signatures, fairseq_logs.generation_speed(text, log)


def report_markdown(r):
    t, s = r["teacher"], r["student"]
    main_metric = r["main_metric"]
    lines = [f"# makd-compress: {r.get('trained_method', r['method'])} student at {r['param_budget']:.0%} of the "
             "teacher", "",
             f"Teacher `{r['arguments']['teacher']}`, data `{r['arguments']['data']}`, commit `{r['commit']}`.", "",
             "| | teacher | student | student / teacher |", "|---|---|---|---|",
             f"| parameters | {t['params']:,} | {s['params']:,} | {s['params'] / t['params']:.3f} |",
             f"| parameters at inference | {t['params']:,} | {s['inference_params']:,} | "
             f"{s['inference_params'] / t['params']:.3f} |"]
    for name in t["scores"]:
        ratio = s["scores"][name] / t["scores"][name] if t["scores"][name] else float("nan")
        lines.append(f"| {name} (test) | {t['scores'][name]:.2f} | {s['scores'][name]:.2f} | {ratio:.3f} |")
    timing_ = r["speed_timing"]
    key = timing_["unit"]
    lines.append(f"| {key.replace('_per_s', '/s')} (generation; median [range] of {timing_['rounds']} interleaved "
                 f"rounds, {warmed_up(timing_['warmup'])}) | {t['speed'][key]:.2f} [{t['speed']['range'][0]:.2f}, "
                 f"{t['speed']['range'][1]:.2f}] | {s['speed'][key]:.2f} [{s['speed']['range'][0]:.2f}, "
                 f"{s['speed']['range'][1]:.2f}] | {r['speedup']:.2f}x [{r['speedup_range'][0]:.2f}, "
                 f"{r['speedup_range'][1]:.2f}] |")
    if "tokens" in t["speed"]:
        lines.append(f"| tokens generated | {t['speed']['tokens']:,} | {s['speed']['tokens']:,} | "
                     f"{s['speed']['tokens'] / max(t['speed']['tokens'], 1):.2f} |")
    lines += ["",
              f"Main metric: {main_metric}, student keeps {100 * r['metric_ratio']:.1f}% of the teacher's "
              "(for perplexity: teacher / student)." if r["metric_ratio"] is not None else "",
              f"Training: {r['training']['updates']} updates, best validation nll {r['training']['best_valid_nll']} "
              f"bits, {r['training']['seconds']} s.",
              f"Checkpoint chosen and training stopped on validation {r['training']['selected_on']}: best "
              f"{r['training']['best_valid']}.", race_line(r.get("race")), "", "Ranks (makd-init):", "", "```",
              r["ranks_table"].rstrip(), "```", "", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def report(args, lm, manifest, results, timed, wall_s) -> dict:
    """report.json's content from DIR's files, the two evaluations and their timing (``time_both``)."""
    from .checkpoint import build_model_from_state, load_checkpoint
    from .lowrank import count_params

    path = lambda *p: os.path.join(args.out, *p)  # noqa: E731
    init_state = load_checkpoint(path("init.pt"))
    train_log = fairseq_logs.read(path("train.log"))
    selected_on = selection(args)
    (t_scores, signatures, t_speed), (s_scores, _, s_speed) = results["teacher"], results["student"]
    speed_key = timed["unit"]
    # the evaluation pass's counts; the speed itself from the timed rounds (median, range)
    t_speed, s_speed = ({**{k: speed[k] for k in ("sentences", "tokens") if k in speed},
                         speed_key: timed[name]["median"], "range": timed[name]["range"], "runs": timed[name]["runs"]}
                        for name, speed in (("teacher", t_speed), ("student", s_speed)))
    main_metric = {"rouge": "rougeL", "bleu": "bleu", "chrf": "chrf", "ppl": "ppl"}[args.metric]
    ratio = (t_scores[main_metric] / s_scores[main_metric] if main_metric == "ppl"
             else s_scores[main_metric] / t_scores[main_metric] if t_scores[main_metric] else None)
    with open(path("init.txt"), encoding="utf-8") as f:
        table = f.read()
    raced = None
    if args.race:
        with open(path("race.json")) as f:
            raced = json.load(f)
        # the student's training: the winner's race run, then its continuation (none after a full race: the race
        # run is the whole training); both racers' time counts
        logs = [fairseq_logs.read(path("race", f"{m}.log")) for m in raced["values"]]
        winner_log = fairseq_logs.read(path("race", f"{raced['winner']}.log"))
        if raced["updates"] is None:
            train_log = winner_log
            logs.remove(winner_log)
        best = [v for v in (fairseq_logs.best_valid(t, selected_on) for t in (winner_log, train_log)) if v is not None]
        best_nll = [v for v in map(fairseq_logs.best_valid_nll, (winner_log, train_log)) if v is not None]
        seconds = sum(fairseq_logs.training_seconds(t) or 0 for t in [*logs, train_log])
    return {
        "method": args.method, "trained_method": raced["winner"] if raced else args.method, "race": raced,
        "param_budget": args.param_budget, "init": args.init, "main_metric": main_metric,
        "teacher": {"params": init_state["makd"]["teacher_params"], "scores": t_scores, "speed": t_speed},
        "student": {"params": count_params(build_model_from_state(load_checkpoint(path("student.pt")))),
                    "inference_params": init_state["makd"]["inference_params"],
                    "scores": s_scores, "speed": s_speed, "checkpoint": path("student.pt")},
        "metric_ratio": ratio, "speedup": timed["speedup"]["median"], "speedup_range": timed["speedup"]["range"],
        "speed_timing": {"unit": speed_key, "rounds": timed["rounds"], "warmup": timed["warmup"],
                         "per_round": timed["speedup"]["per_round"]},
        "signatures": signatures,
        "training": {"updates": fairseq_logs.last_updates(train_log),
                     "best_valid_nll": min(best_nll) if raced and best_nll else fairseq_logs.best_valid_nll(train_log),
                     "selected_on": selected_on,
                     "best_valid": (fairseq_logs.best_of(best, selected_on) if raced and best
                                    else fairseq_logs.best_valid(train_log, selected_on)),
                     "seconds": seconds if raced else fairseq_logs.training_seconds(train_log),
                     "early_stopped": fairseq_logs.early_stopped(train_log)},
        "ranks_table": table, "arguments": manifest["arguments"], "command": manifest["command"],
        "commit": git_commit(), "evaluation": shlex.join(map(str, evaluate_command(args, lm, "CHECKPOINT"))),
        "wall_s": wall_s,
    }


def models(args):
    return {"teacher": args.teacher, "student": os.path.join(args.out, "student.pt")}


def evaluate_both(args, lm):
    """({"teacher" | "student": evaluate(...)} on the test split with the same flags, whether both were run now; a
    finished log is reused)."""
    os.makedirs(os.path.join(args.out, "generate"), exist_ok=True)
    results, ran = {}, []
    for name, checkpoint in models(args).items():
        log = os.path.join(args.out, "generate", f"{name}.txt")
        if ("Perplexity:" if lm else "Generate test with beam") not in fairseq_logs.read(log):
            print(f"[makd-compress] evaluate {name}", flush=True)
            if os.path.exists(log):
                os.remove(log)
            run_logged(evaluate_command(args, lm, checkpoint), log, live=False)
            ran.append(name)
        results[name] = evaluate(args, lm, log)
    return results, len(ran) == len(results)


def time_both(args, lm, warmup=1) -> dict:
    """The report's speed, measured as ``benchmarks.speed`` measures it (``timing.interleaved``): ``warmup`` untimed
    passes of each model (0 right after ``evaluate_both`` ran both: those were the warm-up), then
    ``args.speed_rounds`` rounds of teacher and student in turn, each pass a fresh
    ``evaluate_command(quiet=True)`` whose own sentences/s (tokens/s) is read from DIR/generate/timing_<name>.txt.
    {"teacher" | "student": {"runs", "median", "range"}, "speedup": {"median", "range", "per_round"}, "rounds",
    "warmup", "unit"}; kept in DIR/generate/speed.json and reused while it has as many rounds."""
    path = os.path.join(args.out, "generate", "speed.json")
    if os.path.isfile(path):
        with open(path) as f:
            kept = json.load(f)
        if kept["rounds"] == args.speed_rounds:
            return kept
    unit = "tokens_per_s" if lm else "sentences_per_s"

    def timed(name, checkpoint):
        def one_pass():
            log = os.path.join(args.out, "generate", f"timing_{name}.txt")
            if os.path.exists(log):
                os.remove(log)
            run_logged(evaluate_command(args, lm, checkpoint, quiet=True), log, live=False)
            text = fairseq_logs.read(log)
            return (fairseq_logs.eval_lm_result(text, log) if lm else fairseq_logs.generation_speed(text, log))[unit]
        return one_pass

    print(f"[makd-compress] time teacher and student ({warmed_up(warmup)}, {args.speed_rounds} interleaved rounds)",
          flush=True)
    runs = timing.interleaved({name: timed(name, c) for name, c in models(args).items()}, args.speed_rounds, warmup)
    result = {**{name: {"runs": r, **timing.spread(r)} for name, r in runs.items()},
              "speedup": timing.ratio(runs["student"], runs["teacher"]), "rounds": args.speed_rounds,
              "warmup": warmup, "unit": unit}
    write_json(path, result)
    return result


def warmed_up(warmup: int) -> str:
    return "the evaluation passes as warm-up" if warmup == 0 else f"{warmup} warm-up pass(es) each"


def write_report(args, r) -> None:
    write_json(os.path.join(args.out, "report.json"), r)
    write_text(os.path.join(args.out, "report.md"), report_markdown(r))


def keep_best(args) -> None:
    """DIR/student.pt: the checkpoint with the best validation value (``selection``)."""
    if not os.path.isfile(os.path.join(args.out, "student.pt")):
        copy_file(os.path.join(args.out, "train", "checkpoint_best.pt"), os.path.join(args.out, "student.pt"))


def write_init(args, student, table, manifest) -> None:
    """DIR (created here), DIR/init.pt, DIR/init.txt and the manifest that makes DIR this run's."""
    save_torch(student, os.path.join(args.out, "init.pt"))
    write_text(os.path.join(args.out, "init.txt"), table)
    write_manifest(args, manifest)


def write_manifest(args, manifest) -> None:
    write_json(os.path.join(args.out, MANIFEST), manifest)
