"""Scoring ``fairseq-generate`` output with ROUGE (rouge-score) or sacreBLEU / chrF: ``makd-score``'s functions.

    fairseq-generate DATA --path S.pt --beam 4 --remove-bpe sentencepiece > gen.out
    makd-score gen.out --metric rouge          # ROUGE-1/2/L F1, Porter stemming
    makd-score gen.out --metric bleu --json    # sacreBLEU with its signature

Hypotheses are the detokenized ``D-`` lines, references the ``T-`` lines, both in sample order (fairseq prints
them in the order batches finish). When the output holds fairseq's log too (``2>&1``), a sentence count below what
the task loaded is an error: fairseq main drops the last batch's remainder unless ``--required-batch-size-multiple
1`` (fairseq#5036), and ``--skip-invalid-size-inputs-valid-test`` drops too-long sources. makd-compress and the
benchmarks score with the same functions.
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


def rouge_items(hyps: List[str], refs: List[str]) -> Dict[str, List[float]]:
    """Per-item ROUGE-1/2/L F1 (0..1) of ``hyps`` against one reference each (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
    items = {name: [] for name in ROUGE}
    for h, r in zip(hyps, refs):
        for name, s in scorer.score(r, h).items():
            items[name].append(s.fmeasure)
    return items


def sacrebleu_metric(metric: str):
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU, "chrf": CHRF}[metric]()


def score(metric: str, hyps: List[str], refs: List[str]) -> Tuple[Dict[str, float], Dict[str, str]]:
    """(scores x 100 rounded to 2 decimals, signatures) of ``hyps`` against one reference each."""
    if metric == "rouge":
        return ({name: round(100 * sum(v) / len(v), 2) for name, v in rouge_items(hyps, refs).items()},
                {"rouge": "rouge-score F1, use_stemmer=True"})
    if metric in ("bleu", "chrf"):
        m = sacrebleu_metric(metric)
        return {metric: round(m.corpus_score(hyps, [refs]).score, 2)}, {metric: str(m.get_signature())}
    raise ScoreError(f"--metric must be one of {METRICS}, got {metric!r}")


def paired_bootstrap(metric: str, systems: List[List[str]], baselines: List[List[str]], refs: List[str],
                     samples: int = 1000) -> Dict[str, float]:
    """The difference ``systems`` minus ``baselines`` in ``metric`` (rougeL|rouge1|rouge2|bleu|chrf, x 100) with a
    95% interval from a paired bootstrap over test items: every resample draws the same items for both sides.
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
