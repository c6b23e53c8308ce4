#!/usr/bin/env python3
"""What distillation costs per update and how fast the students generate: ratios measured in one run.

    python3 benchmarks/speed.py --data /tmp/debian/summarization/bin --teacher T.pt --work /tmp/speed

1. ``makd-init`` writes the 50% and 25% students of ``--teacher`` (uniform allocation).
2. Training, on the 50% student, same data and batch stream (same seed) for every method of
   ``sizes.METHODS``: ``ce`` (label-smoothed cross-entropy), ``word_kd`` (+ output KL), ``layer_kd`` (+ attention
   KL and hidden MSE on all layers), ``makd`` (defaults), and ``makd_recompute`` (``--recompute-teacher``: less
   memory, more time). Each run is fairseq's own ``Trainer.train_step`` in a
   fresh process (built exactly as ``fairseq-train`` builds it); per update we time the step, the teacher's
   forward inside it (hooks on the teacher), and the peak memory of an update above what persists between
   updates (CPU: the kernel's VmHWM, reset before each step, in separate untimed runs where glibc unmaps freed
   blocks at once so the resident size follows the live tensors; GPU: ``torch.cuda.max_memory_allocated``);
   the maximum over updates is reported. Methods are interleaved over ``--repeats`` rounds; the reported step
   time is the median over all timed updates.
3. Generation: ``fairseq-generate`` (beam, batch size, threads all fixed) on the test set for the teacher and
   both students. Every hypothesis is forced to exactly ``--gen-len`` tokens (``--min-len = --max-len-b``), so
   the models do the same work whatever their quality; throughput is fairseq's own sentences/s, median over
   ``--repeats`` runs.
4. FLOPs: the same generation on one batch under ``torch.utils.flop_counter.FlopCounterMode``, after fairseq's
   ``prepare_for_inference_`` (factors past break-even merged); the teacher/student ratio is the speed-up a
   student could reach if time followed FLOPs.

5. ``--shapes iwslt wmt``: the same generation at fairseq's ``transformer_iwslt_de_en`` and ``transformer_wmt_en_de``
   presets with a joined vocabulary of 10k and 32k (the data's dictionary padded with unused symbols), teachers with
   random weights (hypotheses are forced to one length, so the work does not depend on them): throughput at
   ``--batch-size`` and latency at batch 1, each ``--shape-threads``, interleaved rounds with the per-round speed-up's
   range; JSON ``shapes: {iwslt|wmt: {gen_speedup_50, flops_ratio_50, latency_speedup_50, ...}}``.

Writes ``--out`` (JSON, every ratio from this run) and the same path with ``.md`` (a table).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
USER_DIR = os.path.join(ROOT, "makd_fairseq")
sys.path.insert(0, HERE)
from provenance import command, git_state, hardware, write_atomic  # noqa: E402
from sizes import METHODS, TRAIN_COMMON  # noqa: E402

# the training methods timed: the benchmark's methods and makd trading time for memory (--recompute-teacher)
TRAIN_METHODS = {**METHODS, "makd_recompute": [*METHODS["makd"], "--recompute-teacher"]}



# ---------------------------------------------------------------- workers (run in their own process)

def _rss_kb():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def train_worker(argv, steps, warmup, profile=0):
    """Build as fairseq-train does, run ``warmup + steps`` updates; return per-update timings and memory."""
    import numpy as np
    import torch
    from fairseq import checkpoint_utils, options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    _, epoch_itr = checkpoint_utils.load_checkpoint(cfg.checkpoint, trainer)
    itr = epoch_itr.next_epoch_itr(fix_batches_to_gpus=False, shuffle=True)
    cuda = torch.cuda.is_available() and not cfg.common.cpu

    def sync():
        if cuda:
            torch.cuda.synchronize()

    teacher_time = [0.0]
    teacher = getattr(task, "_teacher", None)  # loaded by the makd criterion; None for ce
    if teacher is not None:
        start = [0.0]

        def pre(module, args, kwargs=None):
            sync()
            start[0] = time.perf_counter()

        def post(module, args, output):
            sync()
            teacher_time[0] += time.perf_counter() - start[0]

        teacher.register_forward_pre_hook(pre)
        teacher.register_forward_hook(post)

    step_s, teacher_s, step_peak = [], [], []
    profiler = None
    for i, sample in enumerate(itr):
        if profile and i == warmup:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False)
            profiler.__enter__()
        # memory an update needs on top of what persists between updates (weights, grads, optimizer state)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (peak RSS) to the current RSS
            base = _rss_kb()[0] * 1024
        teacher_time[0] = 0.0
        sync()
        t0 = time.perf_counter()
        trainer.train_step([sample])
        sync()
        if i >= warmup:
            step_s.append(time.perf_counter() - t0)
            teacher_s.append(teacher_time[0])
            step_peak.append((torch.cuda.max_memory_allocated() if cuda else _rss_kb()[1] * 1024) - base)
        if len(step_s) == steps:
            break
    if profiler is not None:
        profiler.__exit__(None, None, None)
        return {"profile": profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile),
                "step_s": step_s, "teacher_s": teacher_s}
    return {"step_s": step_s, "teacher_s": teacher_s, "step_peak_bytes": step_peak}


def flops_worker(path, data, gen_args, batch_size, profile=0):
    """FLOPs per sentence of one generation batch (after fairseq's inference preparation); with ``profile``, also
    where the time of a second, timed pass over the same batch goes (torch.profiler, top ``profile`` operators)."""
    import torch
    from fairseq import checkpoint_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from torch.utils.flop_counter import FlopCounterMode

    import makd_fairseq  # noqa: F401

    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
        options.get_generation_parser(), [data, "--path", path, *gen_args]))
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    model = models[0].eval()
    model.prepare_for_inference_(cfg)
    task.load_dataset(cfg.dataset.gen_subset, task_cfg=cfg.task)
    itr = task.get_batch_iterator(task.dataset(cfg.dataset.gen_subset), max_sentences=batch_size,
                                  max_positions=(256, 1024), ignore_invalid_inputs=True).next_epoch_itr(shuffle=False)
    sample = next(iter(itr))
    generator = task.build_generator([model], cfg.generation)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        hypos = task.inference_step(generator, [model], sample)
    lengths = {len(h[0]["tokens"]) for h in hypos}
    out = {"flops_per_sentence": counter.get_total_flops() / len(hypos), "sentences": len(hypos),
           "hypothesis_lengths": sorted(lengths), "params": sum(p.numel() for p in model.parameters())}
    if profile:
        with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            task.inference_step(generator, [model], sample)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        out["profile"] = {"total_ms": round(total / 1e3, 1), "top": [
            {"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
             "share": round(e.self_cpu_time_total / total, 3)} for e in events[:profile]]}
    return out


# ---------------------------------------------------------------- shapes where users are (random-weight teachers)

# fairseq's own presets; a joined vocabulary of this size (the data's dictionary padded with unused symbols)
SHAPES = {
    "iwslt": {"arch": "transformer_iwslt_de_en", "vocab": 10000},  # 6+6 layers, d 512, FFN 1024, 4 heads
    "wmt": {"arch": "transformer_wmt_en_de", "vocab": 32000},  # 6+6 layers, d 512, FFN 2048, 8 heads
}


def shape_data(data, out, vocab, throughput_sentences=256, latency_sentences=32, train_sentences=2000):
    """A copy of ``data`` for timing at a realistic vocabulary: its joined dictionary padded with unused symbols to
    ``vocab`` entries (existing ids unchanged), ``test`` = the first ``throughput_sentences`` test pairs, ``valid`` =
    the first ``latency_sentences`` (batch-1 latency), ``train`` = the first ``train_sentences`` train pairs (the
    memory of an update)."""
    from fairseq.data import Dictionary, data_utils, indexed_dataset

    if os.path.isfile(os.path.join(out, "done")):
        return out
    os.makedirs(out, exist_ok=True)
    pair = next(f.split(".")[1] for f in sorted(os.listdir(data)) if f.startswith("test.") and f.endswith(".bin"))
    langs = pair.split("-")
    dicts = [f"dict.{lang}.txt" for lang in langs]
    d = Dictionary.load(os.path.join(data, dicts[0]))
    extra = vocab - len(d)
    for name in dicts:
        with open(os.path.join(data, name)) as f:
            text = f.read()
        with open(os.path.join(out, name), "w") as f:
            f.write(text + "".join(f"madeupword{i:05d} 0\n" for i in range(max(0, extra))))
    for split, source, n in (("test", "test", throughput_sentences), ("valid", "test", latency_sentences),
                             ("train", "train", train_sentences)):
        for lang in langs:
            ds = data_utils.load_indexed_dataset(os.path.join(data, f"{source}.{pair}.{lang}"), d)
            prefix = os.path.join(out, f"{split}.{pair}.{lang}")
            builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=vocab)
            for i in range(min(n, len(ds))):
                builder.add_item(ds[i])
            builder.finalize(prefix + ".idx")
    open(os.path.join(out, "done"), "w").close()
    return out


def random_teacher(data, arch, save_dir):
    """A teacher of fairseq's ``arch`` with random weights: one fairseq-train update at a vanishing learning rate
    (a real fairseq checkpoint; its speed does not depend on its weights when lengths are forced)."""
    path = os.path.join(save_dir, "checkpoint_last.pt")
    if not os.path.isfile(path):
        checked(["fairseq-train", data, "--arch", arch, "--share-all-embeddings", "--train-subset", "test",
                 "--disable-validation", "--max-update", "1", "--optimizer", "adam", "--lr", "1e-9", "--max-tokens",
                 "2048", "--cpu", "--no-epoch-checkpoints", "--save-dir", save_dir, "--num-workers", "0"])
    return path


# ---------------------------------------------------------------- driver

MEMORY_METHODS = ("word_kd", "makd", "makd_recompute")  # what the --shapes memory runs compare

# CPU memory runs: glibc serves every block >= 64 KiB by mmap and unmaps it on free, so the resident size follows
# the live tensors (with its default caching, freed blocks stay resident and peaks depend on history)
EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}


def measured_env(threads, extra_env=None):
    """The environment of every measured process: fixed thread count, quiet warnings."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
                **(extra_env or {}))


def run_worker(kind, payload, threads, extra_env=None):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(payload)],
                          capture_output=True, text=True, env=measured_env(threads, extra_env))
    if proc.returncode != 0:
        sys.exit(f"speed.py: {kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checked(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"speed.py: {' '.join(cmd[:2])} failed:\n{proc.stderr[-4000:]}")
    return proc


def student_specs(args):
    """(key, budget, targets) of every student: each budget with the default targets ("50"), and with
    ``--vocabulary`` also with the vocabulary matrix factorized ("50_vocab")."""
    from makd_fairseq.lowrank import DEFAULT_TARGETS, VOCABULARY_TARGETS

    variants = {"": DEFAULT_TARGETS, **({"_vocab": DEFAULT_TARGETS + VOCABULARY_TARGETS} if args.vocabulary else {})}
    return [(f"{round(b * 100)}{suffix}", b, ",".join(targets)) for suffix, targets in variants.items()
            for b in args.budgets]


def make_students(teacher, work, args):
    """key -> student checkpoint; a budget the unfactorized parameters exceed goes to ``unmet`` (key -> reason)."""
    paths, unmet = {}, {}
    for key, budget, targets in student_specs(args):
        path = os.path.join(work, f"student{key}.pt")
        proc = None if os.path.exists(path) else subprocess.run(
            ["makd-init", "--teacher", teacher, "--param-budget", str(budget), "--targets", targets, "--out", path],
            capture_output=True, text=True)
        if proc is not None and proc.returncode != 0:
            unmet[key] = (proc.stderr.strip().splitlines() or ["makd-init failed"])[-1]
            print(f"student {key}: {unmet[key]}", flush=True)
        else:
            paths[key] = path
    return paths, unmet


def generate(path, args, env, data=None, subset="test", batch_size=None):
    proc = checked(["fairseq-generate", data or args.data, "--user-dir", USER_DIR, "--path", path,
                    *gen_flags(args, subset, batch_size), "--quiet"], env=env)
    m = re.search(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s",
                  proc.stdout + proc.stderr)
    if not m:
        sys.exit(f"speed.py: no throughput line in fairseq-generate's output:\n{proc.stderr[-2000:]}")
    return {"sentences": int(m.group(1).replace(",", "")), "tokens": int(m.group(2).replace(",", "")),
            "seconds": float(m.group(3)), "sentences_per_s": float(m.group(4))}


def gen_flags(args, subset="test", batch_size=None):
    device = ["--fp16"] if args.fp16 else ["--cpu"]
    # fairseq batches in multiples of 8 by default and drops what is left at batch size 1: every sentence counts here
    return ["--gen-subset", subset, "--beam", str(args.beam), "--batch-size", str(batch_size or args.batch_size),
            "--required-batch-size-multiple", "1",
            "--min-len", str(args.gen_len), "--max-len-a", "0", "--max-len-b", str(args.gen_len),
            "--truncate-source", "--max-source-positions", "256", "--skip-invalid-size-inputs-valid-test",
            "--num-workers", "0", *device]


def train_argv(args, student, method, save_dir, data=None, teacher=None):
    """fairseq-train's arguments (without the program name: the worker runs it in-process)."""
    from makd_fairseq.student import distill_command

    device = ["--fp16"] if args.fp16 else ["--cpu"]
    return distill_command(data or args.data, teacher or args.teacher, student, [
        *TRAIN_COMMON, "--lr", "0.0005", "--max-tokens", str(args.max_tokens), "--save-dir", save_dir,
        "--no-save", *device, *TRAIN_METHODS[method]])[1:]


def measure_shape(shape, args):
    """Generation of a random-weight teacher of a fairseq preset and its students: throughput (``--batch-size``) and
    batch-1 latency, at each ``--shape-threads``, ``--repeats`` interleaved rounds; ratios per round, median and
    range. FLOPs at the throughput setting."""
    spec, work = SHAPES[shape], os.path.join(args.work, shape)
    data = shape_data(args.shape_data or args.data, os.path.join(work, "data"), spec["vocab"], args.shape_sentences,
                      max(1, args.shape_sentences // 8))
    teacher = random_teacher(data, spec["arch"], os.path.join(work, "teacher"))
    students, unmet = make_students(teacher, work, args)  # an unmet budget is reported, not fatal
    paths = {"teacher": teacher, **{f"student{k}": p for k, p in students.items()}}
    settings = {"throughput": ("test", args.batch_size), "latency": ("valid", 1)}
    out = {"arch": spec["arch"], "vocab": spec["vocab"], "weights": "random: every hypothesis is forced to "
           f"{args.gen_len} tokens, so speed does not depend on them", "unmet_budgets": unmet, "threads": {}}
    first = student_specs(args)[0][0]
    if "train" in args.parts and first in students:  # peak memory of an update (CPU), as for the data's teacher
        peaks = {m: max(run_worker("train", {"argv": train_argv(args, students[first], m, os.path.join(work, "save"),
                                                                data, teacher),
                                             "steps": args.steps, "warmup": args.warmup}, 1,
                                   EXACT_MALLOC)["step_peak_bytes"]) for m in MEMORY_METHODS}
        out["train_peak_mem_bytes"] = peaks
        for m in ("makd", "makd_recompute"):
            out[f"{m}_over_wordkd_peak_mem"] = round(peaks[m] / peaks["word_kd"], 4)
        print(f"{shape}: peak memory of an update " + ", ".join(f"{m} {p / 2**20:.0f} MiB" for m, p in peaks.items()),
              flush=True)
    for name, path in paths.items():  # untimed: the first reader of data and models pays the cache
        generate(path, args, measured_env(1), data, "valid", 1)
    for threads in args.shape_threads:
        env = measured_env(threads)
        runs = {(kind, name): [] for kind in settings for name in paths}
        for r in range(args.repeats):
            for kind, (subset, batch) in settings.items():
                for name, path in paths.items():
                    runs[(kind, name)].append(generate(path, args, env, data, subset, batch)["sentences_per_s"])
            print(f"{shape} {threads} thread(s) round {r + 1}/{args.repeats}: " + ", ".join(
                f"{kind} {name} {runs[(kind, name)][-1]:.2f}/s" for kind in settings for name in paths), flush=True)
        entry = {"sentences_per_s": {kind: {name: statistics.median(runs[(kind, name)]) for name in paths}
                                     for kind in settings}, "rounds": {f"{k}/{n}": v for (k, n), v in runs.items()}}
        for key in students:
            for kind, prefix in (("throughput", "gen_speedup"), ("latency", "latency_speedup")):
                per_round = [a / b for a, b in zip(runs[(kind, f"student{key}")], runs[(kind, "teacher")])]
                entry[f"{prefix}_{key}"] = round(statistics.median(per_round), 4)
                entry[f"{prefix}_{key}_range"] = [round(min(per_round), 4), round(max(per_round), 4)]
        out["threads"][str(threads)] = entry
    flops = {name: run_worker("flops", {"path": path, "data": data, "gen_args": gen_flags(args),
                                        "batch_size": args.batch_size, "profile": 12},
                              max(args.shape_threads)) for name, path in paths.items()}
    out["profile"] = {name: f["profile"] for name, f in flops.items()}  # one generation batch, headline threads
    out["flops_per_sentence"] = {name: f["flops_per_sentence"] for name, f in flops.items()}
    out["params"] = {name: f["params"] for name, f in flops.items()}
    headline = out["threads"][str(max(args.shape_threads))]
    for key in students:
        out[f"flops_ratio_{key}"] = round(flops["teacher"]["flops_per_sentence"] / flops[f"student{key}"][
            "flops_per_sentence"], 4)
        for prefix in ("gen_speedup", "latency_speedup"):
            out[f"{prefix}_{key}"] = headline[f"{prefix}_{key}"]
        out[f"gen_speedup_over_flops_ratio_{key}"] = round(out[f"gen_speedup_{key}"] / out[f"flops_ratio_{key}"], 4)
    out["headline_threads"] = max(args.shape_threads)
    return out


def shapes_table(result):
    lines = ["| shape | threads | model | params | FLOPs ratio | throughput sentences/s (batch " + str(
        result["config"]["batch_size"]) + ") | speed-up [range] | latency sentences/s (batch 1) | speed-up [range] |",
        "|---|---|---|---|---|---|---|---|---|"]
    for shape, r in result.get("shapes", {}).items():
        for threads, t in r["threads"].items():
            for name in r["params"]:
                key = name[len("student"):]
                ratio = 1.0 if name == "teacher" else r[f"flops_ratio_{key}"]
                cells = []
                for kind, prefix in (("throughput", "gen_speedup"), ("latency", "latency_speedup")):
                    speed = t["sentences_per_s"][kind][name]
                    up = "1.00" if name == "teacher" else (f"{t[f'{prefix}_{key}']:.2f} [{t[f'{prefix}_{key}_range'][0]:.2f}"
                                                           f", {t[f'{prefix}_{key}_range'][1]:.2f}]")
                    cells += [f"{speed:.2f}", up]
                lines.append(f"| {shape} ({r['arch']}, {r['vocab']:,} vocab) | {threads} | {name} | {r['params'][name]:,} "
                             f"| {ratio:.2f} | " + " | ".join(cells) + " |")
    notes = [f"{shape}, {key}%: {why}" for shape, r in result.get("shapes", {}).items()
             for key, why in r.get("unmet_budgets", {}).items()]
    memory = [f"{shape}: " + ", ".join(
        f"{m} {p / 2**20:.0f} MiB" + (f" (× {p / r['train_peak_mem_bytes']['word_kd']:.2f})" if m != "word_kd" else "")
        for m, p in r["train_peak_mem_bytes"].items())
        for shape, r in result.get("shapes", {}).items() if "train_peak_mem_bytes" in r]
    return lines + [""] + ([f"Not measured: {'; '.join(notes)}", ""] if notes else []) + (
        [f"Peak memory of an update (50% student): {'; '.join(memory)}", ""] if memory else [])


def table(result):
    lines = []
    if result.get("shapes"):
        lines += shapes_table(result)
    if result["train"]:
        lines += train_table(result)
    if result["generate"]:
        lines += generation_table(result)
    return "\n".join(lines) + "\n"


def train_table(result):
    lines = [f"| training method ({result['config']['budgets'][0]:.0%} student) | s / update (median) | × word_kd | teacher forward share "
             "| peak memory of an update (MiB) | × word_kd |", "|---|---|---|---|---|---|"]
    wk = result["train"]["word_kd"]
    for m, r in result["train"].items():
        lines.append(f"| {m} | {r['step_s_median']:.3f} | {r['step_s_median'] / wk['step_s_median']:.2f} "
                     f"| {r['teacher_share']:.0%} | {r['peak_mem_bytes'] / 2**20:.0f} "
                     f"| {r['peak_mem_bytes'] / max(wk['peak_mem_bytes'], 1):.2f} |")
    return lines + [""]


def generation_table(result):
    lines = ["| model | params | generation FLOPs / sentence | sentences/s (median) | speed-up | FLOPs ratio "
              "| speed-up / FLOPs ratio |", "|---|---|---|---|---|---|---|"]
    t = result["generate"]["teacher"]
    for name, g in result["generate"].items():
        speedup, ratio = g["sentences_per_s"] / t["sentences_per_s"], t["flops_per_sentence"] / g["flops_per_sentence"]
        lines.append(f"| {name} | {g['params']:,} | {g['flops_per_sentence'] / 1e9:.2f} G | {g['sentences_per_s']:.2f} "
                     f"| {speedup:.2f} | {ratio:.2f} | {speedup / ratio:.0%} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help="binarized data (fairseq-preprocess output) the teacher was trained on")
    parser.add_argument("--teacher", help="teacher checkpoint")
    parser.add_argument("--work", default="/tmp/makd_speed", help="students and scratch files go here")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "speed.json"))
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25],
                        help="student budgets; training is timed on the first")
    parser.add_argument("--steps", type=int, default=20, help="timed updates per training run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every measurement (median reported)")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--gen-len", type=int, default=24, help="every hypothesis is this long")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of every measured process")
    parser.add_argument("--fp16", action="store_true", help="GPU: train and generate in half precision")
    parser.add_argument("--parts", nargs="*", choices=("train", "generate"), default=["train", "generate"],
                        help="what to measure (both by default)")
    parser.add_argument("--shapes", nargs="*", choices=sorted(SHAPES), default=[],
                        help="also time generation at these fairseq presets (random-weight teachers, the data's "
                             "dictionary padded to their vocabulary)")
    parser.add_argument("--shape-data", help="binarized data whose sentences the --shapes runs use (default: --data)")
    parser.add_argument("--shape-threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts of the --shapes measurements (the largest is the headline)")
    parser.add_argument("--shape-sentences", type=int, default=256,
                        help="test sentences timed per --shapes throughput run (an eighth of them at batch 1)")
    parser.add_argument("--vocabulary", action=argparse.BooleanOptionalAction, default=True,
                        help="also time students whose vocabulary matrix (embeddings and output projection) is "
                             "factorized and counted in the budget (keys 50_vocab, 25_vocab)")
    parser.add_argument("--profile", choices=list(TRAIN_METHODS), metavar="METHOD",
                        help="instead of the benchmark: profile --steps updates of METHOD with torch.profiler")
    args = parser.parse_args(argv)

    if args.worker:
        kind, payload = args.worker[0], json.loads(args.worker[1])
        import makd_fairseq  # noqa: F401

        out = train_worker(**payload) if kind == "train" else flops_worker(**payload)
        print(json.dumps(out))
        return
    for flag, path, is_dir in (("--data", args.data, True), ("--teacher", args.teacher, False),
                               ("--shape-data", args.shape_data, True)):
        if flag == "--shape-data" and path is None:
            continue
        if not path or not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
            parser.error(f"{flag} {path}: no such {'directory' if is_dir else 'file'}")
    if os.path.abspath(args.out) in (os.path.abspath(args.teacher), os.path.abspath(args.data)):
        parser.error("--out would overwrite an input")
    os.makedirs(args.work, exist_ok=True)
    started, state = time.time(), git_state()  # the code measured: the commit (and dirty flag) at the start
    students, unmet = make_students(args.teacher, args.work, args)
    if unmet:
        sys.exit(f"speed.py: students of --teacher could not be made: {unmet}")
    keys = list(students)
    if args.profile:
        argv_p = train_argv(args, students[keys[0]], args.profile, os.path.join(args.work, "save"))
        out = run_worker("train", {"argv": argv_p, "steps": args.steps, "warmup": args.warmup, "profile": 40},
                         args.threads)
        print(out["profile"])
        print(f"{args.profile}: median {statistics.median(out['step_s']):.3f} s/update, teacher forward "
              f"{sum(out['teacher_s']) / sum(out['step_s']):.0%} (profiler overhead included)")
        return
    env = measured_env(args.threads)

    shapes = {shape: measure_shape(shape, args) for shape in args.shapes}
    parts = set(args.parts)
    paths = {"teacher": args.teacher, **{f"student{k}": students[k] for k in keys}}
    runs = {m: [] for m in TRAIN_METHODS} if "train" in parts else {}
    memory = {}  # method -> per-update peaks (CPU); on GPU the timed runs' allocator statistics
    gens = {name: [] for name in paths} if "generate" in parts else {}
    for path in paths.values() if gens else ():  # untimed: the first reader of data and models pays the cache
        generate(path, args, env)
    for r in range(args.repeats):  # interleaved rounds: slow drifts of the machine hit every method alike
        for m in runs:
            argv_m = train_argv(args, students[keys[0]], m, os.path.join(args.work, "save"))
            runs[m].append(run_worker("train", {"argv": argv_m, "steps": args.steps, "warmup": args.warmup},
                                      args.threads))
            print(f"round {r + 1}/{args.repeats} train {m}: median "
                  f"{statistics.median(runs[m][-1]['step_s']):.3f} s/update", flush=True)
        for m in runs if r == 0 and not args.fp16 else ():  # CPU peak memory: separate, untimed runs
            argv_m = train_argv(args, students[keys[0]], m, os.path.join(args.work, "save"))
            memory[m] = run_worker("train", {"argv": argv_m, "steps": args.steps, "warmup": args.warmup},
                                   args.threads, EXACT_MALLOC)["step_peak_bytes"]
        for name in gens:
            gens[name].append(generate(paths[name], args, env))
            print(f"round {r + 1}/{args.repeats} generate {name}: {gens[name][-1]['sentences_per_s']:.2f} "
                  "sentences/s", flush=True)

    result, ratios = {"train": {}, "generate": {}}, {}
    tr, ge = result["train"], result["generate"]
    for m, rs in runs.items():
        steps = [s for r in rs for s in r["step_s"]]
        teacher = [s for r in rs for s in r["teacher_s"]]
        tr[m] = {
            "step_s_median": statistics.median(steps), "step_s_total": sum(steps), "updates": len(steps),
            "teacher_share": sum(teacher) / sum(steps),
            "peak_mem_bytes": max(memory.get(m) or [p for r in rs for p in r["step_peak_bytes"]]),
            "runs": rs,
        }
    if tr:
        ratios.update({
            "makd_over_wordkd_step": tr["makd"]["step_s_median"] / tr["word_kd"]["step_s_median"],
            "makd_over_wordkd_peak_mem": tr["makd"]["peak_mem_bytes"] / max(tr["word_kd"]["peak_mem_bytes"], 1),
            "makd_recompute_over_wordkd_step": tr["makd_recompute"]["step_s_median"] / tr["word_kd"]["step_s_median"],
            "makd_recompute_over_wordkd_peak_mem":
                tr["makd_recompute"]["peak_mem_bytes"] / max(tr["word_kd"]["peak_mem_bytes"], 1),
            "layerkd_over_wordkd_step": tr["layer_kd"]["step_s_median"] / tr["word_kd"]["step_s_median"],
            "wordkd_over_ce_step": tr["word_kd"]["step_s_median"] / tr["ce"]["step_s_median"],
        })
    for name in gens:
        flops = run_worker("flops", {"path": paths[name], "data": args.data, "gen_args": gen_flags(args),
                                     "batch_size": args.batch_size}, args.threads)
        ge[name] = {"sentences_per_s": statistics.median(g["sentences_per_s"] for g in gens[name]),
                    "runs": gens[name], **flops}
    for key in keys if ge else ():
        s = ge[f"student{key}"]
        ratios[f"gen_speedup_{key}"] = s["sentences_per_s"] / ge["teacher"]["sentences_per_s"]
        ratios[f"flops_ratio_{key}"] = ge["teacher"]["flops_per_sentence"] / s["flops_per_sentence"]
        ratios[f"gen_speedup_over_flops_ratio_{key}"] = ratios[f"gen_speedup_{key}"] / ratios[f"flops_ratio_{key}"]
    if shapes:
        result["shapes"] = shapes
    result = {**{k: round(v, 4) for k, v in ratios.items()}, **result, "config": {
        k: v for k, v in vars(args).items() if k != "worker"},
        "command": command(__file__, argv), "git_commit": state["commit"], "git_dirty": state["dirty"],
        "hardware": hardware(f"{args.threads} thread(s) per measured process"),
        "wall_s": round(time.time() - started, 1)}
    write_atomic(args.out, json.dumps(result, indent=1))
    md = os.path.splitext(args.out)[0] + ".md"
    write_atomic(md, table(result))
    print(table(result))
    print(json.dumps({k: result[k] for k in ratios}, indent=1))
    print(f"wrote {args.out} and {md}")


if __name__ == "__main__":
    main()
