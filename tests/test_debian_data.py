"""Tests for examples/debian_descriptions/prepare.py on the committed DDTP excerpt
(tests/fixtures/debian/ddtp), run as a real subprocess like a user would."""
import importlib.util
import itertools
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "debian_descriptions")
PREPARE = os.path.join(EXAMPLE, "prepare.py")
DDTP = os.path.join(ROOT, "tests", "fixtures", "debian", "ddtp")
SPLITS = ("train", "valid", "test")

sys.path.insert(0, EXAMPLE)
import prepare  # noqa: E402


def ddtp_dir(tmp_path, en_blocks):
    """A DDTP lists directory: these English stanzas, and the committed German translations."""
    import lz4.frame

    d = tmp_path / "ddtp"
    d.mkdir()
    with lz4.frame.open(d / "Translation-en.lz4", "wt", encoding="utf-8") as f:
        f.write("\n\n".join(en_blocks) + "\n")
    (d / "Translation-de.lz4").write_bytes(open(os.path.join(DDTP, "Translation-de.lz4"), "rb").read())
    return d


def run_prepare(out, *extra, lists_dir=DDTP):
    """Run prepare.py (no spm unless extra overrides) -> CompletedProcess with text output."""
    cmd = [sys.executable, PREPARE, "--lists-dir", str(lists_dir), "--out", str(out),
           "--valid-size", "30", "--test-size", "30", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def out1(tmp_path_factory):
    out = tmp_path_factory.mktemp("debian") / "seed1"
    res = run_prepare(out, "--no-spm")
    assert res.returncode == 0, res.stderr
    return out


def manifest(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def test_counts_and_format(out1):
    counts = manifest(out1)["counts"]
    for task, exts in prepare.TASKS.items():
        for split in SPLITS:
            assert counts[task][split] > 0, (task, split)
            cols = [read_lines(out1 / task / f"{split}.{e}") for e in exts + ("pkg",)]
            assert all(len(c) == counts[task][split] for c in cols)
            assert all(line.strip() and "\t" not in line for c in cols[:2] for line in c)


@pytest.mark.parametrize("task", sorted(prepare.TASKS))
def test_no_text_crosses_splits(out1, task):
    texts = {s: {prepare.norm(line) for e in prepare.TASKS[task] for line in read_lines(out1 / task / f"{s}.{e}")}
             for s in SPLITS}
    for a, b in itertools.combinations(SPLITS, 2):
        assert not texts[a] & texts[b], (a, b, sorted(texts[a] & texts[b])[:3])


@pytest.mark.parametrize("task", sorted(prepare.TASKS))
def test_no_family_crosses_splits(out1, task):
    fams = {s: {prepare.family(p) for line in read_lines(out1 / task / f"{s}.pkg") for p in line.split()}
            for s in SPLITS}
    for a, b in itertools.combinations(SPLITS, 2):
        assert not fams[a] & fams[b], (a, b, sorted(fams[a] & fams[b])[:3])


def planted_lists(tmp_path, n=20):
    """A DDTP directory: the fixture excerpt plus, for n long English records, a near-duplicate under an unrelated
    package name (one word of the description changed, another synopsis) -> (dir, [(original, copy) sources])."""
    blocks = prepare.read_blocks(os.path.join(DDTP, "Translation-en.lz4"))
    recs = [(b, prepare.parse_record(b)) for b in blocks]
    long = [(b, r) for b, r in recs if r and len(" ".join(r["paragraphs"]).split()) >= 40][:n]
    assert len(long) == n
    planted, pairs = [], []
    for i, (block, rec) in enumerate(long):
        lines = block.split("\n")
        body = [line for line in lines if line.startswith(" ")]
        words = body[0].split()
        body[0] = " " + " ".join(words[:2] + ["zzchanged"] + words[3:])
        planted.append("\n".join([f"Package: planted{i}x", f"Description-md5: {i:032x}",
                                   f"Description-en: planted synopsis number {i}"] + body))
        copy = prepare.parse_record(planted[-1])
        pairs.append((" ".join(rec["paragraphs"]), " ".join(copy["paragraphs"])))
    return ddtp_dir(tmp_path, blocks + planted), pairs


def split_of_sources(out):
    return {line: s for s in SPLITS for line in read_lines(out / "summarization" / f"{s}.src")}


def test_planted_near_duplicates_never_cross_splits(tmp_path):
    lists, pairs = planted_lists(tmp_path)
    res = run_prepare(tmp_path / "out", "--no-spm", lists_dir=lists)
    assert res.returncode == 0, res.stderr
    where = split_of_sources(tmp_path / "out")
    assert all(a in where and b in where for a, b in pairs)
    assert [(where[a], where[b]) for a, b in pairs if where[a] != where[b]] == []
    assert {where[a] for a, _ in pairs} != {"train"}  # some planted pairs are held out, together
    leak = manifest(tmp_path / "out")["near_duplicate_leakage"]
    assert all(leak[t][s]["share"] <= 0.01 for t in prepare.TASKS for s in ("valid", "test")), leak
    # the grouping is what keeps them together: without it some planted pairs cross, and the manifest sees them
    res = run_prepare(tmp_path / "off", "--no-spm", "--near-dup", "0", lists_dir=lists)
    assert res.returncode == 0, res.stderr
    where = split_of_sources(tmp_path / "off")
    assert any(where[a] != where[b] for a, b in pairs)
    assert manifest(tmp_path / "off")["near_duplicate_leakage"] == {}
    off = prepare.leakage({s: [(line, "", []) for line in read_lines(tmp_path / "off" / "summarization" / f"{s}.src")]
                           for s in SPLITS}, 0.5)
    assert off["test"]["leaking"] > 0
    crossing = sum(1 for a, b in pairs if "train" in (where[a], where[b]) and where[a] != where[b])
    assert crossing and off["valid"]["source_10gram_containment"] + off["test"]["source_10gram_containment"] >= crossing


def test_near_dup_flag_checked(tmp_path):
    res = run_prepare(tmp_path / "out", "--no-spm", "--near-dup", "1.5")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--near-dup" in res.stderr
    assert not (tmp_path / "out").exists()


def test_family_examples():
    assert len({prepare.family(p) for p in ("libfoo2", "libfoo-dev", "foo", "foo-doc", "python3-foo")}) == 1
    assert prepare.family("libx11-6") == prepare.family("libx11-dev") == "x11"
    assert prepare.family("bar") != prepare.family("foo")


def test_hash_depends_only_on_inputs_and_seed(out1, tmp_path):
    same, other = run_prepare(tmp_path / "a", "--no-spm"), run_prepare(tmp_path / "b", "--no-spm", "--seed", "2")
    assert same.returncode == 0 and other.returncode == 0, same.stderr + other.stderr
    assert manifest(tmp_path / "a")["sha256"] == manifest(out1)["sha256"]
    assert f"sha256: {manifest(out1)['sha256']}" in same.stdout
    assert manifest(tmp_path / "b")["sha256"] != manifest(out1)["sha256"]


def test_refuses_non_empty_out(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("user data\n")
    res = run_prepare(tmp_path, "--no-spm")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--force" in res.stderr
    assert keep.read_text() == "user data\n" and os.listdir(tmp_path) == ["keep.txt"]


def test_missing_lists_dir(tmp_path):
    res = run_prepare(tmp_path / "out", "--no-spm", lists_dir=tmp_path / "nowhere")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Translation" in res.stderr and "nowhere" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("fairseq") is None or importlib.util.find_spec("sentencepiece") is None,
                    reason="fairseq and sentencepiece are needed for the spm + fairseq-preprocess path")
def test_spm_and_fairseq_preprocess(tmp_path):
    res = run_prepare(tmp_path, "--spm-vocab", "200")
    assert res.returncode == 0, res.stderr
    for task, (src, tgt) in prepare.TASKS.items():
        d = tmp_path / task
        assert (d / "spm.model").exists() and read_lines(d / f"valid.spm.{src}")
        for split in SPLITS:
            for lang in (src, tgt):
                assert (d / "bin" / f"{split}.{src}-{tgt}.{lang}.bin").stat().st_size > 0
        # joined dictionary: both sides share one vocabulary
        assert read_lines(d / "bin" / f"dict.{src}.txt") == read_lines(d / "bin" / f"dict.{tgt}.txt")
        # the manifest's hash covers the sentencepiece model and the binaries, not only the split text
        files = manifest(tmp_path)["files"]
        assert f"{task}/spm.vocab" in files and f"{task}/bin/test.{src}-{tgt}.{tgt}.bin" in files


def test_containment_of_short_and_long_texts():
    """A text of 10+ words is contained when half its word 10-grams lie in one indexed text; a text of 3 to 9 words
    when it occurs whole (consecutive words, normalized) in one; shorter texts never (their exact copies are
    grouped); ``short=False`` is the source-only check of the committed manifest (10-grams only)."""
    long = "this package provides the command line tools to manage the foo daemon and its configuration files"
    index = prepare.Containment([long, "Emacs major mode for editing Apache configuration files"])
    assert index.contains("major mode for editing Apache")  # 5 words, whole in the second text
    assert index.contains("Major mode, for editing apache!")  # normalized as the grouping normalizes
    assert not index.contains("mode major for editing Apache")  # the same words, not consecutive
    assert not index.contains("major mode") and not index.contains("major mode for editing Apache", short=False)
    words = long.split()
    half = " ".join(words[:12] + ["unrelated"] * 4)  # 7 10-grams, 3 of them in the long text: under half
    assert not index.contains(half)
    assert index.contains(" ".join(words[:14] + ["unrelated"] * 3))  # 8 10-grams, 5 in it: half
    assert index.contains(" ".join(words[:14] + ["unrelated"] * 3), allowed=lambda j: j == 0)
    assert not index.contains(" ".join(words[:14] + ["unrelated"] * 3), allowed=lambda j: j == 1)


def planted_targets(tmp_path, n=30):
    """A DDTP directory: the fixture excerpt plus, for n English records, a record of an unrelated package whose
    synopsis is the original's without its first word and whose description shares no word with any other ->
    (dir, {planted synopsis: original synopsis})."""
    blocks = prepare.read_blocks(os.path.join(DDTP, "Translation-en.lz4"))
    recs = [prepare.parse_record(b) for b in blocks]
    chosen = [r for r in recs if r and 4 <= len(r["synopsis"].split()) <= 9][:n]
    assert len(chosen) == n
    planted, pairs = [], {}
    for i, rec in enumerate(chosen):
        synopsis = " ".join(rec["synopsis"].split()[1:])
        body = " " + " ".join(f"tok{i}x{k}" for k in range(12))
        planted.append("\n".join([f"Package: plantedtarget{i}q", f"Description-md5: {i + 1000:032x}",
                                  f"Description-en: {synopsis}", body]))
        pairs[synopsis] = rec["synopsis"]
    return ddtp_dir(tmp_path, blocks + planted), pairs


def contained_targets(out, split):
    """Brute force, for the manifest's count: held-out synopses of 3 to 9 words inside one training synopsis, longer
    ones with half their word 10-grams in one."""
    def grams(words):
        return {tuple(words[i:i + 10]) for i in range(len(words) - 9)}
    train = [prepare.norm(t).split() for t in read_lines(out / "summarization" / "train.tgt")]
    train_grams = [grams(t) for t in train]
    hits = 0
    for t in (prepare.norm(t).split() for t in read_lines(out / "summarization" / f"{split}.tgt")):
        if len(t) >= 10:
            hits += any(len(grams(t) & g) >= len(grams(t)) / 2 for g in train_grams)
        elif len(t) >= 3:
            hits += any(x[i:i + len(t)] == t for x in train for i in range(len(x) - len(t) + 1))
    return hits


def test_manifest_counts_targets_contained_in_training_targets_and_containment_keeps_them_out(tmp_path):
    """Synopses planted as a training synopsis minus its first word escape the Jaccard grouping (other words, other
    package): the manifest counts them among the targets contained in a training target (the count a brute-force
    search gives); with --containment 0.5 none is held out while its original trains, and the manifest counts 0."""
    lists, pairs = planted_targets(tmp_path)
    res = run_prepare(tmp_path / "plain", "--no-spm", lists_dir=lists)
    assert res.returncode == 0, res.stderr
    leak = manifest(tmp_path / "plain")["near_duplicate_leakage"]["summarization"]
    where = {t: s for s in SPLITS for t in read_lines(tmp_path / "plain" / "summarization" / f"{s}.tgt")}
    crossing = [p for p, o in pairs.items() if where[p] != "train" and where[o] == "train"]
    assert crossing  # some planted synopses are held out, their originals train
    for split in ("valid", "test"):
        assert leak[split]["containment"]["target"] == contained_targets(tmp_path / "plain", split)
        assert leak[split]["containment"]["either"] >= leak[split]["containment"]["target"]
    assert sum(leak[s]["containment"]["target"] for s in ("valid", "test")) >= len(crossing)
    assert all(leak[s]["leaking"] == 0 for s in ("valid", "test"))  # the Jaccard check does not see them
    res = run_prepare(tmp_path / "strict", "--no-spm", "--containment", "0.5", lists_dir=lists)
    assert res.returncode == 0, res.stderr
    strict = manifest(tmp_path / "strict")
    assert strict["options"]["containment"] == 0.5
    assert strict["counts"]["summarization"] == manifest(tmp_path / "plain")["counts"]["summarization"]
    for task in prepare.TASKS:
        for split in ("valid", "test"):
            assert strict["near_duplicate_leakage"][task][split]["containment"] == {"source": 0, "target": 0,
                                                                                    "either": 0}
    assert contained_targets(tmp_path / "strict", "valid") == contained_targets(tmp_path / "strict", "test") == 0


def test_containment_flag_checked(tmp_path):
    res = run_prepare(tmp_path / "out", "--no-spm", "--containment", "-0.1")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--containment" in res.stderr
    assert not (tmp_path / "out").exists()
