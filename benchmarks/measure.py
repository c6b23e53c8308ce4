"""The speed benchmark's measurements, each in a fresh process: fairseq's own ``Trainer.train_step`` timed per update
(with the teacher's forward and the peak memory of an update), FLOPs of one generation batch, fairseq-generate's
own sentences/s with every hypothesis forced to one length, and the same generation in CTranslate2 (the teacher
converted by its fairseq converter). ``run_worker`` starts ``python3 -m benchmarks.measure KIND JSON``, which prints
one JSON line."""
import json
import os
import re
import statistics
import sys
import time

from makd_fairseq.fairseq_logs import LogError, generation_speed
from makd_fairseq.files import USER_DIR, write_json
from makd_fairseq.forking import captured

from .sizes import METHODS, TRAIN_COMMON

# the training methods timed: the benchmark's methods and makd trading time for memory (--recompute-teacher)
TRAIN_METHODS = {**METHODS, "makd_recompute": [*METHODS["makd"], "--recompute-teacher"]}
MEMORY_METHODS = ("word_kd", "makd", "makd_recompute")  # what the --shapes memory runs compare

# CPU memory runs: glibc serves every block >= 64 KiB by mmap and unmaps it on free, so the resident size follows
# the live tensors (with its default caching, freed blocks stay resident and peaks depend on history)
EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}

# how fairseq-generate decodes a model: fairseq's own translation task (encoder output, its mask and the
# cross-attention k/v repeated for every beam: what a plain fairseq user runs), the plugin's task as it decodes by
# default (kept once per source sentence, LeanDecoder's step), the plugin's task with fairseq's decoding step (once per
# sentence only), and the plugin's task with a student's latent self-attention cache off (the lean step's k/v cache)
DECODING = {
    "fairseq": ["--task", "translation"],
    "lean": ["--task", "makd_translation"],
    "per_sentence": ["--task", "makd_translation", "--fairseq-decoder-step"],
    "no_latent": ["--task", "makd_translation", "--model-overrides", "{'no_latent_cache': True}"],
}
# source tokens kept (fairseq: --truncate-source --max-source-positions; CTranslate2: max_input_length)
MAX_SOURCE = 256
# CTranslate2's compute types per device: the converted fp32 weights, and int8 (quantized when the model is loaded)
CT2_TYPES = {"cpu": {"fp32": "float32", "int8": "int8"}, "cuda": {"fp32": "float16", "int8": "int8_float16"}}


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


def decoder_weights_per_step(decoder):
    """Decoder parameters one decoding step reads: every one, less the cross-attention key/value projections (applied
    once per source sentence, to the encoder output) and the embedding tables (a lookup reads the beam's rows), but
    with the output projection, even where it is the embedding table. At batch 1 a step streams these weights from
    memory once each: a floor on its time that fewer FLOPs do not lower unless they also mean fewer weights."""
    import torch.nn as nn

    from makd_fairseq.lowrank.layers import LowRankEmbedding

    once = {id(p) for name, m in decoder.named_modules()
            if name.endswith(("encoder_attn.k_proj", "encoder_attn.v_proj")) for p in m.parameters()}
    output = {id(p) for p in decoder.output_projection.parameters()}
    looked_up = {id(m.weight) for m in decoder.modules() if isinstance(m, nn.Embedding)} | {
        id(m.up.weight) for m in decoder.modules() if isinstance(m, LowRankEmbedding)}  # rows up[i] @ down
    looked_up -= output
    return {"total": sum(p.numel() for p in decoder.parameters() if id(p) not in once | looked_up),
            "output_projection": sum(p.numel() for p in decoder.output_projection.parameters())}


def flops_worker(path, data, gen_args, batch_size, profile=0):
    """FLOPs per sentence of one generation batch (after fairseq's inference preparation); with ``profile``, also
    where the time of a second, timed pass over the same batch goes (torch.profiler, top ``profile`` operators)."""
    import ast

    import torch
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from torch.utils.flop_counter import FlopCounterMode

    import makd_fairseq  # noqa: F401

    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
        options.get_generation_parser(), [data, "--path", path, "--user-dir", USER_DIR, *gen_args]))
    task = tasks.setup_task(cfg.task)  # as fairseq-generate builds them: the command line's task and overrides
    models, _ = checkpoint_utils.load_model_ensemble(
        [path], arg_overrides={**ast.literal_eval(cfg.common_eval.model_overrides), "data": data}, task=task)
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
           "latent_cache": getattr(model, "latent_cache", None),  # what make_generation_fast_ was told (students)
           "hypothesis_lengths": sorted(lengths), "params": sum(p.numel() for p in model.parameters()),
           "decoder_weights_per_step": decoder_weights_per_step(model.decoder)}
    if profile:
        with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            task.inference_step(generator, [model], sample)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        out["profile"] = {"total_ms": round(total / 1e3, 1), "index_select_share": round(sum(  # the beam reordering
            e.self_cpu_time_total for e in events if e.key == "aten::index_select") / total, 3), "top": [
            {"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
             "share": round(e.self_cpu_time_total / total, 3)} for e in events[:profile]]}
    return out


def source_tokens(data, subset):
    """The binarized source sentences of ``data``'s ``subset`` as dictionary symbols (CTranslate2's input), without
    the final </s> (the converted model appends it, as fairseq's dataset does)."""
    from fairseq.data import Dictionary, data_utils

    src, tgt = language_pair(data)
    d = Dictionary.load(os.path.join(data, f"dict.{src}.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(data, f"{subset}.{src}-{tgt}.{src}"), d)
    return [[d[i] for i in ds[k].tolist()[:-1]] for k in range(len(ds))]


def ct2_worker(model_dir, data, subset, batch_size, beam, steps, compute_type, device, threads):
    """CTranslate2's ``translate_batch`` over every sentence of ``subset`` (the same token ids as fairseq-generate,
    batches of ``batch_size`` sentences sorted by length, ``steps`` decoder steps per hypothesis): sentences/s of the
    call, timed as fairseq-generate times its own (decoding only, data and model loaded)."""
    import ctranslate2

    sentences = source_tokens(data, subset)
    translator = ctranslate2.Translator(model_dir, device=device, compute_type=compute_type, inter_threads=1,
                                       intra_threads=threads)
    start = time.perf_counter()
    out = translator.translate_batch(sentences, beam_size=beam, max_batch_size=batch_size, batch_type="examples",
                                     min_decoding_length=steps, max_decoding_length=steps,
                                     max_input_length=MAX_SOURCE)
    seconds = time.perf_counter() - start
    lengths = [len(o.hypotheses[0]) for o in out]
    return {"sentences": len(out), "tokens": sum(lengths), "seconds": seconds, "sentences_per_s": len(out) / seconds,
            "hypothesis_lengths": sorted(set(lengths)), "compute_type": compute_type,
            "ctranslate2": ctranslate2.__version__}


# ---------------------------------------------------------------- starting them

def measured_env(threads, extra_env=None):
    """The environment of every measured process: fixed thread count, quiet warnings."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
                **(extra_env or {}))


def run_worker(kind, payload, threads, extra_env=None):
    proc = captured([sys.executable, "-m", "benchmarks.measure", kind, json.dumps(payload)],
                    env=measured_env(threads, extra_env))
    if proc.returncode != 0:
        sys.exit(f"benchmarks.speed: {kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checked(cmd, env=None):
    proc = captured(cmd, env=env)
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
        proc = None if os.path.exists(path) else captured(
            ["makd-init", "--teacher", teacher, "--param-budget", str(budget), "--targets", targets, "--out", path])
        if proc is not None and proc.returncode != 0:
            unmet[key] = (proc.stderr.strip().splitlines() or ["makd-init failed"])[-1]
            print(f"student {key}: {unmet[key]}", flush=True)
        else:
            paths[key] = path
    return paths, unmet


def generate(path, args, env, data=None, subset="test", batch_size=None, decoding="fairseq"):
    """fairseq-generate of ``path`` with ``gen_flags``: its own sentences, tokens, seconds and sentences/s."""
    proc = checked(["fairseq-generate", data or args.data, "--user-dir", USER_DIR, "--path", path,
                    *gen_flags(args, subset, batch_size, decoding), "--quiet"], env=env)
    try:
        speed = generation_speed(proc.stdout + proc.stderr, "fairseq-generate's output")
    except LogError as e:
        sys.exit(f"benchmarks.speed: {e}\n{proc.stderr[-2000:]}")
    return {k: speed[k] for k in ("sentences", "tokens", "seconds", "sentences_per_s")}


def gen_flags(args, subset="test", batch_size=None, decoding="fairseq"):
    device = ["--fp16"] if args.fp16 else ["--cpu"]
    # fairseq batches in multiples of 8 by default and drops what is left at batch size 1: every sentence counts here
    return [*DECODING[decoding], "--gen-subset", subset, "--beam", str(args.beam),
            "--batch-size", str(batch_size or args.batch_size), "--required-batch-size-multiple", "1",
            "--min-len", str(args.gen_len), "--max-len-a", "0", "--max-len-b", str(args.gen_len),
            "--truncate-source", "--max-source-positions", str(MAX_SOURCE), "--skip-invalid-size-inputs-valid-test",
            "--num-workers", "0", *device]


def ct2_generate(model_dir, compute, args, threads, data=None, subset="test", batch_size=None):
    """``ct2_worker`` in a fresh process with ``gen_flags``'s beam, batch and work: fairseq's ``--gen-len`` tokens
    plus its forced </s> are ``--gen-len`` + 1 decoder steps, CTranslate2's min = max decoding length."""
    device = "cuda" if args.fp16 else "cpu"
    return run_worker("ct2", {"model_dir": model_dir, "data": data or args.data, "subset": subset,
                              "batch_size": batch_size or args.batch_size, "beam": args.beam, "steps": args.gen_len + 1,
                              "compute_type": CT2_TYPES[device][compute], "device": device, "threads": threads},
                      threads)


def ct2_missing():
    """Why the CTranslate2 part cannot run here, or None."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError as e:
        return f"ctranslate2 is not importable ({e}): pip install ctranslate2"
    return None


USER_DIR_ATTEMPT = ["--user_dir", USER_DIR]  # importing the plugin allow-lists a fairseq checkpoint's types


def convert_ct2(checkpoint, data, out_dir, attempts=([], USER_DIR_ATTEMPT)):
    """(CTranslate2 model directory or None, notes): ``ct2-fairseq-converter`` on ``checkpoint`` with each of
    ``attempts``' extra flags in turn (as a user runs it, then with ``--user_dir`` this plugin, whose import allow-lists
    a fairseq checkpoint's types for torch's weights_only loading) until one converts; each failure goes to the notes
    as the converter's line that raised and the error. Reused when already converted."""
    record = out_dir + ".json"
    if os.path.isfile(os.path.join(out_dir, "model.bin")) and os.path.isfile(record):
        with open(record) as f:
            return out_dir, json.load(f)
    src, tgt = language_pair(data)
    cmd = [sys.executable, "-m", "ctranslate2.converters.fairseq", "--model_path", checkpoint, "--data_dir", data,
           "--source_lang", src, "--target_lang", tgt, "--output_dir", out_dir, "--force"]
    notes = []
    for extra in attempts:
        # as a user runs it: a new interpreter, never forked (a fork would have the plugin's allow-list imported);
        # the attempt with --user_dir imports the plugin anyway
        proc = captured(cmd + extra, env=measured_env(1), fork=None if extra else False)
        if proc.returncode == 0:
            write_json(record, notes)
            return out_dir, notes
        notes.append(f"ct2-fairseq-converter{' --user_dir makd_fairseq' if extra else ''}: {raised(proc.stderr)}")
        print(f"{checkpoint}: {notes[-1]}", flush=True)
    return None, notes


def raised(stderr):
    """Where and why a Python traceback ended: 'file.py:LINE `code`: Error: message' (one line, at most 500 chars)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in stderr.splitlines() if line.strip()]
    # torch.load's weights_only refusal: its one informative line (the exception's text is a page of advice)
    error = next((line for line in lines if line.startswith("WeightsUnpickler error")), None) or next(
        (line for line in reversed(lines) if re.match(r"[\w.]*(Error|Exception)\b", line)),
        lines[-1] if lines else "no output")
    frames = [i for i, line in enumerate(lines) if line.startswith('File "')]
    ours = [i for i in frames if "ctranslate2" in lines[i]] or frames  # the converter's own line, when it has one
    where = ""
    if ours:
        m = re.match(r'File "([^"]+)", line (\d+)', lines[ours[-1]])
        code = lines[ours[-1] + 1] if ours[-1] + 1 < len(lines) else ""
        where = f"{os.path.basename(m.group(1))}:{m.group(2)} `{code}`: " if m else ""
    return (where + error)[:500]


def make_dense(teacher, work, args):
    """key -> the dense fewer-layer student (``makd-shrink``) at each budget; a budget it cannot meet is left out."""
    paths = {}
    for key, budget, _ in student_specs(args):
        path = os.path.join(work, f"dense{key}.pt")
        if key.endswith("_vocab"):
            continue
        if not os.path.exists(path):
            proc = captured(["makd-shrink", "--teacher", teacher, "--param-budget", str(budget), "--out", path])
            if proc.returncode != 0:
                print(f"dense {key}: {(proc.stderr.strip().splitlines() or ['makd-shrink failed'])[-1]}", flush=True)
                continue
        paths[key] = path
    return paths


def generation_models(teacher, students, dense, ct2, args):
    """name -> what is timed: ("fairseq", checkpoint, ``DECODING`` key) or ("ctranslate2", model directory,
    compute type).

    The teacher as fairseq-generate decodes it (``teacher``), with encoder states once per sentence
    (``teacher_per_sentence``) and as the plugin decodes it (``teacher_lean``: once per sentence, the lean step); each
    student as the plugin decodes it (``student50``: once per sentence, the lean step, latent cache), with fairseq's
    step (``student50_fairseq_step``, with ``--fairseq-step``) and with the latent cache off
    (``student50_no_latent``, with ``--latent-off``); the dense students as the plugin decodes them (``dense50``);
    CTranslate2's teacher and dense students (``ct2_teacher_fp32``, ``ct2_dense50_int8``, ...)."""
    models = {"teacher": ("fairseq", teacher, "fairseq"), "teacher_per_sentence": ("fairseq", teacher, "per_sentence"),
              "teacher_lean": ("fairseq", teacher, "lean")}
    for key, path in students.items():
        models[f"student{key}"] = ("fairseq", path, "lean")
        if key.endswith("_vocab"):  # the same attention as the student without _vocab
            continue
        if args.fairseq_step:
            models[f"student{key}_fairseq_step"] = ("fairseq", path, "per_sentence")
        if args.latent_off:
            models[f"student{key}_no_latent"] = ("fairseq", path, "no_latent")
    for key, path in dense.items():
        models[f"dense{key}"] = ("fairseq", path, "lean")
    for name, model_dir in ct2.items():
        for compute in CT2_TYPES["cpu"]:
            models[f"ct2_{name}_{compute}"] = ("ctranslate2", model_dir, compute)
    return models


VARIANTS = ("_fairseq_step", "_no_latent")  # a student decoded another way than the plugin's default


def ratio_pairs(models):
    """ratio suffix -> (numerator, denominator) among the timed ``models``: ``gen_speedup_<suffix>`` is the first's
    sentences/s over the second's. ``50``: the student as the plugin decodes it against the teacher in plain fairseq
    (the headline); ``50_vs_lean``: against the teacher as the plugin decodes it (what the factorization adds);
    ``50_vs_per_sentence``: against the teacher with encoder states once per sentence and fairseq's step;
    ``50_fairseq_step``: the student with fairseq's step against the teacher; ``50_lean_gain``: the student with the
    lean step over with fairseq's; ``50_no_latent``: the student without its latent cache against the teacher;
    ``50_latent_gain``: with the latent cache over without; ``50_vs_ct2_fp32``: against the teacher in CTranslate2;
    ``lean``, ``per_sentence``, ``ct2_fp32``, ``dense50``, ``ct2_dense50_fp32``: each of those against the teacher
    in plain fairseq."""
    ct2 = [c for c in CT2_TYPES["cpu"] if f"ct2_teacher_{c}" in models]
    pairs = {"per_sentence": ("teacher_per_sentence", "teacher"), "lean": ("teacher_lean", "teacher"),
             **{f"ct2_{c}": (f"ct2_teacher_{c}", "teacher") for c in ct2}}
    for name in models:
        if name.startswith("ct2_dense"):  # against the teacher in fairseq and in CTranslate2 at its own precision
            compute = name.rsplit("_", 1)[1]
            pairs[name] = (name, "teacher")
            pairs[f"{name}_vs_ct2_{compute}"] = (name, f"ct2_teacher_{compute}")
            continue
        if name.startswith("dense"):
            key = name
        elif name.startswith("student") and not name.endswith(VARIANTS):
            key = name[len("student"):]
            pairs[f"{key}_vs_per_sentence"] = (name, "teacher_per_sentence")
            for variant, gain in (("fairseq_step", "lean_gain"), ("no_latent", "latent_gain")):
                if f"{name}_{variant}" in models:
                    pairs[f"{key}_{variant}"] = (f"{name}_{variant}", "teacher")
                    pairs[f"{key}_{gain}"] = (name, f"{name}_{variant}")
        else:
            continue
        pairs[key] = (name, "teacher")
        pairs[f"{key}_vs_lean"] = (name, "teacher_lean")
        pairs.update({f"{key}_vs_ct2_{c}": (name, f"ct2_teacher_{c}") for c in ct2})
    return pairs


def generation_calls(models, args, threads, settings, data=None):
    """One measurement per (setting, model) for ``timing.interleaved``: {"<setting>/<name>": call}, each call
    returning what ``generate`` / ``ct2_generate`` return. ``settings``: setting -> (subset, batch size)."""
    env = measured_env(threads)

    def call(subset, batch, engine, path, how):
        if engine == "ctranslate2":
            return lambda: ct2_generate(path, how, args, threads, data, subset, batch)
        return lambda: generate(path, args, env, data, subset, batch, how)

    return {f"{kind}/{name}": call(subset, batch, *models[name]) for kind, (subset, batch) in settings.items()
            for name in models}


def progress(label, rounds):
    """``timing.interleaved``'s ``done``: one line per timed result."""
    def done(r, name, out):
        value = (f"{out['sentences_per_s']:.2f} sentences/s" if "sentences_per_s" in out
                 else f"median {statistics.median(out['step_s']):.3f} s/update")
        print(f"{label}round {r + 1}/{rounds} {name}: {value}", flush=True)
    return done


def ct2_models(teacher, dense, work, data, args):
    """(name -> CTranslate2 model directory of the teacher and of each dense student the converter takes, what the
    results record about it: the version and each converter failure, or why the CTranslate2 part was skipped)."""
    why = "--no-ctranslate2" if not args.ctranslate2 else ct2_missing()
    if why:
        print(f"CTranslate2 skipped: {why}", flush=True)
        return {}, {"skipped": why}
    import ctranslate2

    dirs, notes, attempts = {}, {}, ([], USER_DIR_ATTEMPT)
    for name, path in {"teacher": teacher, **{f"dense{k}": p for k, p in dense.items()}}.items():
        model_dir, failures = convert_ct2(path, data, os.path.join(work, "ct2", name), attempts)
        if failures:
            notes[name] = failures
        if name == "teacher" and failures and model_dir:  # the as-is failure is the teacher's too: not repeated
            attempts = (USER_DIR_ATTEMPT,)
        if model_dir:
            dirs[name] = model_dir
    return dirs, {"version": ctranslate2.__version__, "converted": sorted(dirs), "converter_failures": notes,
                  "decoder_steps": args.gen_len + 1, "compute_types": CT2_TYPES["cuda" if args.fp16 else "cpu"]}


def language_pair(data):
    """(source, target) language of a fairseq-preprocess directory (from its test split's file names)."""
    pair = next(f.split(".")[1] for f in sorted(os.listdir(data)) if f.startswith("test.") and f.endswith(".bin"))
    return tuple(pair.split("-"))


def train_argv(args, student, method, save_dir, data=None, teacher=None):
    """fairseq-train's arguments (without the program name: the worker runs it in-process)."""
    from makd_fairseq.student import distill_command

    device = ["--fp16"] if args.fp16 else ["--cpu"]
    return distill_command(data or args.data, teacher or args.teacher, student, [
        *TRAIN_COMMON, "--lr", "0.0005", "--max-tokens", str(args.max_tokens), "--save-dir", save_dir,
        "--no-save", *device, *TRAIN_METHODS[method]])[1:]


def main(argv=None):
    """``python3 -m benchmarks.measure train|flops|ct2 JSON``: one worker; its result is the last line printed."""
    kind, payload = (argv if argv is not None else sys.argv[1:])
    import makd_fairseq  # noqa: F401

    worker = {"train": train_worker, "flops": flops_worker, "ct2": ct2_worker}[kind]
    out = worker(**json.loads(payload))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
