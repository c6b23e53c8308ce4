#!/usr/bin/env python3
"""Build summarization (en long description -> synopsis) and translation (en -> de)
datasets from Debian's DDTP package-description translations.

Input:  apt list files ``*Translation-en.lz4`` / ``*Translation-de.lz4`` (from
        ``apt-get update -o Acquire::Languages=en,de``).
Output: OUT/summarization/{train,valid,test}.{src,tgt,pkg}
        OUT/translation/{train,valid,test}.{en,de,pkg}
        OUT/manifest.json (counts, per-file SHA-256 and one overall SHA-256)
        and, unless --no-spm, sentencepiece models, *.spm.* files and fairseq
        binaries in OUT/<task>/bin.
Near-duplicates never cross splits: items sharing a normalized text or a package
family, or whose sources or targets have word 5-gram Jaccard similarity >= --near-dup
(MinHash LSH candidates, confirmed by exact Jaccard), are grouped (union-find) and whole
groups go to one split; with --containment, so do held-out items whose source or target
is contained in a training item's (below). The manifest records, per task and held-out
split, the share of items whose nearest training item reaches that similarity (found with
an independent MinHash: other seed, more permutations), the sources holding half their word
10-grams in one training source, and the sources, targets and items contained in a training
source / target (half their word 10-grams in one; a text of 3 to 9 words: whole, as
consecutive words, in one), and one hash over the split text, the sentencepiece
vocabularies and the binarized files (the same lists give the same hash wherever --out is).
"""
import argparse
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time

import lz4.frame
from datasketch import MinHash, MinHashLSH

log = logging.getLogger("prepare")

DEFAULT_LISTS = "/var/lib/apt/lists"
SPLITS = ("train", "valid", "test")
TASKS = {"summarization": ("src", "tgt"), "translation": ("en", "de")}


# ---------------------------------------------------------------- parsing

def find_lists(lists_dir, lang):
    """lists_dir, 'en'|'de' -> sorted paths of DDTP files for that language."""
    return sorted(glob.glob(os.path.join(lists_dir, f"*Translation-{lang}.lz4")))


def read_blocks(path):
    """Path of an lz4 DDTP file -> list of raw record texts (RFC822-like paragraphs)."""
    with lz4.frame.open(path, "rt", encoding="utf-8") as f:
        return [b for b in f.read().split("\n\n") if b.strip()]


def parse_record(block):
    """Raw record text -> dict(package, md5, lang, synopsis, paragraphs) or None if incomplete.
    Paragraphs are whitespace-normalized strings; ' .' separator lines are dropped."""
    rec, body = {}, []
    for line in block.split("\n"):
        if line.startswith(" "):
            body.append(line)
        elif ":" in line:
            key, _, value = line.partition(":")
            rec[key] = value.strip()
            if key.startswith("Description-") and key != "Description-md5":
                rec["lang"], rec["synopsis"] = key[len("Description-"):], clean(value)
    if "Package" not in rec or "synopsis" not in rec:
        return None
    return {"package": rec["Package"], "md5": rec.get("Description-md5", ""), "lang": rec["lang"],
            "synopsis": rec["synopsis"], "paragraphs": split_paragraphs(body)}


def read_ddtp(path):
    """Path of an lz4 DDTP file -> list of parsed records (see parse_record)."""
    return [r for r in map(parse_record, read_blocks(path)) if r]


def split_paragraphs(lines):
    """Indented long-description lines -> paragraphs; ' .' lines separate them."""
    paras, cur = [], []
    for line in lines:
        if line.strip() == ".":  # also '  .' inside verbatim blocks
            paras.append(clean(" ".join(cur)))
            cur = []
        else:
            cur.append(line)
    paras.append(clean(" ".join(cur)))
    return [p for p in paras if p]


def clean(s):
    """Collapse all whitespace (tabs, newlines, runs) to single spaces."""
    return " ".join(s.split())


def load(lists_dir):
    """lists_dir -> (en records, de records) from every matching file, in sorted file order."""
    en = [r for p in find_lists(lists_dir, "en") for r in read_ddtp(p)]
    de = [r for p in find_lists(lists_dir, "de") for r in read_ddtp(p)]
    return en, de


# ---------------------------------------------------------------- pairs

def summarization_pairs(en, min_src_words=5, max_src_words=0):
    """en records -> deduped list of (source, target, packages) for long desc -> synopsis.
    Sources are truncated to max_src_words (0 = no limit); short/trivial pairs dropped."""
    pairs = {}
    for r in en:
        src, tgt = " ".join(r["paragraphs"]), r["synopsis"]
        if max_src_words:
            src = " ".join(src.split()[:max_src_words])
        if len(src.split()) < min_src_words or not tgt or norm(src) == norm(tgt):
            continue
        pairs.setdefault((src, tgt), set()).add(r["package"])
    return [(s, t, sorted(p)) for (s, t), p in pairs.items()]


def translation_pairs(en, de, max_src_words=0):
    """en, de records -> deduped (english, german, packages) aligned by Description-md5:
    synopsis with synopsis, paragraph i with paragraph i (only when paragraph counts agree).
    Pairs longer than max_src_words (either side) are skipped, not truncated, to keep alignment."""
    by_md5 = {r["md5"]: r for r in en}
    pairs = {}
    for d in de:
        e = by_md5.get(d["md5"])
        if e is None or len(e["paragraphs"]) != len(d["paragraphs"]):
            continue
        for s, t in zip([e["synopsis"]] + e["paragraphs"], [d["synopsis"]] + d["paragraphs"]):
            if not s or not t or s == t:  # untranslated copies teach nothing
                continue
            if max_src_words and max(len(s.split()), len(t.split())) > max_src_words:
                continue
            pairs.setdefault((s, t), set()).update({e["package"], d["package"]})
    return [(s, t, sorted(p)) for (s, t), p in pairs.items()]


# ---------------------------------------------------------------- grouping / splitting

def norm(text):
    """Text -> key for near-duplicate detection: lowercase alphanumerics only."""
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


_PREFIXES = ("python3-", "python-", "pypy-", "ruby-", "node-", "php-", "r-cran-", "r-bioc-",
             "r-other-", "golang-github-", "golang-", "libghc-", "elpa-", "gir1.2-", "fonts-",
             "xfonts-", "texlive-", "lua-", "haskell-", "ocaml-", "libjs-", "rust-",
             "qml-module-", "myspell-", "hunspell-", "hyphen-", "mythes-")
_SUFFIXES = ("-dev", "-doc", "-docs", "-dbg", "-dbgsym", "-data", "-common", "-bin", "-utils",
             "-tools", "-examples", "-java", "-perl", "-ocaml", "-prof", "-runtime", "-tests",
             "-plugins", "-plugin", "-l10n", "-locales", "-extra", "-extras", "-src", "-source",
             "-headers", "-static", "-dev-bin", "-core", "-client", "-server", "-gtk", "-qt",
             "-cil", "-all", "-full", "-minimal", "-nox", "-python", "-lib", "-libs")
_ARCH = re.compile(r"-(amd64|arm64|armel|armhf|i386|i686|mips\w*|ppc64\w*|s390x|riscv64|\w+-linux-gnu\w*)(-cross)?$")
_VERSION = re.compile(r"[-.]?\d+(\.\d+)*(t64|c2|a|v5|gf|ldbl)?$")


def family(package):
    """Package name -> coarse family stem, e.g. libfoo2-dev, python3-foo, foo-doc -> 'foo'."""
    name = package.lower()
    if name.startswith("librust-"):
        name = name.split("+")[0]  # librust-foo+serde-dev: a feature package of foo
    while True:
        old = name
        for p in _PREFIXES:
            if name.startswith(p) and len(name) > len(p) + 1:
                name = name[len(p):]
        for s in _SUFFIXES:
            if name.endswith(s) and len(name) > len(s) + 1:
                name = name[: -len(s)]
        name = re.sub(r"^lib(32|64|x32|n32)?(?=..)", "", name)  # multilib variants share a family
        name = _ARCH.sub("", name)  # cross-compiler / per-arch variants: gcc-12-aarch64-linux-gnu
        stripped = _VERSION.sub("", name)  # one soname/version chunk per pass: foo-1.0-0 -> foo-1.0 -> foo
        if len(stripped) >= 2:
            name = stripped
        if name == old:
            return name


def shingles(text, n=5):
    """Text -> set of its normalized word n-grams; a text of fewer than n words is one shingle (itself)."""
    words = norm(text).split()
    return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))} if words else set()


def jaccard(a, b):
    return len(a & b) / len(a | b) if a or b else 0.0


class NearDuplicates:
    """One side (source or target) of a set of items, indexed by MinHash LSH over word 5-gram shingles. The LSH
    bands are tuned for ``recall`` x threshold, so pairs just above the threshold are rarely missed; every candidate
    is then confirmed by its exact Jaccard."""

    def __init__(self, texts, threshold, num_perm=128, seed=1, recall=0.7):
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self.sets = [shingles(t) for t in texts]
        self.lsh = MinHashLSH(threshold=threshold * recall, num_perm=num_perm)
        with self.lsh.insertion_session() as session:
            for i, m in enumerate(self.minhashes(self.sets)):
                session.insert(i, m, check_duplication=False)

    def minhashes(self, sets):
        return MinHash.bulk([[g.encode() for g in s] for s in sets], num_perm=self.num_perm, seed=self.seed)

    def nearest(self, sets):
        """Query shingle sets -> per query, the highest exact Jaccard over its LSH candidates (0 if none)
        and that candidate's index (-1 if none)."""
        out = []
        for s, m in zip(sets, self.minhashes(sets)):
            best = max(((jaccard(s, self.sets[j]), j) for j in self.lsh.query(m)), default=(0.0, -1))
            out.append(best)
        return out

    def pairs(self):
        """(i, j), i < j, of indexed items at or above the threshold."""
        for i, m in enumerate(self.minhashes(self.sets)):
            for j in self.lsh.query(m):
                if j > i and jaccard(self.sets[i], self.sets[j]) >= self.threshold:
                    yield i, j


def group_ids(items, near_dup=0.5):
    """items [(src, tgt, packages)] -> list of group ids; items sharing a normalized text (either side) or a
    package family, or whose source or target word 5-gram Jaccard reaches ``near_dup`` (0: off), get the same id
    (the group's smallest key)."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = x = parent[parent[x]]  # path halving
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # smallest key is root: order independent

    keys = []
    for src, tgt, pkgs in items:
        ks = ["t:" + norm(src), "t:" + norm(tgt)] + ["f:" + family(p) for p in pkgs]
        for k in ks[1:]:
            union(ks[0], k)
        keys.append(ks[0])
    if near_dup:
        for side in (0, 1):
            for i, j in NearDuplicates([it[side] for it in items], near_dup).pairs():
                union(keys[i], keys[j])
    return [find(k) for k in keys]


class Containment:
    """Word ``n``-gram containment of query texts in one of a list of texts (exact, through inverted indexes), which
    a Jaccard threshold misses when a short text is half of a longer one. A query of at least ``n`` words is
    contained when ``share`` of its distinct n-grams lie in one text; a shorter one of at least ``min_words`` when
    it occurs whole (consecutive normalized words) in one text; shorter texts only by their exact match, which the
    grouping already keeps together."""

    def __init__(self, texts, n=10, min_words=3):
        self.n, self.min_words = n, min_words
        self.texts = [" " + norm(t) + " " for t in texts]
        self.grams, self.words = {}, {}
        for i, text in enumerate(self.texts):
            for g in self.ngrams(text.split()):
                self.grams.setdefault(g, []).append(i)
            for w in set(text.split()):
                self.words.setdefault(w, []).append(i)

    def ngrams(self, words):
        return {" ".join(words[i:i + self.n]) for i in range(len(words) - self.n + 1)}

    def contains(self, text, share=0.5, allowed=None, short=True):
        """Whether ``text`` is contained in one indexed text (one whose index ``allowed(j)`` accepts, if given);
        ``short``: also the whole-text test of queries under ``n`` words (off: those are never contained)."""
        words = norm(text).split()
        if len(words) >= self.n:
            grams, counts = self.ngrams(words), {}
            for g in grams:
                for j in self.grams.get(g, ()):
                    if allowed is None or allowed(j):
                        counts[j] = counts.get(j, 0) + 1
            return bool(counts) and max(counts.values()) >= share * len(grams)
        if not short or len(words) < self.min_words:
            return False
        phrase = " " + " ".join(words) + " "
        rarest = min((self.words.get(w, ()) for w in set(words)), key=len)
        return any(phrase in self.texts[j] for j in rarest if allowed is None or allowed(j))


def leakage(splits, threshold):
    """{split: items} -> {valid|test: share of items whose nearest train item (source or target word 5-gram
    Jaccard, LSH candidates with a MinHash independent of the grouping's) reaches the threshold, how many sources
    hold half their word 10-grams in one training source, and how many sources, targets and items (either side) are
    contained in one training source / target (``Containment``: half their 10-grams, or a text of 3 to 9 words
    whole)}."""
    out = {}
    index = [NearDuplicates([it[side] for it in splits["train"]], threshold, num_perm=256, seed=2) for side in (0, 1)]
    within = [Containment([it[side] for it in splits["train"]]) for side in (0, 1)]
    for split in ("valid", "test"):
        items = splits[split]
        near = [index[side].nearest([shingles(it[side]) for it in items]) for side in (0, 1)]
        hits = [i for i in range(len(items)) if max(near[0][i][0], near[1][i][0]) >= threshold]
        out[split] = {"share": len(hits) / max(1, len(items)), "items": len(items), "leaking": len(hits),
                      "max_jaccard": max([max(a[0], b[0]) for a, b in zip(*near)], default=0.0),
                      # a stricter, grouping-independent view: sources holding half their word 10-grams in one
                      # training source (what the Jaccard grouping leaves: siblings sharing a long first paragraph)
                      "source_10gram_containment": sum(within[0].contains(it[0], short=False) for it in items)}
        hit = [[within[side].contains(it[side]) for it in items] for side in (0, 1)]
        out[split]["containment"] = {"source": sum(hit[0]), "target": sum(hit[1]),
                                     "either": sum(a or b for a, b in zip(*hit))}
    return out


def seeded_hash(seed, key):
    """(seed, str) -> int; stable across runs and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")


def split_items(items, seed, valid_size, test_size, near_dup=0.5, containment=0.0):
    """items -> {'train'|'valid'|'test': [item, ...]} keeping whole groups together.
    Groups are visited in seeded-hash order and fill valid, then test, up to their sizes;
    groups larger than max(10, 5% of a held-out target) stay in train so no family dominates it.
    ``containment`` (0: off): a held-out group with an item whose source or target is contained in a training
    item's (``Containment`` at this share) goes to train for good, and the held-out splits are filled again in the
    same order, until no held-out item is contained."""
    if valid_size + test_size > len(items) // 3:
        log.warning("held-out sizes %d+%d are large for %d items", valid_size, test_size, len(items))
    gids = group_ids(items, near_dup)
    members = {}
    for item, g in zip(items, gids):
        members.setdefault(g, []).append(item)
    sizes = {"valid": valid_size, "test": test_size}
    need = dict(sizes)
    order = sorted(members, key=lambda g: (seeded_hash(seed, g), g))
    where, barred = {g: "train" for g in order}, set()

    def fill():
        for g in order:
            if where[g] != "train" or g in barred:
                continue
            size = len(members[g])
            for split in ("valid", "test"):
                if size <= need[split] and size <= max(10, sizes[split] // 20):
                    where[g], need[split] = split, need[split] - size
                    break
    fill()
    if containment:
        index = [Containment([it[side] for it in items]) for side in (0, 1)]
        in_train = lambda j: where[gids[j]] == "train"  # noqa: E731
        while True:
            bad = {gids[i] for i, it in enumerate(items) if where[gids[i]] != "train" and any(
                index[side].contains(it[side], containment, in_train) for side in (0, 1))}
            if not bad:
                break
            for g in sorted(bad):
                need[where[g]] += len(members[g])
                where[g] = "train"
                barred.add(g)
            fill()
        log.info("containment: %d held-out groups moved to train", len(barred))
    out = {s: [] for s in SPLITS}
    for item, g in zip(items, gids):
        out[where[g]].append(item)
    return out


def subset(items, n, seed):
    """Keep a seeded random n of items (0 = all), preserving their order."""
    if not n or len(items) <= n:
        return items
    keep = set(sorted(range(len(items)), key=lambda i: seeded_hash(seed, items[i][0] + "\t" + items[i][1]))[:n])
    return [x for i, x in enumerate(items) if i in keep]


# ---------------------------------------------------------------- writing

def write_split(task_dir, split, items, exts):
    """Write items as parallel one-line-per-example files {split}.{ext} plus {split}.pkg."""
    os.makedirs(task_dir, exist_ok=True)
    for col, ext in enumerate(exts):
        with open(os.path.join(task_dir, f"{split}.{ext}"), "w", encoding="utf-8") as f:
            f.writelines(clean(it[col]) + "\n" for it in items)
    with open(os.path.join(task_dir, f"{split}.pkg"), "w", encoding="utf-8") as f:
        f.writelines(" ".join(it[2]) + "\n" for it in items)


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def output_hash(out, files):
    """Relative paths under out -> (overall SHA-256, {path: sha256}); order independent."""
    per = {p: sha256_file(os.path.join(out, p)) for p in sorted(files)}
    total = hashlib.sha256("".join(f"{p}\0{h}\n" for p, h in per.items()).encode()).hexdigest()
    return total, per


def spm_and_binarize(task_dir, exts, vocab, workers):
    """Train one joint sentencepiece model on train.{exts}, encode all splits into
    {split}.spm.{ext}, then run fairseq-preprocess into task_dir/bin (joined dictionary)."""
    import sentencepiece as spm

    prefix = os.path.join(task_dir, "spm")
    spm.SentencePieceTrainer.train(
        input=[os.path.join(task_dir, f"train.{e}") for e in exts], model_prefix=prefix,
        vocab_size=vocab, hard_vocab_limit=False,  # tiny corpora cannot fill a big vocab
        character_coverage=1.0, model_type="unigram", input_sentence_size=2_000_000,
        shuffle_input_sentence=True, num_threads=workers, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    for split in SPLITS:
        for e in exts:
            with open(os.path.join(task_dir, f"{split}.{e}"), encoding="utf-8") as fi, \
                 open(os.path.join(task_dir, f"{split}.spm.{e}"), "w", encoding="utf-8") as fo:
                fo.writelines(" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n" for line in fi)
    exe = shutil.which("fairseq-preprocess")
    cmd = [exe] if exe else [sys.executable, "-m", "fairseq_cli.preprocess"]
    pref = lambda s: os.path.join(task_dir, f"{s}.spm")  # noqa: E731
    cmd += ["--source-lang", exts[0], "--target-lang", exts[1], "--trainpref", pref("train"),
            "--validpref", pref("valid"), "--testpref", pref("test"),
            "--destdir", os.path.join(task_dir, "bin"), "--joined-dictionary", "--workers", str(workers)]
    log.info("running %s", " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------- CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lists-dir", default=DEFAULT_LISTS,
                   help="directory with *Translation-en.lz4 and *Translation-de.lz4 (default: %(default)s; "
                        "if files are missing there, apt-get update -o Acquire::Languages=en,de is run once)")
    p.add_argument("--out", required=True, help="output directory (must be empty or absent unless --force)")
    p.add_argument("--seed", type=int, default=1, help="seed for split assignment and --subset (default: %(default)s)")
    p.add_argument("--valid-size", type=int, default=None, help="valid pairs per task (default: 1000 summ., 500 transl.)")
    p.add_argument("--test-size", type=int, default=None, help="test pairs per task (default: 1000 summ., 500 transl.)")
    p.add_argument("--min-source-words", type=int, default=5, help="drop summarization sources shorter than this")
    p.add_argument("--max-source-words", type=int, default=0,
                   help="truncate summarization sources / skip translation pairs longer than this (0: no limit)")
    p.add_argument("--near-dup", type=float, default=0.5,
                   help="group items whose source or target word 5-gram Jaccard reaches this (0: off; default: %(default)s)")
    p.add_argument("--containment", type=float, default=0.0,
                   help="keep out of valid/test every group with an item whose source or target holds this share of "
                        "its word 10-grams in one training source / target (3 to 9 words: occurs whole in one); "
                        "0: off, the split of the committed data (default: %(default)s)")
    p.add_argument("--subset", type=int, default=0, help="cap train pairs per task at N, seeded sample (0: all)")
    p.add_argument("--spm-vocab", type=int, default=8000, help="sentencepiece vocab size per task (default: %(default)s)")
    p.add_argument("--no-spm", action="store_true", help="skip sentencepiece and fairseq-preprocess")
    p.add_argument("--workers", type=int, default=2, help="workers for sentencepiece/fairseq-preprocess")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (overwrites only our files)")
    return p.parse_args(argv)


def fail(msg):
    """One clear error line on stderr; exit status 2."""
    print(f"prepare.py: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    start = time.time()
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        return fail(f"output directory {args.out} is not empty; use --force to write into it")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return fail(f"output path {args.out} exists and is not a directory")
    if not 0 <= args.near_dup <= 1:
        return fail(f"--near-dup must be a Jaccard similarity in [0, 1] (0: off), got {args.near_dup}")
    if not 0 <= args.containment <= 1:
        return fail(f"--containment must be a share of word 10-grams in [0, 1] (0: off), got {args.containment}")

    missing = lambda: [lang for lang in ("en", "de") if not find_lists(args.lists_dir, lang)]  # noqa: E731
    if missing() and os.path.abspath(args.lists_dir) == DEFAULT_LISTS:
        log.info("DDTP files missing; running apt-get update -o Acquire::Languages=en,de")
        rc = subprocess.run(["apt-get", "update", "-o", "Acquire::Languages=en,de"]).returncode
        if rc:
            log.warning("apt-get update exited with %d", rc)
    if missing():
        return fail(f"no *Translation-{'/'.join(missing())}.lz4 files in {args.lists_dir} "
                    "(run apt-get update -o Acquire::Languages=en,de or pass --lists-dir)")

    en, de = load(args.lists_dir)
    log.info("read %d en and %d de description records", len(en), len(de))
    tasks = {
        "summarization": (summarization_pairs(en, args.min_source_words, args.max_source_words), 1000),
        "translation": (translation_pairs(en, de, args.max_source_words), 500),
    }
    counts, leaks, written = {}, {}, []
    for task, (items, default_size) in tasks.items():
        exts = TASKS[task]
        splits = split_items(items, args.seed, args.valid_size if args.valid_size is not None else default_size,
                             args.test_size if args.test_size is not None else default_size, args.near_dup,
                             args.containment)
        splits["train"] = subset(splits["train"], args.subset, args.seed)
        if args.near_dup:
            leaks[task] = leakage(splits, args.near_dup)
            log.info("%s: held-out items with a training near-duplicate: %s; contained in a training source / "
                     "target: %s", task, ", ".join(f"{s} {v['leaking']}/{v['items']}" for s, v in leaks[task].items()),
                     ", ".join(f"{s} {v['containment']['source']} / {v['containment']['target']}"
                               for s, v in leaks[task].items()))
        for split, part in splits.items():
            write_split(os.path.join(args.out, task), split, part, exts)
            written += [f"{task}/{split}.{e}" for e in exts + ("pkg",)]
        counts[task] = {s: len(v) for s, v in splits.items()}
        print(f"{task}: " + " ".join(f"{s}={n}" for s, n in counts[task].items()), flush=True)

    if not args.no_spm:
        for task, exts in TASKS.items():
            spm_and_binarize(os.path.join(args.out, task), exts, args.spm_vocab, args.workers)
            written += [os.path.relpath(p, args.out) for p in
                        # spm.vocab (pieces and scores), not spm.model: the model also stores its training paths
                        sorted(glob.glob(os.path.join(args.out, task, "spm.vocab")) +
                               glob.glob(os.path.join(args.out, task, "bin", "*.bin")) +
                               glob.glob(os.path.join(args.out, task, "bin", "*.idx")) +
                               glob.glob(os.path.join(args.out, task, "bin", "dict.*.txt")))]
    total, per_file = output_hash(args.out, written)  # split text, sentencepiece models, binaries
    print(f"sha256: {total}", flush=True)
    manifest = {"inputs": {os.path.basename(p): sha256_file(p) for lang in ("en", "de")
                           for p in find_lists(args.lists_dir, lang)},
                "seed": args.seed, "counts": counts, "near_duplicate_leakage": leaks, "sha256": total, "files": per_file,
                "options": {k: v for k, v in vars(args).items() if k not in ("out", "lists_dir", "force")}}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    log.info("done in %.1f s", time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
