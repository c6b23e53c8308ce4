"""Issue 35's batch-1 probe: fairseq's incremental decoder step against ``makd_fairseq.lean_step.LeanDecoder``.

    python3 -m benchmarks.lean_step --work WORK/iwslt --out benchmarks/results/lean_step.json --threads 2

``WORK`` is one shape's directory of a ``benchmarks.speed --shapes`` run (its random-weight ``teacher/``, ``data/``
and the students it made). For every model there, one source sentence of ``--source-len`` tokens, ``--beam``
hypotheses and ``--steps`` decoding steps: the decoder alone — embedding to log-probabilities, the self-attention
caches reordered every step as a beam search does — as fairseq computes it (its incremental state, encoder output
expanded to the beams) and as ``LeanDecoder`` does (plain products, preallocated caches, cross-attention keys and
values once per sentence). All in one process, interleaved rounds (``makd_fairseq.timing``); each time is reported as
ms per step and as a speed-up over fairseq's teacher, and each model's largest log-probability difference between
the two is recorded. The beam search itself and the encoder are not in it: they add the same time to every model.
Run it with nothing else running.
"""

import argparse
import os
import time

import torch

from makd_fairseq.files import git_state, write_json
from makd_fairseq.lean_step import LeanDecoder
from makd_fairseq.timing import interleaved, ratio, spread

from .provenance import command

MODELS = ("teacher", "student50", "student25", "student50_vocab", "student25_vocab", "dense50", "dense25")


def checkpoint(work, name):
    if name == "teacher":
        return os.path.join(work, "teacher", "checkpoint_last.pt")
    return os.path.join(work, name + ".pt")


def decoders(model, source_len, beam, steps, seed=0):
    """(fairseq's decoding, the lean one): each a function decoding ``steps`` steps and returning the last step's
    log-probabilities, the same random tokens and beam reorders in both."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    vocab = model.decoder.embed_tokens.num_embeddings
    src = torch.randint(4, vocab, (1, source_len), generator=gen)
    tokens = torch.randint(4, vocab, (beam, steps), generator=gen)
    orders = [torch.randint(beam, (beam,), generator=gen) for _ in range(steps)]
    enc = model.encoder(src, src_lengths=torch.tensor([source_len]))
    expanded = model.encoder.reorder_encoder_out(enc, torch.zeros(beam, dtype=torch.long))

    def fairseq():
        state = {}
        for t in range(steps):
            model.decoder.reorder_incremental_state_scripting(state, orders[t])
            logits, _ = model.decoder(tokens[:, :t + 1], encoder_out=expanded, incremental_state=state)
        return F.log_softmax(logits[:, -1].float(), dim=-1)

    lean = LeanDecoder(model.decoder)

    def lean_decode():
        lean.start(enc["encoder_out"][0], None, beam, steps)
        for t in range(steps):
            lean.reorder(orders[t])
            out = lean.step(tokens[:, t])
        return out

    return fairseq, lean_decode


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.lean_step", description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a shape directory of a benchmarks.speed --shapes run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25, help="decoding steps per sentence (the speed run's 24 + </s>)")
    parser.add_argument("--source-len", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not os.path.isfile(checkpoint(args.work, "teacher")):
        parser.error(f"--work {args.work}: no teacher/checkpoint_last.pt (a benchmarks.speed --shapes directory)")
    torch.set_num_threads(args.threads)
    import makd_fairseq  # noqa: F401  (allow-lists the checkpoints' types)
    from fairseq import checkpoint_utils

    calls, gap = {}, {}
    for name in MODELS:
        path = checkpoint(args.work, name)
        if not os.path.isfile(path):
            continue
        data = os.path.join(args.work, "data")
        models, _ = checkpoint_utils.load_model_ensemble([path], arg_overrides={"data": data})
        with torch.inference_mode():
            fairseq, lean = decoders(models[0].eval(), args.source_len, args.beam, args.steps)
            gap[name] = (fairseq() - lean()).abs().max().item()
        for engine, fn in (("fairseq", fairseq), ("lean", lean)):
            def timed(fn=fn):
                with torch.inference_mode():
                    start = time.perf_counter()
                    fn()
                    return time.perf_counter() - start
            calls[f"{name}/{engine}"] = timed
        print(f"{name}: largest log-prob difference {gap[name]:.2e}", flush=True)
    runs = interleaved(calls, args.rounds)
    base = runs["teacher/fairseq"]
    rows = {key: {"ms_per_step": spread([seconds * 1e3 / args.steps for seconds in runs[key]]),
                  "speedup_over_fairseq_teacher": {k: v for k, v in ratio(base, runs[key]).items() if k != "per_round"}}
            for key in runs}
    for key, row in rows.items():
        print(f"{key:28s} {row['ms_per_step']['median']:7.2f} ms/step  "
              f"{row['speedup_over_fairseq_teacher']['median']:.2f}x the fairseq teacher", flush=True)
    write_json(args.out, {"models": rows, "largest_logprob_difference": gap, "beam": args.beam, "steps": args.steps,
                          "source_len": args.source_len, "threads": args.threads, "rounds": args.rounds,
                          "command": command("benchmarks.lean_step", argv), **{f"git_{k}": v for k, v in
                                                                               git_state().items()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
