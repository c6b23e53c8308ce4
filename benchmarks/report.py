"""Tables and plots of benchmark results: the quality table (each metric, its share of the teacher's, the
difference to makd with its interval and makd's standing, and what the interval covers), two quality runs side by
side, the quality plot, and the speed and sweep tables. Every function takes the results dict its script writes as
JSON."""
import textwrap

from .scoring import METRICS
from .sizes import QUALITY_METHODS, RACES, SEQ_KD_METHODS


def standing(vs, anchor="makd"):
    """Where the anchor (makd) stands against a method, from the method's difference to it and its 95% interval."""
    low, high = vs["ci95"]
    return f"{anchor} ahead" if high < 0 else f"{anchor} behind" if low > 0 else "level"


def vs_cell(vs, anchor="makd"):
    """A vs-makd table cell: the difference to makd (or another anchor), its 95% interval and the anchor's
    standing; a dash without one."""
    if vs is None:
        return "–"
    return f"{vs['diff']:+.2f} [{vs['ci95'][0]:+.2f}, {vs['ci95'][1]:+.2f}] {standing(vs, anchor)}"


def anchors(result):
    """What the run's methods are compared with: makd, and each raced recipe (``vs_makd_race``) the run holds."""
    return ["makd", *sorted({key[3:] for m in result["methods"] for key in m
                             if key.startswith("vs_") and key != "vs_makd"})]


def interval_note(result):
    """The line under a quality table saying what its vs-makd intervals cover; None without any interval. Results
    written before ``vs_makd`` said what it resampled (no ``resampled`` field) resampled test items only."""
    vs = [v for m in result["methods"] for v in (m.get("vs_makd") or {}).values()]
    if not vs:
        return None
    label = " and ".join(f"vs {a}" for a in anchors(result))
    if all("resampled" in v for v in vs):
        return (f"{label}: 95% interval of a paired bootstrap that resamples the test items and each method's seeds "
                "(a row with one seed on both sides: the items only); it does not cover the teacher, one per run "
                "(`python3 -m benchmarks.compare` puts a replicate teacher's run beside it).")
    return ("vs makd: 95% interval of a paired bootstrap over test items only (seed-averaged scores, seeds not "
            "resampled: `python3 -m benchmarks.rescore` recomputes it over items and seeds); it does not cover the "
            "teacher, one per run.")


def trained_as(entry, record):
    """The method whose student a seed record of a quality entry is: a race's, its winner (``records.with_races``)."""
    return (record.get("race") or {}).get("winner", entry["method"])


def students(entry):
    """{(trained method, seed)} of a quality entry: a race's seeds are its winners' students."""
    return {(trained_as(entry, r), r["seed"]) for r in entry.get("seeds") or []}


def same_students(result, entry, anchor):
    """The table's cell for ``entry`` against ``anchor`` when both rows are the same students (a race and the racer
    it kept on every seed, or two races that kept the same one): no difference to estimate. None otherwise."""
    other = next((m for m in result["methods"] if (m["method"], m["budget"]) == (anchor, entry["budget"])), None)
    if other is None or other is entry or not students(entry) or students(entry) != students(other):
        return None
    race = anchor if anchor in RACES else entry["method"]
    kept = ", ".join(sorted({method for method, _ in students(entry)}))
    return f"same students ({race} kept {kept})"


def budget_label(budget):
    return "teacher" if budget is None else f"{budget:.0%}"


def table(result):
    """Markdown: per method and budget, each metric's mean (± sd over seeds), the first metric's difference to
    makd with its 95% interval (and makd's standing: ahead, level or behind), validation nll, updates (mean over
    seeds; how many seeds stopped early) and generation speed."""
    names = METRICS[result["task"]]
    first = names[0]
    teacher = next(m for m in result["methods"] if m["method"] == "teacher")
    versus = anchors(result)
    lines = [f"| method | budget | seeds | params | {' | '.join(names)} | {first} % of teacher | "
             + "".join(f"{first} vs {a} (95% CI) | " for a in versus)
             + "best valid nll (bits) | updates | sentences/s |",
             "|---|---|---|---|" + "---|" * (len(names) + 4 + len(versus))]
    for m in result["methods"]:
        budget = budget_label(m["budget"])
        sd = m.get("sd") or {}
        cells = [f"{m['metrics'][n]:.2f}" + (f" ± {sd[n]:.2f}" if n in sd else "") for n in names]
        share = 100 * m["metrics"][first] / max(teacher["metrics"][first], 1e-9)
        vs = " | ".join(same_students(result, m, a) or vs_cell((m.get(f"vs_{a}") or {}).get(first), a)
                        for a in versus)
        nll = "–" if m.get("valid_nll") is None else f"{m['valid_nll']:.3f}"
        early = [bool(r.get("early_stopped")) for r in m.get("seeds", [])]
        updates = "–" if m.get("updates") is None else f"{m['updates']:,}" + (
            "" if not any(early) else " (early stop)" if all(early) else f" (early stop: {sum(early)} of {len(early)})")
        seeds = len(m["seeds"]) if m.get("seeds") and m["budget"] is not None else "–"
        speed = "–" if not m.get("speed") else f"{m['speed']['sentences_per_s']:.2f}"
        lines.append(f"| {m['method']} | {budget} | {seeds} | {m['params']:,} | " + " | ".join(cells)
                     + f" | {share:.1f}% | {vs} | {nll} | {updates} | {speed} |")
    if interval_note(result):
        lines += ["", interval_note(result)]
    decoded = (result.get("seq_kd_data") or {}).get("sentences") or {"valid": None}  # older results: train and valid
    if any(m["method"] in SEQ_KD_METHODS for m in result["methods"]) and "valid" in decoded:
        lines += ["", f"{', '.join(SEQ_KD_METHODS)}: best valid nll against the teacher's outputs for the valid "
                      "sources (what they are trained on), not against the references as the other rows."]
    kept = races_kept(result)
    if kept:
        lines += ["", f"What each race kept, per seed: {'; '.join(kept)}."]
    on_gpu = gpu_trained(result)
    if on_gpu:
        lines += ["", "Trained on a GPU (the same fp32 recipe; a later start on the CPU resumed from its "
                      f"checkpoint_last.pt): {'; '.join(on_gpu)}."]
    if result.get("pending"):
        lines += ["", f"Partial: {len(result['pending'])} trainings not finished yet ({', '.join(result['pending'])})."]
    return "\n".join(lines) + "\n"


def races_kept(result):
    """``word_kd_race 50% (1,000 updates): seed 1 svd_word_kd, seed 2 svd_ce`` for each race of ``result``: the racer
    its validation values chose on each seed (``records.add_races``; ``whole trainings`` for a full race)."""
    found = []
    for m in result["methods"]:
        seeds = [r for r in m.get("seeds") or [] if r.get("race")]
        if m["method"] not in RACES or not seeds:
            continue
        spans = {r["race"]["updates"] for r in seeds}
        span = ", ".join([f"{u:,} updates" for u in sorted(spans - {None})] + ["whole trainings"] * (None in spans))
        found.append(f"{m['method']} {budget_label(m['budget'])} ({span}): "
                     + ", ".join(f"seed {r['seed']} {trained_as(m, r)}" for r in seeds))
    return found


def gpu_trained(result):
    """``b50/makd/seed1 (updates 0–3,000)`` for each student whose training (or a start of it) ran on a GPU: the
    updates its GPU starts covered where every start is matched by a resumption in its log, else ``(partly)``."""
    found = []
    for m in result["methods"]:
        for r in m.get("seeds") or []:
            starts = r.get("trained_at") or []
            if m["budget"] is None or m["method"] in RACES or not any(s.get("device") == "gpu" for s in starts):
                continue
            resumed = r.get("resumed_at") or []
            name = f"b{round(m['budget'] * 100)}/{m['method']}/seed{r['seed']}"
            if len(starts) != len(resumed) + 1:
                found.append(f"{name} (partly)")
                continue
            spans = []
            for start, a, b in zip(starts, [0, *resumed], [*resumed, r["updates"]]):
                if start.get("device") != "gpu":
                    continue
                if spans and spans[-1][1] == a:  # GPU starts one after another make one span
                    spans[-1] = (spans[-1][0], b)
                else:
                    spans.append((a, b))
            found.append(f"{name} (updates {', '.join(f'{a:,}–{b:,}' for a, b in spans)})")
    return found


def pyplot():
    """matplotlib.pyplot drawing to files, quiet (fairseq's logging setup lets matplotlib's DEBUG lines through)."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(result, path):
    """Quality against budget (each metric; mean and sd over seeds) and, when timed, against sentences/s."""
    plt = pyplot()
    metrics = METRICS[result["task"]][:2]
    timed = [m for m in result["methods"] if m.get("speed")]
    teacher = next(m for m in result["methods"] if m["method"] == "teacher")
    panels = len(metrics) + bool(timed)
    # one color per method in every panel (the teacher: black)
    color = {name: f"C{i}" for i, name in enumerate(n for n in QUALITY_METHODS if n != "teacher")}
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ax.axhline(teacher["metrics"][metric], color="black", linestyle="--", label="teacher")
        for name in QUALITY_METHODS:
            points = sorted((m["budget"], m["metrics"][metric], (m.get("sd") or {}).get(metric, 0))
                            for m in result["methods"] if m["method"] == name and m["budget"] is not None)
            if points:
                x, y, err = zip(*points)
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name, color=color[name])
        ax.set_xlabel("student parameters / teacher parameters")
        ax.set_ylabel(metric + " (mean ± sd over seeds)")
        if metric == "ppl":
            ax.set_yscale("log")  # an untrained factorization is orders of magnitude off
        ax.grid(alpha=0.3)
    if timed:
        ax, metric = axes[0][-1], metrics[0]
        for m in timed:
            label = "teacher" if m["budget"] is None else f"{m['method']} {m['budget']:.0%}"
            ax.scatter(m["speed"]["sentences_per_s"], m["metrics"][metric], marker="*" if m["budget"] is None else "o",
                       color=color.get(m["method"], "black"))
            ax.annotate(label, (m["speed"]["sentences_per_s"], m["metrics"][metric]), fontsize=6)
        # the conditions of the timing under the axis, wrapped to the panel's width
        ax.set_xlabel(textwrap.fill(f"generation sentences/s ({result['speed'].split(', ', 1)[1]})", 70), fontsize=8)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Debian descriptions, {result['task']} ({result['size']} size)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- two quality runs side by side

def cells(result, method, budget, metric):
    """The metric (± sd, seeds) and vs-makd cells of one method at one budget in one run (the vs-makd cell of makd's
    own students says so: ``same_students``); dashes if it lacks it."""
    row = next((m for m in result["methods"] if m["method"] == method and m["budget"] == budget), None)
    if row is None:
        return "–", "–", None
    sd = (row.get("sd") or {}).get(metric)
    seeds = len(row.get("seeds") or []) if budget is not None else 0
    value = f"{row['metrics'][metric]:.2f}" + (f" ± {sd:.2f}" if sd is not None else "") + (
        f" ({seeds})" if seeds else "")
    vs, same = (row.get("vs_makd") or {}).get(metric), same_students(result, row, "makd")
    if vs is None or same:
        return value, same or "–", None
    return value, vs_cell(vs), standing(vs)


def side_by_side(a, b, labels, metric=None, differences=None):
    """Markdown table of quality runs ``a`` and ``b`` (results dicts) under ``labels``: per method and budget each
    run's metric (mean ± sd, seeds) and vs-makd cell, and whether the two runs give makd the same standing; with
    ``differences`` ({(method, budget): b minus a with ci95}) a column of them."""
    if a["task"] != b["task"]:
        raise SystemExit(f"benchmarks.compare: the runs are of different tasks ({a['task']} and {b['task']})")
    if a.get("data_sha256") != b.get("data_sha256"):
        raise SystemExit(f"benchmarks.compare: the runs used different data (data_sha256 {a.get('data_sha256')} and "
                         f"{b.get('data_sha256')})")
    metric = metric or METRICS[a["task"]][0]
    if metric not in METRICS[a["task"]]:
        raise SystemExit(f"benchmarks.compare: {a['task']} has no metric {metric} (choose from {', '.join(METRICS[a['task']])})")
    keys = []
    for m in a["methods"] + b["methods"]:
        if (m["method"], m["budget"]) not in keys:
            keys.append((m["method"], m["budget"]))
    keys.sort(key=lambda k: -1 if k[1] is None else -k[1])  # teacher, then budgets from the largest (stable within)
    extra = differences is not None
    lines = [f"| method | budget | {labels[0]}: {metric} (seeds) | vs makd (95% CI) | {labels[1]}: {metric} (seeds) "
             "| vs makd (95% CI) | same standing |" + (f" {labels[1]} minus {labels[0]} (95% CI) |" if extra else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if extra else "")]
    for method, budget in keys:
        value_a, vs_a, standing_a = cells(a, method, budget, metric)
        value_b, vs_b, standing_b = cells(b, method, budget, metric)
        same = "–" if standing_a is None or standing_b is None else "yes" if standing_a == standing_b else "no"
        d = (differences or {}).get((method, budget))
        change = f" {d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] |" if d else " – |" if extra else ""
        lines.append(f"| {method} | {budget_label(budget)} | {value_a} | {vs_a} | "
                     f"{value_b} | {vs_b} | {same} |{change}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- speed and sweep

def shapes_table(result):
    lines = ["| shape | threads | model | params | FLOPs ratio | throughput sentences/s (batch " + str(
        result["config"]["batch_size"]) + ") | speed-up [range] | latency sentences/s (batch 1) | speed-up [range] |",
        "|---|---|---|---|---|---|---|---|---|"]
    for shape, r in result.get("shapes", {}).items():
        to_teacher = {a: suffix for suffix, (a, b) in r.get("ratio_pairs", {}).items() if b == "teacher"}
        flops = r["flops_per_sentence"]
        for threads, t in r["threads"].items():
            for name in t["sentences_per_s"]["throughput"]:
                ratio = f"{flops['teacher'] / flops[name]:.2f}" if name in flops else "–"
                cells = []
                for kind, prefix in (("throughput", "gen_speedup"), ("latency", "latency_speedup")):
                    key = f"{prefix}_{to_teacher.get(name)}"
                    up = "1.00" if name == "teacher" else with_range(t, key)
                    cells += [f"{t['sentences_per_s'][kind][name]:.2f}", up]
                params = f"{r['params'][name]:,}" if name in r["params"] else "–"
                lines.append(f"| {shape} ({r['arch']}, {r['vocab']:,} vocab) | {threads} | {name} | {params} "
                             f"| {ratio} | " + " | ".join(cells) + " |")
    lines += [""] + comparisons_table(result)
    notes = [f"{shape}, {key}%: {why}" for shape, r in result.get("shapes", {}).items()
             for key, why in r.get("unmet_budgets", {}).items()]
    memory = [f"{shape}: " + ", ".join(
        f"{m} {p / 2**20:.0f} MiB" + (f" (× {p / r['train_peak_mem_bytes']['word_kd']:.2f})" if m != "word_kd" else "")
        for m, p in r["train_peak_mem_bytes"].items())
        for shape, r in result.get("shapes", {}).items() if "train_peak_mem_bytes" in r]
    profile = [f"{shape}: " + ", ".join(f"{name} {share:.0%}" for name, share in r["index_select_share"].items())
               for shape, r in result.get("shapes", {}).items() if "index_select_share" in r]
    return lines + [""] + ([f"Not measured: {'; '.join(notes)}", ""] if notes else []) + (
        [f"Peak memory of an update (50% student): {'; '.join(memory)}", ""] if memory else []) + (
        [f"`index_select` (beam reordering of the caches), share of one profiled batch: {'; '.join(profile)}", ""]
        if profile else []) + ct2_notes(result.get("shapes", {}).items())


def with_range(entry, key):
    return f"{entry[key]:.2f} [{entry[key + '_range'][0]:.2f}, {entry[key + '_range'][1]:.2f}]"


def comparisons_table(result):
    """Every ratio of ``measure.ratio_pairs`` other than against the teacher in plain fairseq (the table above has
    those): against the teacher with encoder states once per sentence, the latent cache's gain, against CTranslate2."""
    lines = ["| shape | threads | ratio | numerator / denominator | throughput [range] | latency [range] |",
             "|---|---|---|---|---|---|"]
    for shape, r in result.get("shapes", {}).items():
        for threads, t in r["threads"].items():
            for suffix, (a, b) in r["ratio_pairs"].items():
                if b == "teacher":
                    continue
                cells = [with_range(t, f"{p}_{suffix}") for p in ("gen_speedup", "latency_speedup")]
                lines.append(f"| {shape} | {threads} | {suffix} | {a} / {b} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def ct2_notes(runs):
    """One line per run: the CTranslate2 version and every converter failure, or why the part was skipped."""
    out = []
    for label, r in runs:
        info = r.get("ctranslate2")
        if not info:
            continue
        if "skipped" in info:
            out.append(f"CTranslate2 ({label}): skipped, {info['skipped']}")
            continue
        failures = "; ".join(f"{name}: {' / '.join(notes)}" for name, notes in info["converter_failures"].items())
        out.append(f"CTranslate2 {info['version']} ({label}): converted {', '.join(info['converted']) or 'nothing'}, "
                   f"{info['decoder_steps']} decoder steps per hypothesis"
                   + (f"; converter failures: {failures}" if failures else ""))
    return [line for note in out for line in (note, "")]


def speed_table(result):
    """Markdown of a speed.json: the preset shapes, training cost per method, generation speed and FLOPs."""
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


DECODED_BY = {"fairseq": "fairseq (translation task)", "lean": "fairseq (makd_translation)",
              "per_sentence": "fairseq (makd_translation, --fairseq-decoder-step)",
              "no_latent": "fairseq (makd_translation, latent cache off)"}


def generation_table(result):
    lines = ["| model | decoded by | params | generation FLOPs / sentence | sentences/s (median) | speed-up "
             "| FLOPs ratio | speed-up / FLOPs ratio |", "|---|---|---|---|---|---|---|---|"]
    t = result["generate"]["teacher"]
    for name, g in result["generate"].items():
        speedup = g["sentences_per_s"] / t["sentences_per_s"]
        fairseq = g.get("engine", "fairseq") == "fairseq"
        how = DECODED_BY[g["decoding"]] if fairseq else f"CTranslate2 ({g['compute']})"
        if "flops_per_sentence" in g:
            ratio = t["flops_per_sentence"] / g["flops_per_sentence"]
            cells = [f"{g['params']:,}", f"{g['flops_per_sentence'] / 1e9:.2f} G", f"{g['sentences_per_s']:.2f}",
                     f"{speedup:.2f}", f"{ratio:.2f}", f"{speedup / ratio:.0%}"]
        else:
            cells = ["–", "–", f"{g['sentences_per_s']:.2f}", f"{speedup:.2f}", "–", "–"]
        lines.append(f"| {name} | {how} | " + " | ".join(cells) + " |")
    pairs = [f"{suffix} ({a} / {b}) {result[f'gen_speedup_{suffix}']:.2f}"
             for suffix, (a, b) in result.get("ratio_pairs", {}).items() if b != "teacher"]
    return lines + ([""] + ["Other ratios: " + "; ".join(pairs)] if pairs else []) + [""] + ct2_notes(
        [("data teacher", result)])


def sweep_tables(result):
    """Markdown of a sweep.json: per task, the untrained inits, every configuration by validation nll, the winners on
    test."""
    out = []
    for family, d in result.get("defaults", {}).items():
        out.append(f"Defaults chosen for {family} (smallest mean validation-nll regret over {', '.join(d['tasks'])}): "
                   f"`{d['config']}` (`{' '.join(d['flags'])}`), {d['mean_regret_bits']} bits from each task's best.")
    out += [""] if out else []
    for task, r in sorted((k, v) for k, v in result.items() if k != "defaults"):
        out += [f"## {task} ({r['budget']:.0%} of the teacher's parameters)", "",
                "| makd-init | flags | valid nll (bits), untrained |", "|---|---|---|"]
        out += [f"| {name} | `{' '.join(i['flags'])}` | {i['valid_nll']:.3f} |"
                for name, i in r["inits_untrained_valid_nll"].items()]
        out += ["", f"Trained from `{r['train_init']}`, {r['max_update']} updates each:", "",
                "| configuration | family | flags | best valid nll (bits) | chosen |", "|---|---|---|---|---|"]
        for name, c in sorted(r["configs"].items(), key=lambda kv: kv[1]["valid_nll"] or 1e9):
            flags = " ".join(f for f in c["flags"] if f not in ("--criterion", "makd"))
            chosen = "yes" if r["best_on_valid"].get(c["family"]) == name else ""
            out.append(f"| {name} | {c['family']} | `{flags}` | {c['valid_nll']:.3f} | {chosen} |")
        if r["test"]:
            metrics = [k for k in next(iter(r["test"].values())) if k != "signature"]
            out += ["", "Test (after choosing):", "", "| model | " + " | ".join(metrics) + " |",
                    "|---|" + "---|" * len(metrics)]
            out += [f"| {name} | " + " | ".join(f"{t[m]:.2f}" for m in metrics) + " |" for name, t in r["test"].items()]
        out.append("")
    return "\n".join(out) + "\n"
