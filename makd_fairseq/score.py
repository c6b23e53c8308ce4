"""``makd-score``: score a ``fairseq-generate`` output with ROUGE (rouge-score) or sacreBLEU / chrF.

    fairseq-generate DATA --path S.pt --beam 4 --remove-bpe sentencepiece > gen.out
    makd-score gen.out --metric rouge          # ROUGE-1/2/L F1, Porter stemming
    makd-score gen.out --metric bleu --json    # sacreBLEU with its signature

Hypotheses are the detokenized ``D-`` lines, references the ``T-`` lines, both in sample order (fairseq prints
them in the order batches finish). The benchmarks score with the same functions.
"""

import argparse
import json
import sys
from typing import Dict, Iterable, List, Tuple

METRICS = ("rouge", "bleu", "chrf")


class ScoreError(ValueError):
    """A generation output that cannot be scored; the message is one line."""


def read_generation(lines: Iterable[str], name: str = "the input") -> Tuple[List[str], List[str]]:
    """(hypotheses, references) in sample order from fairseq-generate's ``D-`` and ``T-`` lines."""
    hyps, refs = {}, {}
    for line in lines:
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
    ids = sorted(hyps)
    return [hyps[i] for i in ids], [refs[i] for i in ids]


def score(metric: str, hyps: List[str], refs: List[str]) -> Tuple[Dict[str, float], Dict[str, str]]:
    """(scores x 100 rounded to 2 decimals, signatures) of ``hyps`` against one reference each."""
    if metric == "rouge":
        from rouge_score import rouge_scorer

        names = ("rouge1", "rouge2", "rougeL")
        scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
        totals = dict.fromkeys(names, 0.0)
        for h, r in zip(hyps, refs):
            for name, s in scorer.score(r, h).items():
                totals[name] += s.fmeasure
        return ({name: round(100 * v / len(hyps), 2) for name, v in totals.items()},
                {"rouge": "rouge-score F1, use_stemmer=True"})
    from sacrebleu.metrics import BLEU, CHRF

    if metric == "bleu":
        bleu = BLEU()
        return {"bleu": round(bleu.corpus_score(hyps, [refs]).score, 2)}, {"bleu": str(bleu.get_signature())}
    if metric == "chrf":
        chrf = CHRF()
        return {"chrf": round(chrf.corpus_score(hyps, [refs]).score, 2)}, {"chrf": str(chrf.get_signature())}
    raise ScoreError(f"--metric must be one of {METRICS}, got {metric!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="makd-score", description=__doc__.splitlines()[0])
    parser.add_argument("generation", help="fairseq-generate's standard output, or - for standard input")
    parser.add_argument("--metric", choices=METRICS, default="rouge")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    args = parser.parse_args(argv)
    try:
        if args.generation == "-":
            hyps, refs = read_generation(sys.stdin, "standard input")
        else:
            try:
                with open(args.generation, encoding="utf-8") as f:
                    hyps, refs = read_generation(f, args.generation)
            except OSError as e:
                raise ScoreError(f"{args.generation}: {e.strerror}") from None
        scores, signatures = score(args.metric, hyps, refs)
    except ScoreError as e:
        print(f"makd-score: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"metric": args.metric, "pairs": len(hyps), **scores, "signature": signatures}))
    else:
        print(" ".join(f"{k} {v:.2f}" for k, v in scores.items())
              + f" ({len(hyps)} pairs; {'; '.join(signatures.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
