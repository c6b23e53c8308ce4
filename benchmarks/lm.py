"""Greedy continuations of held-out descriptions from their first sentence, by a language model (fairseq's own
generator): what the quality benchmark scores a decoder-only model's text with (ROUGE-L against the next words).

    python3 -m benchmarks.lm CHECKPOINT OUT --data BIN [--remove-bpe sentencepiece] [--docs 500] [--batch-size 64]

Reads BIN/../test.txt (one description a line; BIN/../spm.model with sentencepiece) and writes OUT: one line per
document, hypothesis TAB reference.
"""
import argparse
import os
import re

from makd_fairseq.files import write_text


def split_first_sentence(text):
    """(first sentence, the rest) of a description; the rest is '' when there is a single sentence."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def continue_documents(checkpoint, out, data, remove_bpe, docs, batch_size, max_new=40, ref_words=40):
    """Continue the first ``docs`` test descriptions that have more than one sentence, ``max_new`` tokens from their
    first sentence; the reference is the next ``ref_words`` words of the description."""
    import torch
    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import GenerationConfig

    import makd_fairseq  # noqa: F401

    raw = os.path.join(data, "..", "test.txt")
    sp = None
    if remove_bpe == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=os.path.join(data, "..", "spm.model"))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": data})
    model = models[0].eval()
    model.prepare_for_inference_(cfg)
    vocab = task.dictionary
    prompts = []
    for line in open(raw, encoding="utf-8"):
        first, rest = split_first_sentence(line)
        if rest:
            pieces = sp.encode(first, out_type=str) if sp else first.split()
            prompts.append(([vocab.index(p) for p in pieces][:64], " ".join(rest.split()[:ref_words])))
        if len(prompts) == docs:
            break
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
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
    write_text(out, "\n".join(rows) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.lm", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--data", required=True, help="the language model's binarized data")
    parser.add_argument("--remove-bpe", default="sentencepiece", help="'none' for word-level data")
    parser.add_argument("--docs", type=int, default=500, help="descriptions continued")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    continue_documents(args.checkpoint, args.out, args.data, args.remove_bpe, args.docs, args.batch_size)


if __name__ == "__main__":
    main()
