"""Operators per decoding step: why a same-depth low-rank student barely decodes faster at batch 1.

    python3 -m benchmarks.step_ops --work WORK/iwslt --out benchmarks/results/step_ops.json

``WORK`` is one shape's directory of a ``benchmarks.speed --shapes`` run (its ``teacher/``, ``data/`` and the
students it made). For each model, one batch-1 sentence of the latency split is decoded as the speed benchmark decodes
it (beam 4, ``--gen-len`` tokens forced) under torch.profiler: the aten operators dispatched per decoder step (every
level counted, as the profiler lists them), the ``aten::linear`` and matrix-product calls among them, and the FLOPs
per sentence; and the decoder weights a step reads (``measure.decoder_weights_per_step``: at batch 1 each is
streamed from memory once per step), with the output projection's share of them. Counts, not times: they do not
depend on the machine or its load. At batch 1 a step's time follows its operator count more than its FLOPs (each small
product is dispatch-bound); a factorized projection is two products; the output projection, unless its vocabulary
matrix is factorized too (``student50_vocab``), is read whole by every model.
"""

import argparse
import json
import os

from makd_fairseq.files import git_state, write_text

from .measure import flops_worker, gen_flags
from .provenance import command

MODELS = (("teacher", "teacher/checkpoint_last.pt", "fairseq"),
          ("teacher_per_sentence", "teacher/checkpoint_last.pt", "per_sentence"),
          *((f"student{k}", f"student{k}.pt", "per_sentence") for k in ("50", "25", "50_vocab", "25_vocab")),
          *((f"dense{k}", f"dense{k}.pt", "per_sentence") for k in ("50", "25")))
PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.step_ops", description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a shape directory of a benchmarks.speed --shapes run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--gen-len", type=int, default=24, help="tokens forced per hypothesis (the speed run's)")
    parser.add_argument("--beam", type=int, default=4)
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.work, "data")):
        parser.error(f"--work {args.work}: no data/ (a benchmarks.speed --shapes directory, e.g. WORK/iwslt)")
    settings = argparse.Namespace(fp16=False, beam=args.beam, batch_size=1, gen_len=args.gen_len)
    steps, rows = args.gen_len + 1, {}  # the forced tokens and </s>: one batch-1 sentence, one step each
    for name, file, decoding in MODELS:
        path = os.path.join(args.work, file)
        if not os.path.isfile(path):
            continue
        out = flops_worker(path, os.path.join(args.work, "data"), gen_flags(settings, "valid", 1, decoding), 1,
                           profile=10 ** 6)
        top = out["profile"]["top"]
        rows[name] = {"decoding": decoding, "flops_per_sentence": out["flops_per_sentence"],
                      "aten_ops_per_step": round(sum(t["calls"] for t in top) / steps, 1),
                      "linear_per_step": round(sum(t["calls"] for t in top if t["op"] == "aten::linear") / steps, 1),
                      "products_per_step": round(sum(t["calls"] for t in top if t["op"] in PRODUCTS) / steps, 1),
                      "decoder_weights_per_step": out["decoder_weights_per_step"]["total"],
                      "output_projection_weights": out["decoder_weights_per_step"]["output_projection"]}
        print(name, rows[name], flush=True)
    state = git_state()
    write_text(args.out, json.dumps({"models": rows, "steps_per_sentence": steps, "beam": args.beam,
                                     "command": command("benchmarks.step_ops", argv), "git_commit": state["commit"],
                                     "git_dirty": state["dirty"]}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
