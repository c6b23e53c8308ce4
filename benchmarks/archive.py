"""The hypotheses every reported number can be recomputed from, kept xz-compressed beside the results file
(``hypotheses/<task>/<model>.txt.xz``), and taking over the seeds of an earlier run from them (``--reuse``)."""
import json
import lzma
import os

from makd_fairseq.files import write_bytes

from .runner import model_name
from .scoring import read_generation


def keep_text(path, lines):
    """Write ``lines`` xz-compressed (left as it is when it already holds them)."""
    data = lzma.compress(("\n".join(lines) + "\n").encode("utf-8"), preset=9)
    if os.path.isfile(path) and lzma.decompress(open(path, "rb").read()) == lzma.decompress(data):
        return
    write_bytes(path, data)


def read_kept(path):
    """The lines ``keep_text`` wrote."""
    return lzma.decompress(open(path, "rb").read()).decode("utf-8")[:-1].split("\n")


def protocol(fields):
    """What makes two runs' students comparable: their init, training flags (the device aside: ``--cpu``), stopping
    rule and checkpoint choice (``quality.training_fields``)."""
    return {"student_init": fields.get("student_init"), "stopping": fields.get("stopping"),
            "checkpoint_selection": fields.get("checkpoint_selection"),
            "student_training": " ".join(f for f in (fields.get("student_training") or "").split() if f != "--cpu")}


def reusable_seeds(args, data_hash, teacher_log, training):
    """{(method, budget, seed): (its seed record, its test hypotheses)} of the trained students of ``--reuse``'s
    results file, e.g. of a run on a machine since lost. Only when they were distilled from this run's teacher on
    this run's data under this run's protocol (``training``: this run's ``quality.training_fields``): the same data
    hash, init, training flags, stopping rule and checkpoint choice, and this teacher's test hypotheses (and the
    references) byte for byte those kept next to that file; otherwise one clear error."""
    path = args.reuse
    old = json.load(open(path))
    kept = os.path.join(os.path.dirname(os.path.abspath(path)), "hypotheses", args.task)
    if (old.get("task"), old.get("size")) != (args.task, args.size):
        raise SystemExit(f"benchmarks.quality: --reuse {path} is a {old.get('task')} run of size {old.get('size')}, "
                         f"not {args.task} of size {args.size}")
    theirs, ours = protocol(old), protocol(training)
    differ = [name for name in ours if theirs[name] != ours[name]]
    if differ:
        raise SystemExit(f"benchmarks.quality: --reuse {path}: its students were trained under another protocol "
                         f"({', '.join(differ)} differ: {theirs[differ[0]]!r} there, {ours[differ[0]]!r} here)")
    if data_hash is None or old.get("data_sha256") != data_hash:
        raise SystemExit(f"benchmarks.quality: --reuse {path}: its data hash {old.get('data_sha256')} is not this "
                         f"data's ({data_hash}; prepare.py's manifest.json): its students saw other data")
    missing = [f for f in ("teacher", "references") if not os.path.isfile(os.path.join(kept, f + ".txt.xz"))]
    if missing:
        raise SystemExit(f"benchmarks.quality: --reuse {path}: no {' or '.join(missing)} hypotheses in {kept}")
    hyps, refs = read_generation(teacher_log)
    old_hyps = read_kept(os.path.join(kept, "teacher.txt.xz"))
    if refs != read_kept(os.path.join(kept, "references.txt.xz")) or hyps != old_hyps:
        differ = sum(a != b for a, b in zip(hyps, old_hyps)) + abs(len(hyps) - len(old_hyps))
        raise SystemExit(f"benchmarks.quality: --reuse {path}: this run's teacher does not reproduce that run's "
                         f"({differ} of {len(old_hyps)} test hypotheses differ, or other references): its students "
                         "were distilled from another model; run without --reuse")
    reused = {}
    for entry in old["methods"]:
        for record in entry.get("seeds") or []:
            name = model_name(entry["method"], entry["budget"], record["seed"])
            hyp_file = os.path.join(kept, name.replace("/", "_") + ".txt.xz")
            if entry["budget"] is not None and record["seed"] is not None and os.path.isfile(hyp_file):
                origin = {"results": os.path.abspath(path), "scored_at": old.get("scored_at"),
                          "hardware": old.get("hardware"), "stage_seconds": old.get("stage_seconds", {}).get(name)}
                reused[(entry["method"], entry["budget"], record["seed"])] = (  # taken over twice: the first origin
                    {**record, "reused_from": record.get("reused_from") or origin}, read_kept(hyp_file))
    return reused
