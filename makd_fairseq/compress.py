"""``makd-compress``: teacher + data + budget -> a distilled low-rank student and a report, in one command.

    makd-compress --teacher T.pt --data BIN --param-budget 0.5 --out DIR
                  [--method makd|word_kd|ce] [--max-update N] [--metric rouge|bleu|chrf|ppl] [--fairseq-args "..."]

Stages, each reused when its output exists (run the same command again to resume; an interrupted training
continues from its ``checkpoint_last.pt``):

1. ``init``: ``makd-init --init whiten`` (factors fitted to the teacher's inputs on BIN's train split) -> DIR/init.pt
2. ``train``: ``fairseq-train`` with the method's criterion (``student.distill_command``), fairseq's own progress and
   log lines shown live and kept in DIR/train.log; validation every ``--validate-interval-updates``, stop after
   ``--patience`` validations without a lower nll, at most ``--max-update``; the best validation nll is kept:
   DIR/student.pt.
3. ``evaluate``: ``fairseq-generate`` on the test split for teacher and student with the same beam, batch and
   threads (``fairseq-eval-lm`` for language models), scored with ``makd-score``'s functions; the generation speed
   is fairseq's own sentences/s (tokens/s for language models) of those runs.
4. DIR/report.md and DIR/report.json: parameters, the ranks table, teacher and student metric and their ratio,
   speed-up, training time and updates, the command and the commit.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from .student import USER_DIR, distill_command, is_lm, task_flags

MANIFEST = "compress.json"
METRICS = ("rouge", "bleu", "chrf", "ppl")
# the distillation methods (criterion flags; the student is the same whitened low-rank init). word_kd carries its
# best configuration of benchmarks/results/sweep.json (the same tuning budget as makd's defaults)
METHODS = {
    "makd": ["--criterion", "makd"],
    "word_kd": ["--criterion", "makd", "--matrix-weight", "0", "--layer-weight", "0", "--kd-temperature", "2",
                "--model-weight", "4"],
    "ce": ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
}
# optimisation for a distilled student (Adam with inverse-sqrt warm-up, as the benchmarks use)
OPTIMIZATION = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr-scheduler", "inverse_sqrt",
                "--warmup-updates", "100", "--clip-norm", "1.0", "--weight-decay", "0.0001", "--seed", "1",
                "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "50"]


class CompressError(ValueError):
    """Bad input; the message is one line."""


def git_commit() -> str:
    root = os.path.dirname(USER_DIR)
    proc = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown (not a git checkout)"


def run_logged(cmd, log, live=True):
    """Run ``cmd``; its output goes to ``log`` and, with ``live``, to this terminal as it comes."""
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(map(str, cmd))}\n")
        f.flush()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if live:
                sys.stdout.write(line)
                sys.stdout.flush()
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"makd-compress: {cmd[0]} failed (exit {rc}); see {log}")


def json_logs(log):
    """The json records of a ``--log-format json`` fairseq log (other lines, the config dump included, skipped)."""
    records = []
    for line in open(log):
        if '{"' in line:
            try:
                records.append(json.loads(line[line.index('{"'):]))
            except ValueError:
                pass
    return records


def train_summary(log):
    """(best validation nll in bits, updates, training seconds) from a json-format fairseq-train log."""
    logs = json_logs(log)
    nll = [float(x["valid_nll_loss"]) for x in logs if "valid_nll_loss" in x]
    updates = [int(v) for x in logs for k, v in x.items() if k.endswith("num_updates")]
    m = re.findall(r"done training in ([\d.]+) seconds", open(log).read())
    return (min(nll) if nll else None), (updates[-1] if updates else None), (float(m[-1]) if m else None)


def check_out_dir(args, manifest):
    """DIR must be new, empty, or this very run (same arguments): never clobber another run's files."""
    path = os.path.join(args.out, MANIFEST)
    if os.path.isfile(path):
        previous = json.load(open(path))
        if previous["arguments"] != manifest["arguments"] and not args.force:
            changed = sorted(k for k in manifest["arguments"] if previous["arguments"].get(k) != manifest["arguments"][k])
            raise CompressError(f"--out {args.out} holds a run with other arguments ({', '.join(changed)}); "
                                "choose another --out or pass --force to start over there")
        if previous["arguments"] != manifest["arguments"]:  # --force: start over, keeping unrelated files
            for name in ("init.pt", "init.txt", "student.pt", "train", "train.log", "generate", "report.md",
                         "report.json"):
                target = os.path.join(args.out, name)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                elif os.path.exists(target):
                    os.remove(target)
    elif os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise CompressError(f"--out {args.out} is not empty and holds no makd-compress run; choose another --out "
                            "or pass --force")


def generate_command(data, checkpoint, flags, remove_bpe="sentencepiece", device=("--cpu",)):
    """fairseq-generate on the test split (``flags``: beam, batch, lengths, ...): the command makd-compress and the
    quality benchmark evaluate encoder-decoder models with."""
    # --required-batch-size-multiple 1: fairseq main's default of 8 drops the last batch's remainder, i.e. up to 7
    # test sentences (fairseq#5036)
    return ["fairseq-generate", data, "--user-dir", USER_DIR, "--path", checkpoint, "--gen-subset", "test", *flags,
            "--required-batch-size-multiple", "1", "--num-workers", "0",
            *(["--remove-bpe", remove_bpe] if remove_bpe != "none" else []),
            "--skip-invalid-size-inputs-valid-test", *device]


def eval_lm_command(data, checkpoint, flags, device=("--cpu",)):
    """fairseq-eval-lm on the test split (``flags``: the training run's block layout, batch, ...)."""
    return ["fairseq-eval-lm", data, "--user-dir", USER_DIR, "--path", checkpoint, "--gen-subset", "test", *flags,
            "--num-workers", "0", *device]


def generation_speed(text, log="the log"):
    """fairseq-generate's own timing line -> sentences, tokens, seconds, sentences/s and tokens/s."""
    speed = re.findall(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s, "
                       r"([\d.]+) tokens/s", text)
    if not speed:
        raise SystemExit(f"no 'Translated N sentences' line in {log}: did fairseq-generate finish?")
    sentences, tokens, seconds, sentences_per_s, tokens_per_s = speed[-1]
    # outputs of different lengths make sentences/s alone unfair: tokens/s is reported next to it
    return {"sentences": int(sentences.replace(",", "")), "tokens": int(tokens.replace(",", "")),
            "seconds": float(seconds), "sentences_per_s": float(sentences_per_s), "tokens_per_s": float(tokens_per_s)}


def evaluate_command(args, lm, checkpoint):
    device = [] if args.gpu else ["--cpu"]
    if lm:
        return eval_lm_command(args.data, checkpoint, [*args.task_flags, "--max-tokens", "4096",
                                                       *shlex.split(args.eval_args)], device)
    return generate_command(args.data, checkpoint, [*args.task_flags, "--beam", str(args.beam), "--batch-size",
                                                    str(args.batch_size), *shlex.split(args.eval_args)],
                            args.remove_bpe, device)


def evaluate(args, lm, log):
    """(scores, signatures, speed) of one fairseq-generate / fairseq-eval-lm log."""
    from .score import read_generation, score

    text = open(log).read()
    if lm:
        ppl = re.findall(r"Perplexity: ([\d.]+)", text)
        speed = re.findall(r"Evaluated [\d,]+ tokens in [\d.]+s \(([\d.]+) tokens/s\)", text)
        return {"ppl": float(ppl[-1])}, {"ppl": "fairseq-eval-lm on test"}, {"tokens_per_s": float(speed[-1])}
    hyps, refs = read_generation(text.splitlines(), log)
    scores, signatures = score(args.metric, hyps, refs)
    return scores, signatures, generation_speed(text, log)


def report_markdown(r):
    t, s = r["teacher"], r["student"]
    main_metric = r["main_metric"]
    lines = [f"# makd-compress: {r['method']} student at {r['param_budget']:.0%} of the teacher", "",
             f"Teacher `{r['arguments']['teacher']}`, data `{r['arguments']['data']}`, commit `{r['commit']}`.", "",
             "| | teacher | student | student / teacher |", "|---|---|---|---|",
             f"| parameters | {t['params']:,} | {s['params']:,} | {s['params'] / t['params']:.3f} |",
             f"| parameters at inference | {t['params']:,} | {s['inference_params']:,} | "
             f"{s['inference_params'] / t['params']:.3f} |"]
    for name in t["scores"]:
        ratio = s["scores"][name] / t["scores"][name] if t["scores"][name] else float("nan")
        lines.append(f"| {name} (test) | {t['scores'][name]:.2f} | {s['scores'][name]:.2f} | {ratio:.3f} |")
    for key in ("sentences_per_s", "tokens_per_s"):
        if key in t["speed"]:
            lines.append(f"| {key.replace('_per_s', '/s')} (generation) | {t['speed'][key]:.2f} | "
                         f"{s['speed'][key]:.2f} | {s['speed'][key] / t['speed'][key]:.2f}x |")
    if "tokens" in t["speed"]:
        lines.append(f"| tokens generated | {t['speed']['tokens']:,} | {s['speed']['tokens']:,} | "
                     f"{s['speed']['tokens'] / max(t['speed']['tokens'], 1):.2f} |")
    lines += ["",
              f"Main metric: {main_metric}, student keeps {100 * r['metric_ratio']:.1f}% of the teacher's "
              "(for perplexity: teacher / student)." if r["metric_ratio"] is not None else "",
              f"Training: {r['training']['updates']} updates, best validation nll {r['training']['best_valid_nll']} "
              f"bits, {r['training']['seconds']} s.", "", "Ranks (makd-init):", "", "```", r["ranks_table"].rstrip(),
              "```", "", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(prog="makd-compress", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, metavar="T.pt")
    parser.add_argument("--data", required=True, metavar="BIN", help="the teacher's binarized data (train/valid/test)")
    parser.add_argument("--param-budget", type=float, required=True, metavar="F",
                        help="student parameters as a fraction of the teacher's (embeddings included)")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--method", choices=sorted(METHODS), default="makd")
    parser.add_argument("--init", choices=("whiten", "svd"), default="whiten")
    parser.add_argument("--calibration-tokens", type=int, default=32768)
    parser.add_argument("--max-update", type=int, default=3000, help="cap on training updates")
    parser.add_argument("--validate-interval-updates", type=int, default=100)
    parser.add_argument("--patience", type=int, default=3, help="validations without a lower nll before stopping")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--metric", choices=METRICS, help="default: ppl for language models, else rouge")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per generation batch")
    parser.add_argument("--remove-bpe", default="sentencepiece", help="fairseq-generate's --remove-bpe ('none': off)")
    parser.add_argument("--fairseq-args", default="", help="more fairseq-train flags, one quoted string")
    parser.add_argument("--eval-args", default="", help="more fairseq-generate / fairseq-eval-lm flags")
    parser.add_argument("--gpu", action="store_true", help="train and decode on the GPU (default: --cpu)")
    parser.add_argument("--quiet", action="store_true", help="do not echo fairseq's output (still in DIR/*.log)")
    parser.add_argument("--force", action="store_true", help="use a non-empty --out that holds another run")
    return parser


def main(argv=None) -> int:
    import makd_fairseq  # noqa: F401  (allow-list, archs)

    from .checkpoint import CheckpointError, build_model_from_state, load_checkpoint, model_args
    from .lowrank import count_params
    from .student_init import main as makd_init

    parser = get_parser()
    args = parser.parse_args(argv)
    if args.quiet:  # fairseq's INFO lines from the in-process init (subprocess output goes to DIR/*.log anyway)
        import logging

        logging.getLogger().setLevel(logging.WARNING)
    started = time.time()
    arguments = {k: v for k, v in vars(args).items() if k not in ("force", "quiet")}
    arguments.update(teacher=os.path.abspath(args.teacher), data=os.path.abspath(args.data))
    manifest = {"arguments": arguments, "command": shlex.join(["makd-compress", *(argv if argv is not None
                                                                                   else sys.argv[1:])])}
    try:
        if not os.path.isdir(args.data):
            raise CompressError(f"--data {args.data}: no such directory (binarize with fairseq-preprocess)")
        if not 0 < args.param_budget < 1:
            raise CompressError(f"--param-budget must be in (0, 1), got {args.param_budget}")
        state = load_checkpoint(args.teacher)
        lm = is_lm(model_args(state).arch)
        args.metric = args.metric or ("ppl" if lm else "rouge")
        if (args.metric == "ppl") != lm:
            raise CompressError(f"--metric {args.metric} does not fit a {'decoder-only' if lm else 'sequence-to-sequence'}"
                                " teacher (ppl is for language models)")
        check_out_dir(args, manifest)
    except (CompressError, CheckpointError) as e:
        print(f"makd-compress: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    path = lambda *p: os.path.join(args.out, *p)  # noqa: E731
    args.task_flags = task_flags(state)  # the teacher's language pair, truncation or block layout, for every stage

    # 1. init (in-process makd-init: its bad-input errors are one line, exit 2, nothing written)
    if not os.path.isfile(path("init.pt")):
        print(f"[makd-compress] init: makd-init --init {args.init} --param-budget {args.param_budget}", flush=True)
        import contextlib
        import io

        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            rc = makd_init(["--teacher", args.teacher, "--param-budget", str(args.param_budget), "--init", args.init,
                            "--data", args.data, "--calibration-tokens", str(args.calibration_tokens),
                            "--out", path("init.pt")])
        if rc != 0:
            return rc  # makd-init printed the one-line error
        with open(path("init.txt.tmp"), "w") as f:
            f.write(table.getvalue())
        os.replace(path("init.txt.tmp"), path("init.txt"))
        if not args.quiet:
            print(table.getvalue().split("distill it with")[0], flush=True)
    with open(path(MANIFEST + ".tmp"), "w") as f:  # from here on DIR is this run's
        json.dump(manifest, f, indent=1)
    os.replace(path(MANIFEST + ".tmp"), path(MANIFEST))

    # 2. train until validation nll stops falling
    train_log = path("train.log")
    if not (os.path.isfile(train_log) and "done training in" in open(train_log).read()):
        flags = [*args.task_flags, *METHODS[args.method], *OPTIMIZATION, "--lr", str(args.lr), "--max-tokens", str(args.max_tokens),
                 "--max-update", str(args.max_update), "--validate-interval-updates",
                 str(args.validate_interval_updates), "--save-interval-updates", str(args.validate_interval_updates),
                 "--validate-interval", "1000000", "--save-interval", "1000000", "--patience", str(args.patience), "--keep-interval-updates", "1",
                 "--best-checkpoint-metric", "nll_loss", "--save-dir", path("train"),
                 *([] if args.gpu else ["--cpu"]), *shlex.split(args.fairseq_args)]
        if not lm:
            flags += ["--skip-invalid-size-inputs-valid-test"]
        print("[makd-compress] train", flush=True)
        run_logged(distill_command(args.data, args.teacher, path("init.pt"), flags), train_log, live=not args.quiet)
    if not os.path.isfile(path("student.pt")):
        shutil.copyfile(path("train", "checkpoint_best.pt"), path("student.pt.tmp"))
        os.replace(path("student.pt.tmp"), path("student.pt"))

    # 3. teacher and student on the test split, same flags
    os.makedirs(path("generate"), exist_ok=True)
    results = {}
    for name, checkpoint in (("teacher", args.teacher), ("student", path("student.pt"))):
        log = path("generate", f"{name}.txt")
        done = os.path.isfile(log) and ("Perplexity:" if lm else "Generate test with beam") in open(log).read()
        if not done:
            print(f"[makd-compress] evaluate {name}", flush=True)
            if os.path.exists(log):
                os.remove(log)
            run_logged(evaluate_command(args, lm, checkpoint), log, live=False)
        results[name] = evaluate(args, lm, log)

    # 4. the report
    init_state = load_checkpoint(path("init.pt"))
    teacher_params = init_state["makd"]["teacher_params"]
    student_params = count_params(build_model_from_state(load_checkpoint(path("student.pt"))))
    best_nll, updates, seconds = train_summary(train_log)
    (t_scores, signatures, t_speed), (s_scores, _, s_speed) = results["teacher"], results["student"]
    main_metric = {"rouge": "rougeL", "bleu": "bleu", "chrf": "chrf", "ppl": "ppl"}[args.metric]
    ratio = (t_scores[main_metric] / s_scores[main_metric] if main_metric == "ppl"
             else s_scores[main_metric] / t_scores[main_metric] if t_scores[main_metric] else None)
    speed_key = "tokens_per_s" if lm else "sentences_per_s"
    report = {
        "method": args.method, "param_budget": args.param_budget, "init": args.init, "main_metric": main_metric,
        "teacher": {"params": teacher_params, "scores": t_scores, "speed": t_speed},
        "student": {"params": student_params, "inference_params": init_state["makd"]["inference_params"],
                    "scores": s_scores, "speed": s_speed, "checkpoint": path("student.pt")},
        "metric_ratio": ratio, "speedup": s_speed[speed_key] / t_speed[speed_key], "signatures": signatures,
        "training": {"updates": updates, "best_valid_nll": best_nll, "seconds": seconds,
                     "early_stopped": "early stop since valid performance" in open(train_log).read()},
        "ranks_table": open(path("init.txt")).read().split("distill it with")[0],
        "arguments": arguments, "command": manifest["command"], "commit": git_commit(),
        "evaluation": shlex.join(map(str, evaluate_command(args, lm, "CHECKPOINT"))),
        "wall_s": round(time.time() - started, 1),
    }
    for name, text in (("report.json", json.dumps(report, indent=1)), ("report.md", report_markdown(report))):
        with open(path(name + ".tmp"), "w") as f:
            f.write(text)
        os.replace(path(name + ".tmp"), path(name))
    print(report_markdown(report))
    print(f"wrote {path('student.pt')}, {path('report.md')} and {path('report.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
