"""Scoring ``fairseq-generate`` output with ROUGE (rouge-score) or sacreBLEU / chrF: ``makd-score``'s functions.

    fairseq-generate DATA --path S.pt --beam 4 --remove-bpe sentencepiece > gen.out
    makd-score gen.out --metric rouge          # ROUGE-1/2/L F1, Porter stemming
    makd-score gen.out --metric bleu --json    # sacreBLEU with its signature

Hypotheses are the detokenized ``D-`` lines, references the ``T-`` lines, both in sample order (fairseq prints
them in the order batches finish). When the output holds fairseq's log too (``2>&1``), a sentence count below what
the task loaded is an error: fairseq main drops the last batch's remainder unless ``--required-batch-size-multiple
1`` (fairseq#5036), and ``--skip-invalid-size-inputs-valid-test`` drops too-long sources. makd-compress and the
benchmarks score with the same functions, and so does validation on the metric (``validation.py``: ``statistics``
summed over batches, ``from_statistics``).
"""

import re
from typing import Dict, Iterable, List, Tuple

METRICS = ("rouge", "bleu", "chrf")


# fairseq's translation task on loading the split it generates from: "INFO:fairseq.tasks.translation:BIN test en-de
# 500 examples" (the line a log of fairseq-generate's stderr holds)
LOADED = re.compile(r"fairseq\.tasks\.\w+\s*[:|].* \S+-\S+ (\d+) examples\s*$")


class ScoreError(ValueError):
    """A generation output that cannot be scored; the message is one line."""


def read_generation(lines: Iterable[str], name: str = "the input") -> Tuple[List[str], List[str]]:
    """(hypotheses, references) in sample order from fairseq-generate's ``D-`` and ``T-`` lines."""
    hyps, refs, loaded = {}, {}, None
    for line in lines:
        m = LOADED.search(line)
        if m:
            loaded = int(m.group(1))
        if line.startswith(("D-", "T-")):
            head, _, rest = line.rstrip("\n").partition("\t")
            try:
                i = int(head[2:])
            except ValueError:
                continue
            if line.startswith("D-"):
                hyps[i] = rest.split("\t", 1)[1] if "\t" in rest else ""  # D-i <tab> score <tab> text
            else:
                refs[i] = rest
    if not hyps:
        raise ScoreError(f"{name} has no D- lines: is it fairseq-generate's output (stdout)?")
    if set(hyps) != set(refs):
        raise ScoreError(f"{name} holds {len(hyps)} hypotheses (D-) for {len(refs)} references (T-)")
    if loaded is not None and len(hyps) != loaded:
        raise ScoreError(f"{name} holds {len(hyps)} hypotheses for the {loaded} sentences fairseq loaded: fairseq "
                         "drops the last batch's remainder unless --required-batch-size-multiple 1 (fairseq#5036), "
                         "and --skip-invalid-size-inputs-valid-test drops sources longer than the model reads")
    ids = sorted(hyps)
    return [hyps[i] for i in ids], [refs[i] for i in ids]


ROUGE = ("rouge1", "rouge2", "rougeL")


def rouge_items(hyps: List[str], refs: List[str], names=ROUGE) -> Dict[str, List[float]]:
    """Per-item ROUGE F1 (0..1; ``names`` of ROUGE-1/2/L) of ``hyps`` against one reference each (rouge-score,
    Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
    items = {name: [] for name in names}
    for h, r in zip(hyps, refs):
        for name, s in scorer.score(r, h).items():
            items[name].append(s.fmeasure)
    return items


def sacrebleu_metric(metric: str):
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU, "chrf": CHRF}[metric]()


def statistics(metric: str, hyps: List[str], refs: List[str]) -> List[float]:
    """The sufficient statistics of ``metric`` (bleu | chrf | rougeL | rouge1 | rouge2) on ``hyps``: summed over any
    split of a corpus (batches, workers), ``from_statistics`` of the sum is the corpus's score. sacreBLEU's sentence
    statistics summed (lengths, n-gram matches and totals); for ROUGE the sum of the items' F1 and their number."""
    if metric in ROUGE:
        f1 = rouge_items(hyps, refs, (metric,))[metric]
        return [sum(f1), len(f1)]
    if metric in ("bleu", "chrf"):
        return _sacrebleu_statistics(sacrebleu_metric(metric), hyps, refs)
    raise ScoreError(f"no sufficient statistics for {metric!r}: one of bleu, chrf, {', '.join(ROUGE)}")


def _sacrebleu_statistics(m, hyps: List[str], refs: List[str]) -> List[int]:
    return [sum(column) for column in zip(*m._extract_corpus_statistics(hyps, [refs]))]


def from_statistics(metric: str, stats: List[float]) -> float:
    """``metric`` x 100 rounded to 2 decimals from ``statistics``' (summed) output: corpus BLEU / chrF as sacreBLEU
    computes it, the mean ROUGE F1 of the items."""
    if metric in ROUGE:
        return round(100 * stats[0] / stats[1], 2) if stats[1] else 0.0
    return round(sacrebleu_metric(metric)._compute_score_from_stats([int(round(s)) for s in stats]).score, 2)


def score(metric: str, hyps: List[str], refs: List[str]) -> Tuple[Dict[str, float], Dict[str, str]]:
    """(scores x 100 rounded to 2 decimals, signatures) of ``hyps`` against one reference each."""
    if metric == "rouge":
        return ({name: from_statistics(name, [sum(v), len(v)]) for name, v in rouge_items(hyps, refs).items()},
                {"rouge": "rouge-score F1, use_stemmer=True"})
    if metric in ("bleu", "chrf"):
        m = sacrebleu_metric(metric)
        value = from_statistics(metric, _sacrebleu_statistics(m, hyps, refs))
        return {metric: value}, {metric: str(m.get_signature())}  # the signature once m has seen the references
    raise ScoreError(f"--metric must be one of {METRICS}, got {metric!r}")


def paired_bootstrap(metric: str, systems: List[List[str]], baselines: List[List[str]], refs: List[str],
                     samples: int = 1000) -> Dict[str, float]:
    """The difference ``systems`` minus ``baselines`` in ``metric`` (rougeL|rouge1|rouge2|bleu|chrf, x 100) with a
    95% interval from a paired bootstrap over test items: every resample draws the same items for both sides
    (items only: ``seeds_and_items_bootstrap`` resamples each side's seeds as well).
    Each side is a list of hypothesis lists, one per seed, scored on the same items. ROUGE: each item's F1 averaged
    over seeds, then over the resampled items. BLEU/chrF: sacreBLEU's own bootstrap resampling of its sentence
    statistics (its fixed seed, so both sides get the same resamples), corpus scores averaged over seeds."""
    import numpy as np

    if metric in ROUGE:
        def per_item(runs):
            return np.mean([rouge_items(h, refs)[metric] for h in runs], axis=0) * 100
        a, b = per_item(systems), per_item(baselines)
        rng = np.random.default_rng(12345)  # sacreBLEU's default seed (SACREBLEU_SEED)
        idx = rng.choice(len(refs), size=(samples, len(refs)), replace=True)
        diffs = a[idx].mean(1) - b[idx].mean(1)
        point = float(a.mean() - b.mean())
    else:
        from sacrebleu.significance import _bootstrap_resample  # what sacreBLEU's --paired-bs test resamples with

        m = sacrebleu_metric(metric)

        def resampled(runs):  # (seeds, samples) scores, and each seed's full-corpus score
            stats = [m._extract_corpus_statistics(h, [refs]) for h in runs]
            return (np.array([[s.score for s in _bootstrap_resample(st, m, samples)[1]] for st in stats]),
                    [m.corpus_score(h, [refs]).score for h in runs])
        (ra, fa), (rb, fb) = resampled(systems), resampled(baselines)
        diffs = ra.mean(0) - rb.mean(0)
        point = float(np.mean(fa) - np.mean(fb))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": round(point, 2), "ci95": [round(float(lo), 2), round(float(hi), 2)], "samples": samples}


def resampled_scores(metric: str, hyps: List[str], refs: List[str], items) -> Tuple:
    """(``metric`` x 100 on each row of ``items`` (samples, n) test-item indices, the full-corpus score), from each
    item's sufficient statistics computed once: ROUGE's item F1 (the score is their mean), sacreBLEU's sentence
    statistics for BLEU/chrF (n-gram matches and counts, lengths: the corpus score of a resample is computed from
    their sums, as sacreBLEU's own bootstrap does, float32 as there)."""
    import numpy as np

    if metric in ROUGE:
        f1 = np.asarray(rouge_items(hyps, refs)[metric], dtype=np.float64) * 100
        return f1[items].mean(1), float(f1.mean())
    m = sacrebleu_metric(metric)
    stats = np.array(m._extract_corpus_statistics(hyps, [refs]), dtype="float32")
    return (np.array([m._compute_score_from_stats(stats[row].sum(0)).score for row in items]),
            m.corpus_score(hyps, [refs]).score)


def seeds_and_items_bootstrap(metric: str, systems: List[List[str]], baselines: List[List[str]], refs: List[str],
                              samples: int = 1000, seed: int = 12345) -> Dict:
    """The difference ``systems`` minus ``baselines`` in ``metric`` (rougeL|rouge1|rouge2|bleu|chrf, x 100) with a
    95% interval from a hierarchical paired bootstrap over test items and seeds. Each side is a list of hypothesis
    lists, one per seed, on the same items. Every resample draws the test items once, the same for both sides
    (paired), and for each side, independently, its seeds with replacement; the statistic is the mean over the drawn
    seeds of the corpus metric on the drawn items, system minus baseline. Corpus BLEU/chrF come from each item's
    sentence statistics (tokenized once), ROUGE is the item mean. The point estimate is the seed-averaged corpus
    score difference. With one seed per side it is ``paired_bootstrap``, resample for resample (same ``seed``)."""
    import numpy as np

    rng = np.random.default_rng(seed)  # 12345: sacreBLEU's default SACREBLEU_SEED, as paired_bootstrap
    # the items first, as paired_bootstrap draws them: one seed per side leaves every resample as there
    items = rng.choice(len(refs), size=(samples, len(refs)), replace=True)

    def side(runs):
        """(seeds, samples) metric on each resample's items, each seed's full-corpus score, the seeds drawn."""
        per_seed, full = zip(*(resampled_scores(metric, hyps, refs, items) for hyps in runs))
        drawn = rng.integers(0, len(runs), size=(samples, len(runs)))
        return np.array(per_seed), full, drawn

    (sa, fa, da), (sb, fb, db) = side(systems), side(baselines)
    cols = np.arange(samples)[:, None]
    diffs = sa[da, cols].mean(1) - sb[db, cols].mean(1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    counts = f"({len(systems)} vs {len(baselines)})"
    return {"diff": round(float(np.mean(fa) - np.mean(fb)), 2), "ci95": [round(float(lo), 2), round(float(hi), 2)],
            "samples": samples, "resampled": f"items and seeds {counts}" if max(len(systems), len(baselines)) > 1
            else f"items only {counts}"}
