#!/usr/bin/env python3
"""Regenerate tests/fixtures/debian/ from the real DDTP files (deterministic for a given
apt snapshot): a small lz4 excerpt of Translation-en/-de (ddtp/) and tiny lowercased,
regex-tokenized summarization/translation splits for word-level fairseq model tests.

Usage: python3 examples/debian_descriptions/make_fixtures.py [--lists-dir DIR] [--out DIR]
"""
import argparse
import glob
import hashlib
import logging
import os
import re
import sys

import lz4.frame

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prepare  # noqa: E402

log = logging.getLogger("make_fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tokenize(text):
    """Text -> lowercased words and punctuation separated by single spaces."""
    return " ".join(re.findall(r"\w+|[^\w\s]", text.lower()))


def main_file(lists_dir, lang):
    """The bookworm main Translation file (the excerpt comes from it alone)."""
    paths = [p for p in glob.glob(os.path.join(lists_dir, f"*_main_i18n_Translation-{lang}.lz4"))
             if "-updates_" not in p and "-security_" not in p]
    if len(paths) != 1:
        sys.exit(f"make_fixtures.py: error: expected one main Translation-{lang}.lz4 in {lists_dir}, got {paths}")
    return paths[0]


def write_lz4(path, blocks):
    """Raw record texts -> lz4 frame file in DDTP layout (records separated by blank lines)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with lz4.frame.open(path, "wb", compression_level=12) as f:
        f.write(("\n\n".join(blocks) + "\n\n").encode("utf-8"))


def make_ddtp(lists_dir, out, windows=15, per_window=10, seed=1):
    """Pick `windows` runs of `per_window` consecutive de records (consecutive names keep
    package families together), their en originals, and up to `per_window` untranslated
    en records from each run's name range; write ddtp/Translation-{en,de}.lz4."""
    en_blocks = [b for b in prepare.read_blocks(main_file(lists_dir, "en")) if len(b) < 3000]
    de_blocks = [b for b in prepare.read_blocks(main_file(lists_dir, "de")) if len(b) < 3000]
    en = [prepare.parse_record(b) for b in en_blocks]
    de = [prepare.parse_record(b) for b in de_blocks]
    en_md5 = {r["md5"] for r in en}
    usable = [i for i, r in enumerate(de) if r["md5"] in en_md5]
    starts = sorted(range(0, len(usable) - per_window, per_window),
                    key=lambda i: prepare.seeded_hash(seed, str(i)))[:windows]
    de_pick, en_pick = set(), set()
    for s in starts:
        run = usable[s:s + per_window]
        de_pick.update(run)
        md5s = {de[i]["md5"] for i in run}
        lo, hi = de[run[0]]["package"], de[run[-1]]["package"]
        en_pick.update(i for i, r in enumerate(en) if r["md5"] in md5s)
        extra = [i for i, r in enumerate(en) if lo <= r["package"] <= hi and r["md5"] not in md5s]
        en_pick.update(extra[:per_window])
    write_lz4(os.path.join(out, "ddtp", "Translation-en.lz4"), [en_blocks[i] for i in sorted(en_pick)])
    write_lz4(os.path.join(out, "ddtp", "Translation-de.lz4"), [de_blocks[i] for i in sorted(de_pick)])
    log.info("ddtp excerpt: %d en, %d de records", len(en_pick), len(de_pick))


def tiny_items(items, max_src, max_tgt, truncate_src):
    """Pairs -> tokenized, length-capped, deduped pairs (packages kept for grouping)."""
    out = {}
    for src, tgt, pkgs in items:
        s, t = tokenize(src).split(), tokenize(tgt).split()
        if truncate_src:
            s = s[:max_src]
        if not s or not t or len(s) > max_src or len(t) > max_tgt:
            continue
        out.setdefault((" ".join(s), " ".join(t)), set()).update(pkgs)
    return [(s, t, sorted(p)) for (s, t), p in out.items()]


def make_splits(lists_dir, out, train=400, held_out=50, max_src=48, max_tgt=24, seed=1):
    """Real data -> prepare.py pairs -> tokenized tiny splits in OUT/<task>/{split}.{ext}."""
    en, de = prepare.load(lists_dir)
    tasks = {"summarization": tiny_items(prepare.summarization_pairs(en), max_src, max_tgt, True),
             "translation": tiny_items(prepare.translation_pairs(en, de), max_src, max_tgt, False)}
    for task, items in tasks.items():
        splits = prepare.split_items(items, seed, held_out, held_out)
        splits["train"] = prepare.subset(splits["train"], train, seed)
        for split, part in splits.items():
            for col, ext in enumerate(prepare.TASKS[task]):
                path = os.path.join(out, task, f"{split}.{ext}")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.writelines(it[col] + "\n" for it in part)
        log.info("%s: %s", task, {s: len(v) for s, v in splits.items()})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lists-dir", default=prepare.DEFAULT_LISTS, help="apt lists dir with the DDTP files")
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "debian"), help="fixture dir")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    make_ddtp(args.lists_dir, args.out)
    make_splits(args.lists_dir, args.out)
    for path in sorted(glob.glob(os.path.join(args.out, "*", "*.*"))):
        with open(path, "rb") as f:
            log.info("%s %s", hashlib.sha256(f.read()).hexdigest()[:16], os.path.relpath(path, args.out))


if __name__ == "__main__":
    main()
