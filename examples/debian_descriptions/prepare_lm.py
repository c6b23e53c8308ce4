#!/usr/bin/env python3
"""English Debian long descriptions as a language-modeling corpus, on the summarization task's split.

    python3 examples/debian_descriptions/prepare_lm.py --prepared /tmp/debian

Reads prepare.py's output (PREPARED/summarization: {train,valid,test}.src, its sentencepiece model and
dictionary), so near-duplicates never cross splits and the vocabulary is the summarization one. Writes
PREPARED/language_modeling/{train,valid,test}.txt (one description per line, raw) and bin/ (fairseq-preprocess
--only-source, dict.txt). Refuses to overwrite an existing language_modeling directory without --force.
"""
import argparse
import os
import shutil
import subprocess
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", required=True, help="prepare.py's --out directory")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--force", action="store_true", help="replace an existing PREPARED/language_modeling")
    args = p.parse_args(argv)
    summ = os.path.join(args.prepared, "summarization")
    needed = [os.path.join(summ, f) for f in ("spm.model", "bin/dict.src.txt")] + \
             [os.path.join(summ, f"{s}.{e}") for s in ("train", "valid", "test") for e in ("src", "spm.src")]
    missing = [f for f in needed if not os.path.isfile(f)]
    if missing:
        p.error(f"{missing[0]} is missing: run prepare.py --out {args.prepared} (with sentencepiece) first")
    out = os.path.join(args.prepared, "language_modeling")
    if os.path.exists(out):
        if not args.force:
            p.error(f"{out} exists; pass --force to replace it")
        shutil.rmtree(out)
    os.makedirs(out)
    for split in ("train", "valid", "test"):
        shutil.copyfile(os.path.join(summ, f"{split}.src"), os.path.join(out, f"{split}.txt"))
    shutil.copyfile(os.path.join(summ, "spm.model"), os.path.join(out, "spm.model"))
    cmd = ["fairseq-preprocess", "--only-source", "--srcdict", os.path.join(summ, "bin", "dict.src.txt"),
           *[a for s in ("train", "valid", "test") for a in (f"--{s}pref", os.path.join(summ, f"{s}.spm.src"))],
           "--destdir", os.path.join(out, "bin"), "--workers", str(args.workers)]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"prepare_lm.py: fairseq-preprocess failed:\n{proc.stderr[-3000:]}")
    print(f"wrote {out}/{{train,valid,test}}.txt, spm.model and bin/")


if __name__ == "__main__":
    main()
