"""The speed benchmark's measurements, each in a fresh process: fairseq's own ``Trainer.train_step`` timed per update
(with the teacher's forward and the peak memory of an update), FLOPs of one generation batch, and fairseq-generate's
own sentences/s with every hypothesis forced to one length. ``run_worker`` starts ``python3 -m benchmarks.measure
KIND JSON``, which prints one JSON line."""
import json
import os
import subprocess
import sys
import time

from makd_fairseq.fairseq_logs import LogError, generation_speed
from makd_fairseq.files import USER_DIR

from .sizes import METHODS, TRAIN_COMMON

# the training methods timed: the benchmark's methods and makd trading time for memory (--recompute-teacher)
TRAIN_METHODS = {**METHODS, "makd_recompute": [*METHODS["makd"], "--recompute-teacher"]}
MEMORY_METHODS = ("word_kd", "makd", "makd_recompute")  # what the --shapes memory runs compare

# CPU memory runs: glibc serves every block >= 64 KiB by mmap and unmaps it on free, so the resident size follows
# the live tensors (with its default caching, freed blocks stay resident and peaks depend on history)
EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}


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


# ---------------------------------------------------------------- starting them

def measured_env(threads, extra_env=None):
    """The environment of every measured process: fixed thread count, quiet warnings."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
                **(extra_env or {}))


def run_worker(kind, payload, threads, extra_env=None):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.measure", kind, json.dumps(payload)],
                          capture_output=True, text=True, env=measured_env(threads, extra_env))
    if proc.returncode != 0:
        sys.exit(f"benchmarks.speed: {kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checked(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"benchmarks.speed: {' '.join(cmd[:2])} failed:\n{proc.stderr[-4000:]}")
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
    """fairseq-generate of ``path`` with ``gen_flags``: its own sentences, tokens, seconds and sentences/s."""
    proc = checked(["fairseq-generate", data or args.data, "--user-dir", USER_DIR, "--path", path,
                    *gen_flags(args, subset, batch_size), "--quiet"], env=env)
    try:
        speed = generation_speed(proc.stdout + proc.stderr, "fairseq-generate's output")
    except LogError as e:
        sys.exit(f"benchmarks.speed: {e}\n{proc.stderr[-2000:]}")
    return {k: speed[k] for k in ("sentences", "tokens", "seconds", "sentences_per_s")}


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


def main(argv=None):
    """``python3 -m benchmarks.measure train|flops JSON``: one worker; its result is the last line printed."""
    kind, payload = (argv if argv is not None else sys.argv[1:])
    import makd_fairseq  # noqa: F401

    out = train_worker(**json.loads(payload)) if kind == "train" else flops_worker(**json.loads(payload))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
