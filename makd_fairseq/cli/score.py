"""``makd-score``: score a ``fairseq-generate`` output with ROUGE (rouge-score) or sacreBLEU / chrF.

    fairseq-generate DATA --path S.pt --beam 4 --remove-bpe sentencepiece > gen.out
    makd-score gen.out --metric rouge          # ROUGE-1/2/L F1, Porter stemming
    makd-score gen.out --metric bleu --json    # sacreBLEU with its signature

Reading and scoring are ``makd_fairseq.score``'s ``read_generation`` and ``score``; see there.
"""

import argparse
import json
import sys

from ..score import METRICS, ScoreError, read_generation, score
from . import fail


def get_parser():
    parser = argparse.ArgumentParser(prog="makd-score", description="Score a fairseq-generate output with ROUGE "
                                                                   "(rouge-score) or sacreBLEU / chrF.")
    parser.add_argument("generation", help="fairseq-generate's standard output, or - for standard input")
    parser.add_argument("--metric", choices=METRICS, default="rouge")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
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
        return fail("makd-score", e)
    if args.json:
        print(json.dumps({"metric": args.metric, "pairs": len(hyps), **scores, "signature": signatures}))
    else:
        print(" ".join(f"{k} {v:.2f}" for k, v in scores.items())
              + f" ({len(hyps)} pairs; {'; '.join(signatures.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
