#!/usr/bin/env python3
"""Quality of low-rank students against every baseline, on one binarized task, from real fairseq runs.

    python3 benchmarks/quality.py --task summarization --data /tmp/debian1k/summarization/bin \\
        --size cpu --work /tmp/qb/summarization --jobs 2

1. Teacher: ``train_teacher.py`` (fairseq-train, label-smoothed CE) unless WORK/teacher/checkpoint_best.pt exists.
2. Students for each ``--budgets`` fraction of the teacher's parameters: ``makd-init`` (uniform ranks; ``--init
   whiten`` factors fitted to the teacher's inputs on train, or plain truncated SVD) and ``makd-shrink`` (dense,
   fewer copied layers, as in shrink-and-fine-tune).
3. Sequence-level KD data, if a ``sizes.SEQ_KD_METHODS`` method runs: ``makd-teacher-data --splits train,valid``
   writes WORK/seq_kd_data, the data with every train and valid target replaced by the teacher's beam output (the
   generation flags of step 5).
4. ``sizes.QUALITY_METHODS``: every trained method starts from its student and runs ``fairseq-train`` with the same
   flags and seed until it converges (``sizes.until_converged``: validation every N updates, ``--patience``
   validations without a lower ``nll_loss``, a cap on updates); ``--best-checkpoint-metric nll_loss`` (the one number
   every criterion logs alike) picks the checkpoint. Each method is validated on the targets it is trained on: the
   references, or for the seq-KD methods the teacher's outputs for the valid sources (on the references their nll
   rises while their own objective still falls, and the rule would stop them after a few hundred updates).
   ``--jobs`` runs that many at once, one thread each.
5. ``fairseq-generate`` with beam search on the test set, sentencepiece removed; summarization is scored with
   ``rouge-score`` (ROUGE-1/2/L F1, Porter stemming), translation with sacreBLEU (BLEU and chrF, signatures kept).
   ``--task language_modeling`` (decoder-only, ``lm_*`` sizes): ``fairseq-eval-lm`` perplexity on test and ROUGE-L
   of greedy continuations (fairseq's generator) of held-out descriptions from their first sentence.

Steps whose outputs exist in WORK are reused (so an interrupted run resumes); their recorded times are kept in
WORK/stages.json. ``--reuse RESULTS_JSON`` resumes on another machine: the seeds an earlier run finished are taken
from its results file and kept hypotheses, not trained again, once this run's teacher has shown it is the same model
(same data hash, the same test hypotheses byte for byte). Writes ``--out`` (JSON: per method its scores, parameters,
best validation nll and the updates it trained for), the same path with ``.md`` (table) and ``.png`` (quality vs
budget).
"""
import argparse
import json
import lzma
import os
import re
import shlex
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
USER_DIR = os.path.join(ROOT, "makd_fairseq")
sys.path.insert(0, HERE)
from sizes import (  # noqa: E402
    GENERATE, QUALITY_METHODS, SEQ_KD_METHODS, STUDENT_KINDS, STUDENT_TRAIN, TEACHER_ARCH, common_flags, is_lm_size,
)
from provenance import command, git_state, hardware, write_atomic  # noqa: E402
from train_teacher import teacher_command  # noqa: E402

METRICS = {"summarization": ("rougeL", "rouge1", "rouge2"), "translation": ("bleu", "chrf"),
           "language_modeling": ("rougeL", "ppl")}
# decoder-only students: no dense shrink-and-fine-tune baseline (makd-shrink cuts encoder-decoder models)
LM_METHODS = ("teacher", "svd_only", "svd_ce", "svd_word_kd", "makd")


class Run:
    """The work directory of one benchmark run: paths, logged subprocesses, and per-stage times."""

    def __init__(self, args):
        self.args, self.work = args, args.work
        self.stages_path = os.path.join(self.work, "stages.json")
        self.stages = json.load(open(self.stages_path)) if os.path.exists(self.stages_path) else {}
        self.lock = threading.Lock()  # --jobs threads finish stages concurrently

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def stage(self, name, cmd, log, done, resumes=False):
        """Run ``cmd`` (output to ``log``) unless ``done()`` already holds; record its time. A stage that ``resumes``
        its own work (fairseq-train continues from its checkpoint_last.pt) adds to its log, so that the log keeps
        every validation of every start; any other stage starts its log afresh."""
        if done():
            return
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        # what produced this stage's output, recorded each time it starts (a resumed training adds a record)
        prov = log + ".provenance.json"
        starts = json.load(open(prov)) if os.path.isfile(prov) else []
        starts.append({**git_state(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": cmd})
        write_atomic(prov, json.dumps(starts, indent=1))
        env = dict(os.environ, OMP_NUM_THREADS=str(self.args.threads), MKL_NUM_THREADS=str(self.args.threads),
                   PYTHONWARNINGS="ignore")
        start = time.time()
        with open(log, "a" if resumes else "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0 or not done():
            with open(log) as f:
                tail = f.read()[-3000:]
            raise SystemExit(f"quality.py: {name} failed (exit {rc}); the end of {log}:\n{tail}")
        with self.lock:
            # another command on this WORK (quality.py --partial while the run goes on) may have recorded stages
            # since this one read the file: keep them
            on_disk = json.load(open(self.stages_path)) if os.path.exists(self.stages_path) else {}
            self.stages = {**self.stages, **on_disk, name: round(time.time() - start, 1)}
            write_atomic(self.stages_path, json.dumps(self.stages, indent=1))


def finished(train_log):
    """fairseq-train ran to the end (a checkpoint_best.pt alone may be from an interrupted run)."""
    return os.path.isfile(train_log) and "done training in" in open(train_log).read()


def student_paths(run, budget):
    key = f"b{round(budget * 100)}"
    return {kind: run.path(key, f"{kind}.pt") for kind in STUDENT_KINDS}, key


def train_command(run, teacher, init, method_flags, save_dir, data=None):
    """fairseq-train distilling ``init`` from ``teacher`` on ``data`` (default: the benchmark's data)."""
    from makd_fairseq.student import distill_command

    return distill_command(data or run.args.data, teacher, init, [
        *common_flags(run.args.size), *STUDENT_TRAIN[run.args.size], "--keep-interval-updates", "1",
        "--best-checkpoint-metric", "nll_loss", "--save-dir", save_dir, *method_flags])


def device_flags(run):
    return ["--fp16"] if "--fp16" in STUDENT_TRAIN[run.args.size] else ["--cpu"]


def teacher_data_command(run, teacher):
    """makd-teacher-data: train and valid with the teacher's beam outputs as targets (sequence-level KD)."""
    return ["makd-teacher-data", "--teacher", teacher, "--data", run.args.data, "--out", run.path("seq_kd_data"),
            "--splits", "train,valid", *GENERATE[run.args.task], "--batch-size", str(run.args.batch_size),
            *(["--cpu"] if device_flags(run) == ["--cpu"] else [])]


def flag_value(flags, name):
    """The value of the last ``name`` in a flag list (the one argparse keeps)."""
    return flags[len(flags) - flags[::-1].index(name)]


def generate_command(run, checkpoint):
    """makd-compress's fairseq-generate (test split) with the benchmark's beam, lengths, batch and truncation."""
    from makd_fairseq.compress import generate_command as generate

    train = common_flags(run.args.size) + STUDENT_TRAIN[run.args.size]
    return generate(run.args.data, checkpoint, [
        *GENERATE[run.args.task], "--batch-size", str(run.args.batch_size), "--truncate-source",
        "--max-source-positions", flag_value(train, "--max-source-positions"), *shlex.split(run.args.generate_args)],
        run.args.remove_bpe, device_flags(run))


def read_generation(log):
    """(hypotheses, references) in test-set order from fairseq-generate's D- and T- lines (``makd-score``'s reader)."""
    from makd_fairseq.score import ScoreError, read_generation as read

    try:
        with open(log, encoding="utf-8") as f:
            return read(f, log)
    except ScoreError as e:
        raise SystemExit(f"quality.py: {e}") from None


def eval_lm_command(run, checkpoint):
    """makd-compress's fairseq-eval-lm on the test set, with the training run's block layout."""
    from makd_fairseq.compress import eval_lm_command as eval_lm

    common = common_flags(run.args.size)
    layout = [f for name in ("--tokens-per-sample", "--sample-break-mode") for f in (name, flag_value(common, name))]
    return eval_lm(run.args.data, checkpoint, [*layout, "--max-tokens", "6000"], device_flags(run))


def continue_command(run, checkpoint, out):
    return [sys.executable, os.path.abspath(__file__), "--worker-continue", checkpoint, out, "--task",
            run.args.task, "--data", run.args.data, "--work", run.work, "--remove-bpe", run.args.remove_bpe,
            "--continue-docs", str(run.args.continue_docs), "--batch-size", str(run.args.batch_size)]


def seeds_of(args, budget):
    """The seeds a budget's students train with: every ``--seeds`` at ``--seeded-budgets``, else the first."""
    return list(args.seeds) if any(abs(budget - b) < 1e-9 for b in args.seeded_budgets) else list(args.seeds[:1])


def model_name(method, budget, seed=None):
    name = method if budget is None else f"b{round(budget * 100)}/{method}"
    return name if seed is None else f"{name}/seed{seed}"


def first_seed(args, models, method, budget):
    return min((s for m, b, s, _ in models if (m, b) == (method, budget) and s is not None), default=None)


def time_generation(run, models):
    """Each model's generation throughput, measured one model at a time (the first seed of a trained method whose
    checkpoint is here; seeds taken over with ``--reuse`` have none): fairseq-generate on the test set with the
    benchmark's beam, batch and threads; the 1-minute load average before each measurement is kept, so a reader can
    tell a quiet machine from a busy one. Returns {(method, budget): speed, with the seed timed}."""
    from makd_fairseq.compress import generation_speed

    loads_path = run.path("timing", "load.json")
    loads = json.load(open(loads_path)) if os.path.isfile(loads_path) else {}
    speeds = {}
    for method, budget, seed, checkpoint in models:
        if checkpoint is None or (method, budget) in speeds:
            continue
        name = model_name(method, budget, seed)
        log = run.path("timing", name.replace("/", "_") + ".txt")
        done = lambda p=log: os.path.isfile(p) and "Translated" in open(p).read()  # noqa: E731
        if not done():
            loads[name] = round(os.getloadavg()[0], 2)
            write_atomic(loads_path, json.dumps(loads, indent=1))
        run.stage(f"time {name}", generate_command(run, checkpoint), log, done)
        speeds[(method, budget)] = {**generation_speed(open(log).read(), log), "load_before": loads.get(name),
                                    "seed": seed}
    return speeds


def read_continuations(path):
    pairs = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8") if line.strip()]
    return [h for h, _ in pairs], [r for _, r in pairs]


def keep_text(path, lines):
    """Write ``lines`` xz-compressed (the hypotheses any reported number can be recomputed from)."""
    data = lzma.compress(("\n".join(lines) + "\n").encode("utf-8"), preset=9)
    if os.path.isfile(path) and lzma.decompress(open(path, "rb").read()) == lzma.decompress(data):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def read_kept(path):
    """The lines ``keep_text`` wrote."""
    return lzma.decompress(open(path, "rb").read()).decode("utf-8")[:-1].split("\n")


def reusable_seeds(run, data_hash, teacher_log):
    """{(method, budget, seed): (its seed record, its test hypotheses)} of the trained students of ``--reuse``'s
    results file, e.g. of a run on a machine since lost. Only when they were distilled from this run's teacher on
    this run's data: the same data hash, and this teacher's test hypotheses (and the references) byte for byte those
    kept next to that file; otherwise one clear error."""
    path = run.args.reuse
    old = json.load(open(path))
    kept = os.path.join(os.path.dirname(os.path.abspath(path)), "hypotheses", run.args.task)
    if (old.get("task"), old.get("size")) != (run.args.task, run.args.size):
        raise SystemExit(f"quality.py: --reuse {path} is a {old.get('task')} run of size {old.get('size')}, "
                         f"not {run.args.task} of size {run.args.size}")
    if data_hash is None or old.get("data_sha256") != data_hash:
        raise SystemExit(f"quality.py: --reuse {path}: its data hash {old.get('data_sha256')} is not this data's "
                         f"({data_hash}; prepare.py's manifest.json): its students saw other data")
    missing = [f for f in ("teacher", "references") if not os.path.isfile(os.path.join(kept, f + ".txt.xz"))]
    if missing:
        raise SystemExit(f"quality.py: --reuse {path}: no {' or '.join(missing)} hypotheses in {kept}")
    hyps, refs = read_generation(teacher_log)
    old_hyps = read_kept(os.path.join(kept, "teacher.txt.xz"))
    if refs != read_kept(os.path.join(kept, "references.txt.xz")) or hyps != old_hyps:
        differ = sum(a != b for a, b in zip(hyps, old_hyps)) + abs(len(hyps) - len(old_hyps))
        raise SystemExit(f"quality.py: --reuse {path}: this run's teacher does not reproduce that run's ({differ} of "
                         f"{len(old_hyps)} test hypotheses differ, or other references): its students were distilled "
                         "from another model; run without --reuse")
    reused = {}
    for entry in old["methods"]:
        for record in entry.get("seeds") or []:
            name = model_name(entry["method"], entry["budget"], record["seed"])
            hyp_file = os.path.join(kept, name.replace("/", "_") + ".txt.xz")
            if entry["budget"] is not None and record["seed"] is not None and os.path.isfile(hyp_file):
                origin = {"results": os.path.abspath(path), "scored_at": old.get("scored_at"),
                          "hardware": old.get("hardware"), "stage_seconds": old.get("stage_seconds", {}).get(name)}
                reused[(entry["method"], entry["budget"], record["seed"])] = (  # taken over twice: the first origin
                    {**record, "reused_from": record.get("reused_from") or origin}, read_kept(hyp_file))
    return reused


def seed_record(run, method, seed, checkpoint, metrics):
    """One trained model: its scores, best validation nll, updates, and the commit(s) it was trained at."""
    log = run.path("teacher.log") if method == "teacher" else os.path.join(os.path.dirname(checkpoint), "train.log")
    prov = log + ".provenance.json"
    return {"seed": seed, "metrics": metrics, "valid_nll": best_valid_nll(log), "updates": last_updates(log),
            "early_stopped": early_stopped(log), "resumed_at": resumed_at(log),
            "checkpoint": os.path.relpath(checkpoint, run.work),
            "trained_at": [{k: r[k] for k in ("commit", "dirty", "started")} for r in json.load(open(prov))]
            if os.path.isfile(prov) else None}


PAIRED = {"summarization": ("rougeL",), "translation": ("bleu", "chrf"), "language_modeling": ("rougeL",)}


def compare_with_makd(task, methods, models, scored, references):
    """Every method's ``vs_makd``: its metric minus makd's at the same budget, with a paired-bootstrap 95% interval
    (``makd_fairseq.score.paired_bootstrap``; each side's seeds averaged)."""
    from makd_fairseq.score import paired_bootstrap

    def runs(method, budget):
        return [scored[(m, b, s)][1] for m, b, s, _ in models if (m, b) == (method, budget)]
    for entry in methods:
        method, budget = entry["method"], entry["budget"]
        if budget is None or method == "makd" or not runs("makd", budget):
            continue
        entry["vs_makd"] = {metric: paired_bootstrap(metric, runs(method, budget), runs("makd", budget), references)
                            for metric in PAIRED[task]}


def split_first_sentence(text):
    """(first sentence, the rest) of a description; the rest is '' when there is a single sentence."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def continue_worker(args, checkpoint, out, max_new=40, ref_words=40):
    """Greedy continuations of held-out descriptions from their first sentence (fairseq's own generator).

    Writes ``out``: one line per document, hypothesis TAB reference (the next ``ref_words`` words)."""
    import torch
    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import GenerationConfig

    import makd_fairseq  # noqa: F401

    raw = os.path.join(args.data, "..", "test.txt")
    sp = None
    if args.remove_bpe == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=os.path.join(args.data, "..", "spm.model"))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": args.data})
    model = models[0].eval()
    model.prepare_for_inference_(cfg)
    vocab = task.dictionary
    docs = []
    for line in open(raw, encoding="utf-8"):
        first, rest = split_first_sentence(line)
        if rest:
            pieces = sp.encode(first, out_type=str) if sp else first.split()
            docs.append(([vocab.index(p) for p in pieces][:64], " ".join(rest.split()[:ref_words])))
        if len(docs) == args.continue_docs:
            break
    rows = []
    for start in range(0, len(docs), args.batch_size):
        batch = docs[start:start + args.batch_size]
        width = max(len(p) for p, _ in batch)
        prefix = torch.full((len(batch), width), vocab.pad(), dtype=torch.long)
        for i, (p, _) in enumerate(batch):
            prefix[i, :len(p)] = torch.tensor(p)
        generator = task.build_generator([model], GenerationConfig(beam=1, max_len_a=0, max_len_b=width + max_new))
        sample = {"net_input": {"src_tokens": prefix, "src_lengths": prefix.ne(vocab.pad()).sum(1)}}
        with torch.no_grad():
            hypos = task.inference_step(generator, [model], sample, prefix_tokens=prefix)
        for (p, ref), h in zip(batch, hypos):
            ids = [i for i in h[0]["tokens"].tolist()[len(p):] if i != vocab.eos()][:max_new]
            pieces = [vocab[i] for i in ids]
            text = sp.decode_pieces(pieces) if sp else " ".join(pieces)
            rows.append(f"{' '.join(text.split())}\t{ref}")
    write_atomic(out, "\n".join(rows) + "\n")


def best_valid_nll(train_log):
    """The lowest validation nll_loss (bits per token, as fairseq logs it) of a json-format fairseq-train log."""
    if not os.path.isfile(train_log):
        return None
    logs = [json.loads(line[line.index("{"):]) for line in open(train_log) if '"valid_loss"' in line]
    # fairseq's cross_entropy criterion logs the nll as valid_loss only
    values = [float(log.get("valid_nll_loss", log["valid_loss"])) for log in logs]
    return min(values) if values else None


def last_updates(train_log):
    """The number of updates a json-format fairseq-train log reached (the last ``num_updates`` it logged)."""
    if not os.path.isfile(train_log):
        return None
    found = [log[k] for line in open(train_log) if "num_updates" in line and "{" in line
             for log in [json.loads(line[line.index("{"):])] for k in log if k.endswith("num_updates")]
    return int(found[-1]) if found else None


def resumed_at(train_log):
    """The updates at which a training resumed from its ``checkpoint_last.pt`` ([] when it ran in one go)."""
    if not os.path.isfile(train_log):
        return None
    return [int(n) for n in re.findall(r"Loaded checkpoint \S*checkpoint_last\S*\.pt \(epoch \d+ @ (\d+) updates\)",
                                       open(train_log).read())]


def early_stopped(train_log):
    """fairseq-train stopped on ``--patience`` (validation nll no longer falling) rather than at ``--max-update``."""
    return os.path.isfile(train_log) and "early stop since valid performance hasn't improved" in open(train_log).read()


def read_lm_scores(eval_log, hyps, refs):
    """(scores, signatures) of a language model: fairseq-eval-lm's perplexity, ROUGE-L of its continuations."""
    m = re.search(r"Perplexity: ([\d.]+)", open(eval_log).read())
    if not m:
        raise SystemExit(f"quality.py: no perplexity in {eval_log}")
    rouge, _ = score("summarization", hyps, refs)
    return {"rougeL": rouge["rougeL"], "ppl": round(float(m.group(1)), 2)}, {
        "ppl": "fairseq-eval-lm on test", "rougeL": f"rouge-score F1 (use_stemmer=True) of greedy continuations "
                                                    f"of {len(hyps)} test descriptions from their first sentence"}


def score(task, hyps, refs):
    """(scores, signatures) as ``makd-score`` computes them: ROUGE for summaries, BLEU and chrF for translations."""
    from makd_fairseq.score import score as metric_score

    scores, signatures = {}, {}
    for metric in (("rouge",) if task == "summarization" else ("bleu", "chrf")):
        values, signature = metric_score(metric, hyps, refs)
        scores.update(values)
        signatures.update(signature)
    return scores, signatures


def seq_kd_manifest(data):
    """What makd-teacher-data recorded about the sequence-level KD data (None if this run built none)."""
    path = os.path.join(data, "teacher_data.json")
    if not os.path.isfile(path):
        return None
    m = json.load(open(path))
    return {k: m[k] for k in ("beam", "max_len_a", "max_len_b", "sentences", "decode_seconds", "command")}


def teacher_arch(checkpoint):
    from makd_fairseq.checkpoint import load_checkpoint, model_args
    from makd_fairseq.student import arch_flags

    targs = model_args(load_checkpoint(checkpoint))
    return " ".join(["--arch", targs.arch, *arch_flags(targs)])


def params_of(checkpoint):
    from makd_fairseq.checkpoint import build_model_from_state, load_checkpoint
    from makd_fairseq.lowrank import count_params

    return count_params(build_model_from_state(load_checkpoint(checkpoint)))


def standing(vs):
    """Where makd stands against a method, from the method's difference to makd and its 95% interval."""
    low, high = vs["ci95"]
    return "makd ahead" if high < 0 else "makd behind" if low > 0 else "level"


def vs_cell(vs):
    """A vs-makd table cell: the difference to makd, its 95% interval and makd's standing; a dash without one."""
    if vs is None:
        return "–"
    return f"{vs['diff']:+.2f} [{vs['ci95'][0]:+.2f}, {vs['ci95'][1]:+.2f}] {standing(vs)}"


def budget_label(budget):
    return "teacher" if budget is None else f"{budget:.0%}"


def table(result):
    """Markdown: per method and budget, each metric's mean (± sd over seeds), the first metric's difference to
    makd with its 95% interval (and makd's standing: ahead, level or behind), validation nll, updates (mean over
    seeds; how many seeds stopped early) and generation speed."""
    names = METRICS[result["task"]]
    first = names[0]
    teacher = next(m for m in result["methods"] if m["method"] == "teacher")
    lines = [f"| method | budget | seeds | params | {' | '.join(names)} | {first} % of teacher | {first} vs makd (95% CI) "
             "| best valid nll (bits) | updates | sentences/s |", "|---|---|---|---|" + "---|" * (len(names) + 5)]
    for m in result["methods"]:
        budget = budget_label(m["budget"])
        sd = m.get("sd") or {}
        cells = [f"{m['metrics'][n]:.2f}" + (f" ± {sd[n]:.2f}" if n in sd else "") for n in names]
        share = 100 * m["metrics"][first] / max(teacher["metrics"][first], 1e-9)
        vs = vs_cell((m.get("vs_makd") or {}).get(first))
        nll = "–" if m.get("valid_nll") is None else f"{m['valid_nll']:.3f}"
        early = [bool(r.get("early_stopped")) for r in m.get("seeds", [])]
        updates = "–" if m.get("updates") is None else f"{m['updates']:,}" + (
            "" if not any(early) else " (early stop)" if all(early) else f" (early stop: {sum(early)} of {len(early)})")
        seeds = len(m["seeds"]) if m.get("seeds") and m["budget"] is not None else "–"
        speed = "–" if not m.get("speed") else f"{m['speed']['sentences_per_s']:.2f}"
        lines.append(f"| {m['method']} | {budget} | {seeds} | {m['params']:,} | " + " | ".join(cells)
                     + f" | {share:.1f}% | {vs} | {nll} | {updates} | {speed} |")
    if any(m["method"] in SEQ_KD_METHODS for m in result["methods"]):
        lines += ["", f"{', '.join(SEQ_KD_METHODS)}: best valid nll against the teacher's outputs for the valid "
                      "sources (what they are trained on), not against the references as the other rows."]
    if result.get("pending"):
        lines += ["", f"Partial: {len(result['pending'])} trainings not finished yet ({', '.join(result['pending'])})."]
    return "\n".join(lines) + "\n"


def plot(result, path):
    """Quality against budget (each metric; mean and sd over seeds) and, when timed, against sentences/s."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's logging setup lets its DEBUG lines through
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(METRICS))
    parser.add_argument("--data", required=True, help="fairseq-preprocess output (prepare.py's OUT/<task>/bin)")
    parser.add_argument("--size", choices=sorted(STUDENT_TRAIN), default="cpu")
    parser.add_argument("--work", required=True, help="teacher, students, logs and generations go here")
    parser.add_argument("--teacher", help="an already trained teacher checkpoint (default: train one with "
                                          "train_teacher.py --size SIZE into WORK/teacher)")
    parser.add_argument("--out", help="results JSON (default: benchmarks/results/<task>.json)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--methods", nargs="+", choices=list(QUALITY_METHODS),
                        help="default: all (language modeling: " + ", ".join(LM_METHODS) + ")")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="training seeds of every trained method at --seeded-budgets (default: %(default)s)")
    parser.add_argument("--seeded-budgets", type=float, nargs="*", default=[0.5],
                        help="budgets trained with every --seeds; the others with the first seed only")
    parser.add_argument("--time-generation", action="store_true",
                        help="also time each model's generation, one at a time (run when nothing else is running)")
    parser.add_argument("--partial", action="store_true",
                        help="score and report the students that have finished training; train nothing (a long run "
                             "goes on in another process; its results so far)")
    parser.add_argument("--reuse", metavar="RESULTS_JSON",
                        help="take over the trained seeds of an earlier run of this benchmark (e.g. on a machine "
                             "since lost) instead of training them again: their records from RESULTS_JSON, their test "
                             "hypotheses (hypotheses/<task>/ beside it) rescored here; only when that run had this "
                             "data hash and this run's teacher writes its test hypotheses byte for byte")
    parser.add_argument("--hypotheses", help="where the xz-compressed hypotheses go (default: "
                                             "benchmarks/results/hypotheses/<task> next to --out)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings/generations run at once")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per job")
    parser.add_argument("--init", choices=("whiten", "svd"), default="whiten",
                        help="makd-init's factors for every low-rank student: whitened on the train split's inputs "
                             "(default; benchmarks/results/sweep.json) or the plain truncated SVD")
    parser.add_argument("--batch-size", type=int, default=64, help="fairseq-generate sentences per batch")
    parser.add_argument("--remove-bpe", default="sentencepiece",
                        help="fairseq-generate's --remove-bpe before scoring ('none' for word-level data)")
    parser.add_argument("--generate-args", default="", help="more fairseq-generate flags, e.g. BART's "
                                                             "'--bpe gpt2' (one quoted string)")
    parser.add_argument("--continue-docs", type=int, default=500,
                        help="language modeling: test descriptions continued from their first sentence")
    parser.add_argument("--worker-continue", nargs=2, metavar=("CHECKPOINT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_continue:
        return continue_worker(args, *args.worker_continue)
    lm = args.task == "language_modeling"
    if lm != is_lm_size(args.size):
        parser.error(f"--size {args.size} does not fit --task {args.task} (language modeling takes lm_* sizes)")
    args.methods = args.methods or list(LM_METHODS if lm else QUALITY_METHODS)
    if lm and "dense_sft_kd" in args.methods:
        parser.error("dense_sft_kd (makd-shrink) is for encoder-decoder models, not --task language_modeling")
    if lm and set(SEQ_KD_METHODS) & set(args.methods):
        parser.error(f"{', '.join(SEQ_KD_METHODS)} decode sources with the teacher: encoder-decoder models only, "
                     "not --task language_modeling")
    args.out = args.out or os.path.join(HERE, "results", f"{args.task}.json")
    if not os.path.isfile(os.path.join(args.data, "dict.txt")) and not any(
            f.startswith("dict.") for f in (os.listdir(args.data) if os.path.isdir(args.data) else [])):
        parser.error(f"--data {args.data}: no fairseq dictionary there (run examples/debian_descriptions/prepare.py)")
    if not args.teacher and args.size not in TEACHER_ARCH:
        parser.error(f"--size {args.size} has no teacher recipe in benchmarks/sizes.py: give --teacher T.pt")
    if args.teacher and not os.path.isfile(args.teacher):
        parser.error(f"--teacher {args.teacher}: no such file")
    if args.reuse and not os.path.isfile(args.reuse):
        parser.error(f"--reuse {args.reuse}: no such file")
    if any(not 0 < b < 1 for b in args.budgets):
        parser.error(f"--budgets must be fractions in (0, 1), got {args.budgets}")
    if "teacher" not in args.methods:
        args.methods.insert(0, "teacher")  # every score is also reported as a share of the teacher's
    started = time.time()
    import makd_fairseq  # noqa: F401  (checkpoint allow-list for the parameter counts)

    os.makedirs(args.work, exist_ok=True)
    run = Run(args)
    teacher = args.teacher or run.path("teacher", "checkpoint_best.pt")
    if not args.teacher:
        run.stage("teacher", teacher_command(args.data, args.size, run.path("teacher"), ["--log-interval", "100"]),
                  run.path("teacher.log"), lambda: os.path.isfile(teacher) and finished(run.path("teacher.log")),
                  resumes=True)
    if "teacher" not in run.stages and os.path.isfile(run.path("teacher.log")):  # trained by an earlier command
        m = re.search(r"done training in ([\d.]+) seconds", open(run.path("teacher.log")).read())
        run.stages["teacher"] = float(m.group(1)) if m else None

    manifest = os.path.join(args.data, "..", "..", "manifest.json")  # prepare.py's hash of its outputs
    data_hash = json.load(open(manifest)).get("sha256") if os.path.isfile(manifest) else None
    reused = {}
    if args.reuse:  # the teacher's test generation first: it decides whether the earlier students fit this teacher
        log = run.path("generate", "teacher.txt")
        run.stage("generate teacher", generate_command(run, teacher), log,
                  lambda: os.path.isfile(log) and "Generate test with beam" in open(log).read())
        reused = reusable_seeds(run, data_hash, log)

    seq_kd_data, seq_kd_lock = run.path("seq_kd_data"), threading.Lock()

    def seq_kd_ready():  # built once, by the first sequence-level KD training that needs it
        with seq_kd_lock:
            run.stage("seq_kd_data", teacher_data_command(run, teacher), run.path("seq_kd_data.log"),
                      lambda: os.path.isfile(os.path.join(seq_kd_data, "teacher_data.json")))

    # (method, budget, seed or None if untrained, checkpoint or None if taken over with --reuse)
    models = [("teacher", None, None, teacher)]
    inits_of = {}  # (method, budget) -> the student it starts from (its parameter count)
    jobs = []  # (name, command, log, done, needs the seq-KD data)
    for budget in args.budgets:  # in the order given: the first budget's every seed trains before the next budget
        inits, key = student_paths(run, budget)
        for kind, (tool, kind_flags) in STUDENT_KINDS.items():
            if any(QUALITY_METHODS[m] and QUALITY_METHODS[m][0] == kind for m in args.methods):
                init_flags = ["--init", args.init, "--data", args.data] if tool == "makd-init" else []
                run.stage(f"{key}/{kind}", [tool, "--teacher", teacher, "--param-budget", str(budget), *init_flags,
                                            *kind_flags, "--out", inits[kind]], run.path(key, f"{kind}.log"),
                          lambda p=inits[kind]: os.path.isfile(p))
        models += [(m, budget, None, inits[QUALITY_METHODS[m][0]]) for m in args.methods[1:]
                   if QUALITY_METHODS[m][1] is None]
        for seed in seeds_of(args, budget):
            for method in args.methods[1:]:
                init, flags = QUALITY_METHODS[method]
                if flags is None:
                    continue
                save = run.path(key, method, f"seed{seed}")
                log = os.path.join(save, "train.log")
                inits_of[(method, budget)] = inits[init]
                if (method, budget, seed) in reused and not finished(log):
                    models.append((method, budget, seed, None))
                    continue
                data = seq_kd_data if method in SEQ_KD_METHODS else None
                jobs.append((model_name(method, budget, seed), train_command(
                    run, teacher, inits[init], [*flags, "--seed", str(seed)], save, data=data), log,
                    lambda p=log: finished(p), method in SEQ_KD_METHODS))
                models.append((method, budget, seed, os.path.join(save, "checkpoint_best.pt")))

    def train(name, cmd, log, done, needs_seq_kd):
        if needs_seq_kd and not done():
            seq_kd_ready()
        run.stage(name, cmd, log, done, resumes=True)

    def pool(fn, stages):
        with ThreadPoolExecutor(args.jobs) as ex:
            for f in [ex.submit(fn, *s) for s in stages]:
                f.result()

    pending = []
    if args.partial:  # report what has finished training, start nothing new
        pending = [name for name, _, log, done, _ in jobs if not done()]
        models = [m for m in models if m[2] is None or model_name(*m[:3]) not in pending]
        if not any(m[2] is not None for m in models):
            raise SystemExit("quality.py: --partial: no student has finished training yet")
    else:
        pool(train, jobs)
    evals, outputs = [], []
    for method, budget, seed, checkpoint in models:
        name = model_name(method, budget, seed).replace("/", "_")
        log = run.path("generate", name + ".txt")
        if checkpoint is None:
            outputs.append(None)
        elif lm:
            cont = run.path("generate", name + ".continuations.tsv")
            evals.append((f"eval-lm {name}", eval_lm_command(run, checkpoint), log,
                          lambda p=log: os.path.isfile(p) and "Perplexity:" in open(p).read()))
            evals.append((f"continue {name}", continue_command(run, checkpoint, cont), cont + ".log",
                          lambda p=cont: os.path.isfile(p)))
            outputs.append((log, cont))
        else:
            evals.append((f"generate {name}", generate_command(run, checkpoint), log,
                          lambda p=log: os.path.isfile(p) and "Generate test with beam" in open(p).read()))
            outputs.append((log,))
    pool(run.stage, evals)
    speeds = time_generation(run, models) if args.time_generation and not lm else {}

    hyp_dir = args.hypotheses or os.path.join(os.path.dirname(os.path.abspath(args.out)), "hypotheses", args.task)
    scored, signatures, references = {}, {}, None
    for (method, budget, seed, checkpoint), files in zip(models, outputs):
        if files is None:
            record, hyps = reused[(method, budget, seed)]
            refs = references
            metrics, signatures = score(args.task, hyps, refs)
            if metrics != record["metrics"]:
                raise SystemExit(f"quality.py: --reuse {args.reuse}: {model_name(method, budget, seed)} scores "
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
            raise SystemExit(f"quality.py: {files[-1]} scores other test items than the teacher's generation")
        keep_text(os.path.join(hyp_dir, model_name(method, budget, seed).replace("/", "_") + ".txt.xz"), hyps)
        scored[(method, budget, seed)] = (metrics, hyps)

    methods = []
    for method, budget, seed, checkpoint in models:
        if seed not in (None, first_seed(args, models, method, budget)):
            continue
        runs = [(s, c) for m, b, s, c in models if (m, b) == (method, budget)]
        per_seed = [scored[(method, budget, s)][0] for s, _ in runs]
        here = [c for _, c in runs if c is not None]  # all seeds taken over: the student they started from
        entry = {"method": method, "budget": budget,
                 "params": params_of(here[0] if here else inits_of[(method, budget)]),
                 "metrics": {k: round(statistics.mean(m[k] for m in per_seed), 2) for k in per_seed[0]},
                 "sd": {k: round(statistics.stdev(m[k] for m in per_seed), 2) for k in per_seed[0]}
                 if len(per_seed) > 1 else None, "valid_nll": None, "updates": None}
        if seed is not None or method == "teacher":
            entry["seeds"] = [seed_record(run, method, s, c, scored[(method, budget, s)][0]) if c is not None
                              else reused[(method, budget, s)][0] for s, c in runs]
            trained = [r for r in entry["seeds"] if r.get("valid_nll") is not None]
            entry["valid_nll"] = round(statistics.mean(r["valid_nll"] for r in trained), 3) if trained else None
            entry["updates"] = round(statistics.mean(r["updates"] for r in trained)) if trained else None
        entry["speed"] = speeds.get((method, budget))
        methods.append(entry)
    compare_with_makd(args.task, methods, models, scored, references)
    result = {
        "task": args.task, "size": args.size, "teacher_arch": teacher_arch(teacher),
        "methods": methods, "scoring": signatures, "pending": pending, "seeds": {f"{b:g}": seeds_of(args, b) for b in args.budgets},
        "paired_bootstrap": "vs_makd: metric(method) - metric(makd), 95% interval from 1,000 paired resamples of "
                            "test items (ROUGE: item F1 averaged over seeds; BLEU/chrF: sacreBLEU's resampling, "
                            "corpus scores averaged over seeds)",
        "student_init": f"makd-init --init {args.init} (uniform ranks)",
        "student_training": " ".join(common_flags(args.size) + STUDENT_TRAIN[args.size]),
        "stopping": {name.strip("-").replace("-", "_"): int(flag_value(STUDENT_TRAIN[args.size], name))
                     for name in ("--max-update", "--patience", "--validate-interval-updates")},
        "seq_kd_data": seq_kd_manifest(seq_kd_data),
        "generation": "greedy continuations, 40 new tokens" if lm else " ".join(GENERATE[args.task]),
        "speed": None if not speeds else "fairseq-generate's sentences/s on the test set, one model at a time, "
                                         f"{args.threads} thread(s), batch {args.batch_size}, the first seed trained "
                                         "in this run",
        "reused": None if not reused else {
            "results": os.path.abspath(args.reuse), "seeds": [model_name(*m[:3]) for m in models if m[3] is None]},
        "hypotheses": os.path.relpath(hyp_dir, os.path.dirname(os.path.abspath(args.out))),  # where this file is
        "command": command(__file__, argv), "scored_at": git_state(), "data_sha256": data_hash,
        "hardware": hardware(f"{args.jobs} job(s) of {args.threads} thread(s)"),
        # this invocation's wall time; the steps it reused from WORK took stage_seconds (sum: compute time)
        "stage_seconds": run.stages, "stage_seconds_sum": round(sum(v or 0 for v in run.stages.values()), 1),
        "wall_s": round(time.time() - started, 1),
    }
    write_atomic(args.out, json.dumps(result, indent=1))
    stem = os.path.splitext(args.out)[0]
    write_atomic(stem + ".md", table(result))
    plot(result, stem + ".png")
    print(table(result))
    print(f"wrote {args.out}, {stem}.md and {stem}.png")


if __name__ == "__main__":
    main()
