"""Generation speed at the shapes users run: fairseq's ``transformer_iwslt_de_en`` and ``transformer_wmt_en_de``
presets with a joined vocabulary of 10k and 32k (the data's dictionary padded with unused symbols), teachers with
random weights (every hypothesis is forced to one length, so the work does not depend on them)."""
import os
import statistics

from .measure import (
    EXACT_MALLOC, MEMORY_METHODS, checked, gen_flags, generate, make_students, measured_env, run_worker, student_specs,
    train_argv,
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
