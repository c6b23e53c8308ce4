#!/usr/bin/env python3
"""What distillation costs per update and how fast the students generate: ratios measured in one run.

    python3 -m benchmarks.speed --data /tmp/debian/summarization/bin --teacher T.pt --work /tmp/speed

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
3. Generation: ``fairseq-generate`` (beam, batch size, threads all fixed) on the test set for the teacher as fairseq
   decodes it (``--task translation``: encoder states repeated per beam), with encoder states once per source
   sentence (``--task makd_translation --fairseq-decoder-step``) and as the plugin decodes it (``--task
   makd_translation``: once per sentence, ``LeanDecoder``'s step), each student as the plugin decodes it
   (``makd_translation``: the lean step, latent self-attention cache), with fairseq's step
   (``--fairseq-decoder-step``) and with the latent cache off (``--model-overrides "{'no_latent_cache': True}"``),
   the dense fewer-layer students of ``makd-shrink`` as the plugin decodes them, and the teacher (and the dense
   students, where the converter takes them) in CTranslate2, fp32 and int8, on the same token ids. Every hypothesis
   is forced to exactly ``--gen-len`` tokens (``--min-len = --max-len-b``; CTranslate2: ``--gen-len`` + 1 decoder
   steps, fairseq's forced </s> included), so the models do the same work whatever their quality; throughput is each
   engine's own sentences/s, median over ``--repeats`` interleaved rounds after ``--gen-warmup`` untimed passes
   (``makd_fairseq.timing``, the timing makd-compress's report uses). The ratios are named by ``measure.ratio_pairs``
   (``gen_speedup_50`` against the teacher in plain fairseq, ``_vs_lean``, ``_vs_per_sentence``, ``_fairseq_step``,
   ``_lean_gain``, ``_no_latent``, ``_latent_gain``, ``_vs_ct2_fp32``/``_int8``), the pairs recorded in the JSON
   (``ratio_pairs``).
4. FLOPs: the same generation on one batch under ``torch.utils.flop_counter.FlopCounterMode``, after fairseq's
   ``prepare_for_inference_`` (factors past break-even merged); the teacher/student ratio is the speed-up a
   student could reach if time followed FLOPs.

5. ``--shapes iwslt wmt``: the same generation at fairseq's ``transformer_iwslt_de_en`` and ``transformer_wmt_en_de``
   presets with a joined vocabulary of 10k and 32k (the data's dictionary padded with unused symbols), teachers with
   random weights (hypotheses are forced to one length, so the work does not depend on them): throughput at
   ``--batch-size`` and latency at batch 1, each ``--shape-threads``, interleaved rounds with the per-round speed-up's
   range, every model and ratio of 3.; JSON ``shapes: {iwslt|wmt: {gen_speedup_50, flops_ratio_50,
   latency_speedup_50, gen_speedup_50_vs_per_sentence, gen_speedup_50_latent_gain, gen_speedup_50_vs_ct2_int8, ...}}``
   and a ``torch.profiler`` breakdown of one batch per fairseq model (``profile``, ``index_select_share``).

Writes ``--out`` (JSON, every ratio from this run) and the same path with ``.md`` (a table).
"""
import argparse
import json
import os
import statistics
import sys
import time

from makd_fairseq.files import git_state, write_text
from makd_fairseq.timing import interleaved

from . import RESULTS
from .measure import (
    EXACT_MALLOC, TRAIN_METHODS, ct2_models, gen_flags, generation_calls, generation_models, make_dense,
    make_students, progress, ratio_pairs, run_worker, train_argv, VARIANTS,
)
from .provenance import command, hardware
from .report import speed_table
from .shapes import SHAPES, measure_shape


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="binarized data (fairseq-preprocess output) the teacher was trained on")
    parser.add_argument("--teacher", help="teacher checkpoint")
    parser.add_argument("--work", default="/tmp/makd_speed", help="students and scratch files go here")
    parser.add_argument("--out", default=os.path.join(RESULTS, "speed.json"))
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25],
                        help="student budgets; training is timed on the first")
    parser.add_argument("--steps", type=int, default=20, help="timed updates per training run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every measurement (median reported)")
    parser.add_argument("--gen-warmup", type=int, default=1,
                        help="untimed generation passes of every model before the rounds (the data teacher's)")
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
    parser.add_argument("--latent-off", action=argparse.BooleanOptionalAction, default=True,
                        help="also time each student (not the _vocab ones: the same attention) with its latent "
                             "self-attention cache off (a k/v cache; keys 50_no_latent, 50_latent_gain)")
    parser.add_argument("--fairseq-step", action=argparse.BooleanOptionalAction, default=True,
                        help="also time each student (not the _vocab ones) with fairseq's decoding step instead of "
                             "the plugin's lean step (--fairseq-decoder-step; keys 50_fairseq_step, 50_lean_gain)")
    parser.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the dense fewer-layer students of makd-shrink at each budget (dense50, ...)")
    parser.add_argument("--ctranslate2", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the teacher and the dense students in CTranslate2 (fp32 and int8), converted "
                             "by its fairseq converter (skipped, with the reason in the results, if not installed)")
    parser.add_argument("--profile", choices=list(TRAIN_METHODS), metavar="METHOD",
                        help="instead of the benchmark: profile --steps updates of METHOD with torch.profiler")
    args = parser.parse_args(argv)

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
        sys.exit(f"benchmarks.speed: students of --teacher could not be made: {unmet}")
    keys = list(students)
    if args.profile:
        argv_p = train_argv(args, students[keys[0]], args.profile, os.path.join(args.work, "save"))
        out = run_worker("train", {"argv": argv_p, "steps": args.steps, "warmup": args.warmup, "profile": 40},
                         args.threads)
        print(out["profile"])
        print(f"{args.profile}: median {statistics.median(out['step_s']):.3f} s/update, teacher forward "
              f"{sum(out['teacher_s']) / sum(out['step_s']):.0%} (profiler overhead included)")
        return
    shapes = {}
    for shape in args.shapes:  # each kept in WORK/SHAPE/measured.json as it finishes (a later failure loses none)
        shapes[shape] = measure_shape(shape, args)
        write_text(os.path.join(args.work, shape, "measured.json"), json.dumps(shapes[shape], indent=1))
    parts = set(args.parts)
    models, ct2_info = {}, None
    if "generate" in parts:
        dense = make_dense(args.teacher, args.work, args) if args.dense else {}
        ct2, ct2_info = ct2_models(args.teacher, dense, args.work, args.data, args)
        models = generation_models(args.teacher, {k: students[k] for k in keys}, dense, ct2, args)
    methods = list(TRAIN_METHODS) if "train" in parts else []
    memory = {}  # method -> per-update peaks (CPU): separate, untimed runs; GPU: the timed runs' allocator statistics
    for m in methods if not args.fp16 else ():
        argv_m = train_argv(args, students[keys[0]], m, os.path.join(args.work, "save"))
        memory[m] = run_worker("train", {"argv": argv_m, "steps": args.steps, "warmup": args.warmup}, args.threads,
                               EXACT_MALLOC)["step_peak_bytes"]
    calls = {f"train/{m}": (lambda m=m: run_worker("train", {
        "argv": train_argv(args, students[keys[0]], m, os.path.join(args.work, "save")), "steps": args.steps,
        "warmup": args.warmup}, args.threads)) for m in methods}
    calls.update(generation_calls(models, args, args.threads, {"generate": ("test", args.batch_size)}))
    # interleaved rounds: slow drifts of the machine hit every method alike; generation warmed up once, untimed
    # (the first reader of data and models pays the cache)
    warmup = {name: args.gen_warmup * name.startswith("generate/") for name in calls}
    measured = interleaved(calls, args.repeats, warmup, progress("", args.repeats))

    result, ratios = {"train": {}, "generate": {}}, {}
    tr, ge = result["train"], result["generate"]
    for m in methods:
        rs = measured[f"train/{m}"]
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
    for name, (engine, path, how) in models.items():
        rs = measured[f"generate/{name}"]
        ge[name] = {"engine": engine, "decoding" if engine == "fairseq" else "compute": how,
                    "sentences_per_s": statistics.median(g["sentences_per_s"] for g in rs), "runs": rs}
        # FLOPs (and which cache a student decodes with) of each model as the plugin decodes it, and the teacher's
        if engine == "fairseq" and not name.endswith(("_per_sentence", "_lean", *VARIANTS)):
            ge[name].update(run_worker("flops", {"path": path, "data": args.data, "batch_size": args.batch_size,
                                                 "gen_args": gen_flags(args, decoding=how)}, args.threads))
    pairs = ratio_pairs(models) if ge else {}  # --parts without generate: the shapes only
    for suffix, (a, b) in pairs.items():  # every ratio: the quotient of the two medians reported beside it
        ratios[f"gen_speedup_{suffix}"] = ge[a]["sentences_per_s"] / ge[b]["sentences_per_s"]
    for key in keys if ge else ():
        s = ge[f"student{key}"]
        ratios[f"flops_ratio_{key}"] = ge["teacher"]["flops_per_sentence"] / s["flops_per_sentence"]
        ratios[f"gen_speedup_over_flops_ratio_{key}"] = ratios[f"gen_speedup_{key}"] / ratios[f"flops_ratio_{key}"]
    if ge:
        result["ratio_pairs"] = pairs
        result["ctranslate2"] = ct2_info
    if shapes:
        result["shapes"] = shapes
    result = {**{k: round(v, 4) for k, v in ratios.items()}, **result, "config": {
        k: v for k, v in vars(args).items()},
        "command": command("benchmarks.speed", argv), "git_commit": state["commit"], "git_dirty": state["dirty"],
        "hardware": hardware(f"{args.threads} thread(s) per measured process"),
        "wall_s": round(time.time() - started, 1)}
    write_text(args.out, json.dumps(result, indent=1))
    md = os.path.splitext(args.out)[0] + ".md"
    write_text(md, speed_table(result))
    print(speed_table(result))
    print(json.dumps({k: result[k] for k in ratios}, indent=1))
    print(f"wrote {args.out} and {md}")


if __name__ == "__main__":
    main()
