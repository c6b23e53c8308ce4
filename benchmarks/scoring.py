"""Scores of a benchmark's kept outputs, as ``makd-score`` computes them: ROUGE for summaries, BLEU and chrF for
translations, perplexity and ROUGE-L of continuations for language models; each method against makd with a paired
bootstrap over test items and seeds."""
from makd_fairseq.fairseq_logs import LogError, eval_lm_result, read

METRICS = {"summarization": ("rougeL", "rouge1", "rouge2"), "translation": ("bleu", "chrf"),
           "language_modeling": ("rougeL", "ppl")}
PAIRED = {"summarization": ("rougeL",), "translation": ("bleu", "chrf"), "language_modeling": ("rougeL",)}
# what a vs_makd (vs_makd_race) interval covers (the results file's "paired_bootstrap" note)
INTERVAL = ("vs_makd: metric(method) - metric(makd) (vs_makd_race: against makd_race), 95% interval from 1,000 "
            "hierarchical paired resamples: each draws the test items (the same for both methods) and, for each "
            "method independently, its seeds with replacement; the statistic is the difference of the corpus metrics "
            "(BLEU/chrF from the items' sentence statistics, ROUGE the item mean) averaged over the drawn seeds. It "
            "covers test items and student seeds, not the teacher (one per run)")


def read_generation(log):
    """(hypotheses, references) in test-set order from fairseq-generate's D- and T- lines (``makd-score``'s reader)."""
    from makd_fairseq.score import ScoreError, read_generation as read_log

    try:
        with open(log, encoding="utf-8") as f:
            return read_log(f, log)
    except ScoreError as e:
        raise SystemExit(f"benchmarks: {e}") from None


def read_continuations(path):
    """(hypotheses, references) of ``benchmarks.lm``'s output."""
    pairs = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8") if line.strip()]
    return [h for h, _ in pairs], [r for _, r in pairs]


def score(task, hyps, refs):
    """(scores, signatures) as ``makd-score`` computes them: ROUGE for summaries, BLEU and chrF for translations."""
    from makd_fairseq.score import score as metric_score

    scores, signatures = {}, {}
    for metric in (("rouge",) if task == "summarization" else ("bleu", "chrf")):
        values, signature = metric_score(metric, hyps, refs)
        scores.update(values)
        signatures.update(signature)
    return scores, signatures


def read_lm_scores(eval_log, hyps, refs):
    """(scores, signatures) of a language model: fairseq-eval-lm's perplexity, ROUGE-L of its continuations."""
    try:
        ppl = eval_lm_result(read(eval_log), eval_log)["ppl"]
    except LogError as e:
        raise SystemExit(f"benchmarks: {e}") from None
    rouge, _ = score("summarization", hyps, refs)
    return {"rougeL": rouge["rougeL"], "ppl": round(ppl, 2)}, {
        "ppl": "fairseq-eval-lm on test", "rougeL": f"rouge-score F1 (use_stemmer=True) of greedy continuations "
                                                    f"of {len(hyps)} test descriptions from their first sentence"}


def compare_with_makd(task, methods, models, scored, references, samples=1000, anchor="makd"):
    """Every method's ``vs_<anchor>`` (``vs_makd``; ``vs_word_kd_race``, ``vs_makd_race``: makd-compress's recipes): its
    metric minus the anchor's at the same budget (each side's seeds averaged), with a 95% interval that resamples
    test items and each side's seeds (``makd_fairseq.score.seeds_and_items_bootstrap``; ``INTERVAL``). ``models``:
    (method, budget, seed, checkpoint); ``scored``: (method, budget, seed) -> (metrics, hypotheses)."""
    from makd_fairseq.score import seeds_and_items_bootstrap

    def runs(method, budget):
        return [scored[(m, b, s)][1] for m, b, s, _ in models if (m, b) == (method, budget)]
    for entry in methods:
        method, budget = entry["method"], entry["budget"]
        if budget is None or method == anchor or not runs(anchor, budget):
            continue
        entry[f"vs_{anchor}"] = {metric: seeds_and_items_bootstrap(metric, runs(method, budget), runs(anchor, budget),
                                                                   references, samples)
                                 for metric in PAIRED[task]}
