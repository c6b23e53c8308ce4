"""Generation speed at the shapes users run: fairseq's ``transformer_iwslt_de_en`` and ``transformer_wmt_en_de``
presets with a joined vocabulary of 10k and 32k (the data's dictionary padded with unused symbols), teachers with
random weights (every hypothesis is forced to one length, so the work does not depend on them)."""
import os
import statistics

from makd_fairseq.timing import interleaved, ratio

from .measure import (
    EXACT_MALLOC, MEMORY_METHODS, checked, ct2_models, gen_flags, generation_calls, generation_models, language_pair,
    make_dense, make_students, progress, ratio_pairs, run_worker, student_specs, train_argv,
)

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
    langs = language_pair(data)
    pair = "-".join(langs)
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


def measure_shape(shape, args):
    """Generation of a random-weight teacher of a fairseq preset, its students and their anchors
    (``measure.generation_models``): throughput (``--batch-size``) and batch-1 latency, at each ``--shape-threads``,
    ``--repeats`` interleaved rounds; every ratio of ``measure.ratio_pairs`` per round, median and range. FLOPs and a
    profile of one batch per fairseq model at the throughput setting."""
    spec, work = SHAPES[shape], os.path.join(args.work, shape)
    data = shape_data(args.shape_data or args.data, os.path.join(work, "data"), spec["vocab"], args.shape_sentences,
                      max(1, args.shape_sentences // 8))
    teacher = random_teacher(data, spec["arch"], os.path.join(work, "teacher"))
    students, unmet = make_students(teacher, work, args)  # an unmet budget is reported, not fatal
    dense = make_dense(teacher, work, args) if args.dense else {}
    ct2, ct2_info = ct2_models(teacher, dense, work, data, args)
    models = generation_models(teacher, students, dense, ct2, args)
    pairs = ratio_pairs(models)
    settings = {"throughput": ("test", args.batch_size), "latency": ("valid", 1)}
    out = {"arch": spec["arch"], "vocab": spec["vocab"], "weights": "random: every hypothesis is forced to "
           f"{args.gen_len} tokens, so speed does not depend on them", "unmet_budgets": unmet,
           "models": {name: list(m[::2]) for name, m in models.items()}, "ratio_pairs": pairs,
           "ctranslate2": ct2_info, "threads": {}}
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
    for i, threads in enumerate(args.shape_threads):
        calls = generation_calls(models, args, threads, settings, data)
        # untimed first (the first reader of data and models pays the cache): each model once at batch 1
        runs = interleaved(calls, args.repeats, {c: int(i == 0 and c.startswith("latency/")) for c in calls},
                           progress(f"{shape} {threads} thread(s) ", args.repeats))
        sps = {c: [r["sentences_per_s"] for r in rs] for c, rs in runs.items()}
        entry = {"sentences_per_s": {kind: {name: statistics.median(sps[f"{kind}/{name}"]) for name in models}
                                     for kind in settings}, "rounds": sps}
        for suffix, (a, b) in pairs.items():
            for kind, prefix in (("throughput", "gen_speedup"), ("latency", "latency_speedup")):
                r = ratio(sps[f"{kind}/{a}"], sps[f"{kind}/{b}"])
                entry[f"{prefix}_{suffix}"] = round(r["median"], 4)
                entry[f"{prefix}_{suffix}_range"] = [round(v, 4) for v in r["range"]]
        out["threads"][str(threads)] = entry
    flops = {name: run_worker("flops", {"path": path, "data": data, "gen_args": gen_flags(args, decoding=how),
                                        "batch_size": args.batch_size, "profile": 12}, max(args.shape_threads))
             for name, (engine, path, how) in models.items() if engine == "fairseq"}
    out["profile"] = {name: f["profile"] for name, f in flops.items()}  # one generation batch, headline threads
    out["index_select_share"] = {name: p["index_select_share"] for name, p in out["profile"].items()}
    out["flops_per_sentence"] = {name: f["flops_per_sentence"] for name, f in flops.items()}
    out["params"] = {name: f["params"] for name, f in flops.items()}
    headline = out["threads"][str(max(args.shape_threads))]
    for suffix in pairs:
        for prefix in ("gen_speedup", "latency_speedup"):
            out[f"{prefix}_{suffix}"] = headline[f"{prefix}_{suffix}"]
    for key in students:
        out[f"flops_ratio_{key}"] = round(flops["teacher"]["flops_per_sentence"] / flops[f"student{key}"][
            "flops_per_sentence"], 4)
        out[f"gen_speedup_over_flops_ratio_{key}"] = round(out[f"gen_speedup_{key}"] / out[f"flops_ratio_{key}"], 4)
    out["headline_threads"] = max(args.shape_threads)
    return out
