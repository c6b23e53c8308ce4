"""Carry a quality run's trainings from one machine to another as tar files: a machine lent for a while (a GPU) trains
students and builds the sequence-level KD data in a work directory laid out as the other's; ``pack`` writes what the
other machine needs to go on, ``unpack`` puts it into that machine's work directory, where ``benchmarks.quality``
takes a finished training as it is and resumes an unfinished one from its checkpoint_last.pt (as any interrupted
training: fairseq restores the optimizer, schedule and data position; see stages.extend on how far a resumed run
follows a straight one)::

    python3 -m benchmarks.carry pack WORK OUT          # WORK: a quality run's --work; OUT: a folder for the tars
    python3 -m benchmarks.carry pack WORK OUT FOLDER [FOLDER ...]   # those trainings of WORK only (e.g. a teacher)
    python3 -m benchmarks.carry unpack WORK TAR [TAR ...]
    python3 -m benchmarks.carry save WORK STATE        # every unfinished training below WORK, as STATE's only tars
    python3 -m benchmarks.carry restore WORK STATE     # those of STATE's tars that WORK has not begun

A training's tar (a student's: ``b50.makd.seed1.tar``) holds its train.log and train.log.provenance.json (every start of
the training with its command: ``--cpu`` or not says where each ran, which the results record), its checkpoint_best.pt
without the optimizer state (only generation reads it) and, for an unfinished training, its checkpoint_last.pt whole (so
a finished one cannot be extended to a higher patience: stages.extend trains it afresh and says so). A checkpoint that
does not load (the training was killed while writing it) falls back to the newest numbered checkpoint that does; a
student with none is left out. The sequence-KD data's tar (``seq_kd_data.tar``) holds the teacher's targets, the
manifest and the stage's log: makd-teacher-data copies every other file unchanged from the data directory its manifest
names, and ``unpack`` does the same, the manifest last (the data's 'done' mark).
Named FOLDERs (paths in WORK) are packed instead, each the same way: any fairseq-train save directory holding its
train.log, e.g. a teacher of ``benchmarks.train_teacher`` (``teachers_replicate/translation``: its tar
``teachers_replicate.translation.tar``), which resumes from the unpacked checkpoint_last.pt when WORK lies at the same
path (its command names the save directory). ``save`` packs every training below WORK that has not finished (teachers
and students alike, however deep) into STATE, removing STATE's older tars (a training finished since is no longer
carried: score and commit it first); ``restore`` unpacks them into WORK on the next machine, leaving alone a training
WORK has begun (the same machine again). ``benchmarks/run_state/`` keeps such tars in git between sessions (its
README.md). ``unpack`` refuses (exit 2, nothing written) a tar that ``pack`` did not write or a training / data that
WORK has already begun."""
import argparse
import glob
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile

from makd_fairseq import fairseq_logs
from makd_fairseq.files import copy_file

STUDENT = re.compile(r"^(b\d+)/([\w.-]+)/(seed\d+)$")
FOLDER = re.compile(r"^[\w-][\w.-]*(/[\w-][\w.-]*)*$")  # a training's folder in WORK: relative, no '..'
TRAINING_FILES = ("train.log", "train.log.provenance.json", "checkpoint_best.pt", "checkpoint_last.pt")
SEQ_KD = "seq_kd_data"
MANIFEST = "teacher_data.json"  # makd_fairseq.teacher_data.MANIFEST


def loads(path):
    """The checkpoint at ``path`` (torch's weights_only loading, with the types fairseq checkpoints hold allow-listed
    by importing makd_fairseq), or None (with a line saying why) when it does not load."""
    import torch

    import makd_fairseq  # noqa: F401  (the checkpoint allow-list)

    try:
        return torch.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001  (a truncated file raises whatever the unpickler meets)
        print(f"carry: {path} does not load ({type(e).__name__}); trying an older checkpoint")
        return None


def numbered(folder):
    """The numbered checkpoints of ``folder`` (checkpoint_E_U.pt), newest first."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(folder, "checkpoint_*_*.pt"))
             if (m := re.search(r"checkpoint_\d+_(\d+)\.pt$", p))]
    return [p for _, p in sorted(found, reverse=True)]


def pack_training(folder, name, out):
    """``folder``'s training as ``out/<name>.tar`` (name: b50/makd/seed1 → b50.makd.seed1.tar); returns a line saying
    what it holds."""
    import torch

    text = fairseq_logs.read(os.path.join(folder, "train.log"))
    done = fairseq_logs.finished(text)
    last = None
    if not done:
        candidates = [os.path.join(folder, "checkpoint_last.pt"), *numbered(folder)]
        last = next((state for state in map(loads, filter(os.path.isfile, candidates)) if state is not None), None)
    best = loads(os.path.join(folder, "checkpoint_best.pt")) if os.path.isfile(
        os.path.join(folder, "checkpoint_best.pt")) else None
    if best is None or (not done and last is None):
        return f"{name}: left out (no checkpoint that loads)"
    best.pop("last_optimizer_state", None)
    with tempfile.TemporaryDirectory() as staging:
        torch.save(best, os.path.join(staging, "checkpoint_best.pt"))
        if last is not None:
            torch.save(last, os.path.join(staging, "checkpoint_last.pt"))
        for log in TRAINING_FILES[:2]:
            if os.path.isfile(os.path.join(folder, log)):
                copy_file(os.path.join(folder, log), os.path.join(staging, log))
        tar = os.path.join(out, name.replace("/", ".") + ".tar")
        with tarfile.open(tar, "w") as t:
            for f in sorted(os.listdir(staging)):
                t.add(os.path.join(staging, f), arcname=f"{name}/{f}")
    updates = fairseq_logs.last_updates(text) or 0
    where = f"{updates:,} updates" if done else \
        f"resumes at update {last['optimizer_history'][-1]['num_updates']:,} (its log reached {updates:,})"
    return f"{name}: {'finished' if done else 'unfinished'}, {where}, {os.path.getsize(tar) / 2 ** 20:.1f} MiB"


def pack(work, out, folders=()):
    os.makedirs(out, exist_ok=True)
    if folders:
        names = [os.path.relpath(os.path.join(work, f), work).replace(os.sep, "/") for f in folders]
        bad = [f for f, n in zip(folders, names) if not FOLDER.match(n)
               or not os.path.isfile(os.path.join(work, n, "train.log"))]
        if bad:
            raise SystemExit(f"benchmarks.carry: {', '.join(bad)}: not a training's folder in {work} "
                             "(a folder below it holding a fairseq-train log, train.log)")
        return [pack_training(os.path.join(work, n), n, out) for n in names]
    lines = []
    for log in sorted(glob.glob(os.path.join(work, "b*", "*", "seed*", "train.log"))):
        name = os.path.relpath(os.path.dirname(log), work).replace(os.sep, "/")
        if STUDENT.match(name):
            lines.append(pack_training(os.path.dirname(log), name, out))
    data = os.path.join(work, SEQ_KD)
    if os.path.isfile(os.path.join(data, MANIFEST)):
        tar = os.path.join(out, SEQ_KD + ".tar")
        with tarfile.open(tar, "w") as t:
            for f in [*decoded_targets(data), MANIFEST]:
                t.add(os.path.join(data, f), arcname=f"{SEQ_KD}/{f}")
            for f in (SEQ_KD + ".log", SEQ_KD + ".log.provenance.json"):
                if os.path.isfile(os.path.join(work, f)):
                    t.add(os.path.join(work, f), arcname=f)
        lines.append(f"{SEQ_KD}: {os.path.getsize(tar) / 2 ** 20:.1f} MiB")
    elif os.path.isdir(data):
        lines.append(f"{SEQ_KD}: left out (not finished)")
    return lines


def decoded_targets(data):
    """The files of ``data`` that makd-teacher-data wrote rather than copied: its decoded splits' targets."""
    manifest = json.load(open(os.path.join(data, MANIFEST)))
    splits, tgt = "|".join(map(re.escape, manifest["splits"])), re.escape(manifest["target_lang"])
    return sorted(f for f in os.listdir(data) if re.match(rf"({splits})\d*\..+\.{tgt}\.(bin|idx)$", f))


def members(tar):
    """What ``tar`` would write, checked against what ``pack`` writes: ("training", b50/makd/seed1) or
    ("data", None); a SystemExit naming the tar otherwise."""
    with tarfile.open(tar) as t:
        names = [m.name for m in t.getmembers() if m.isfile()]
    folders = {os.path.dirname(n) for n in names}
    if len(folders) == 1 and FOLDER.match(folder := folders.pop()) \
            and all(os.path.basename(n) in TRAINING_FILES for n in names) and f"{folder}/train.log" in names:
        return "training", folder
    if f"{SEQ_KD}/{MANIFEST}" in names and all(n.startswith(SEQ_KD + "/") and "/" not in n[len(SEQ_KD) + 1:]
                                               or n.startswith(SEQ_KD + ".log") for n in names):
        return "data", None
    raise SystemExit(f"benchmarks.carry: {tar} was not written by `benchmarks.carry pack`")


def begun(work, kind, name):
    """What in ``work`` says it has begun a tar's training (its log) or data (its folder), if anything."""
    mark = os.path.join(work, *name.split("/"), "train.log") if kind == "training" else os.path.join(work, SEQ_KD)
    return mark if os.path.exists(mark) else None


def unpack(work, tars):
    plan = [(tar, *members(tar)) for tar in tars]
    for tar, kind, name in plan:  # every refusal before anything is written
        if mark := begun(work, kind, name):
            raise SystemExit(f"benchmarks.carry: {mark} exists: {work} has begun this "
                             f"{kind} (its files are left as they are)")
    lines = []
    for tar, kind, name in plan:
        with tarfile.open(tar) as t, tempfile.TemporaryDirectory(dir=work) as staging:
            t.extractall(staging, filter="data")
            if kind == "training":
                os.makedirs(os.path.dirname(os.path.join(work, name)), exist_ok=True)
                shutil.move(os.path.join(staging, name), os.path.join(work, name))
                lines.append(f"{name}: unpacked")
                continue
            data = os.path.join(staging, SEQ_KD)
            manifest = json.load(open(os.path.join(data, MANIFEST)))
            source = manifest["data"]
            if not os.path.isdir(source):
                raise SystemExit(f"benchmarks.carry: {tar}: the data directory its manifest names ({source}) is not "
                                 "here: the sources and dictionaries are copied from it")
            for f in sorted(os.listdir(source)):
                if re.match(r"(dict\..+\.txt|(train|valid|test)\d*\..+\.(bin|idx))$", f) \
                        and not os.path.exists(os.path.join(data, f)):
                    copy_file(os.path.join(source, f), os.path.join(data, f))
            os.rename(os.path.join(data, MANIFEST), os.path.join(staging, MANIFEST))
            for f in os.listdir(staging):
                if f.startswith(SEQ_KD + ".log"):
                    shutil.move(os.path.join(staging, f), os.path.join(work, f))
            shutil.move(data, os.path.join(work, SEQ_KD))
            shutil.move(os.path.join(staging, MANIFEST), os.path.join(work, SEQ_KD, MANIFEST))  # the 'done' mark last
            lines.append(f"{SEQ_KD}: unpacked ({source}'s sources, dictionaries and other splits copied)")
    return lines


def unfinished(work):
    """The folders below ``work`` (relative, '/'-separated) of every training whose log has not reached its end."""
    logs = glob.glob(os.path.join(work, "**", "train.log"), recursive=True)
    return sorted(os.path.relpath(os.path.dirname(log), work).replace(os.sep, "/") for log in logs
                  if not fairseq_logs.finished(fairseq_logs.read(log)))


def save(work, state):
    folders = unfinished(work)
    with tempfile.TemporaryDirectory() as staging:
        lines = pack(work, staging, folders) if folders else []
        os.makedirs(state, exist_ok=True)
        for old in glob.glob(os.path.join(state, "*.tar")):
            os.remove(old)
        for tar in sorted(os.listdir(staging)):
            shutil.move(os.path.join(staging, tar), os.path.join(state, tar))
    return lines


def restore(work, state):
    lines = []
    for tar in sorted(glob.glob(os.path.join(state, "*.tar"))):
        kind, name = members(tar)
        if mark := begun(work, kind, name):
            lines.append(f"{name or SEQ_KD}: left as it is ({mark} exists)")
        else:
            lines += unpack(work, [tar])
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.carry", description=__doc__.split("::")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="one tar per student of WORK and one for its sequence-KD data (or per FOLDER "
                                    "named), into OUT")
    p.add_argument("work")
    p.add_argument("out")
    p.add_argument("folders", nargs="*", metavar="FOLDER", help="trainings of WORK to pack instead (e.g. a teacher)")
    u = sub.add_parser("unpack", help="the tars of `pack` into WORK")
    u.add_argument("work")
    u.add_argument("tars", nargs="+")
    for verb, text in (("save", "every unfinished training below WORK as the tars of STATE (older ones removed)"),
                       ("restore", "the tars of STATE into WORK, but for trainings WORK has begun")):
        v = sub.add_parser(verb, help=text)
        v.add_argument("work")
        v.add_argument("state")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.work):
        parser.error(f"{args.work}: no such directory")
    if args.verb == "restore" and not os.path.isdir(args.state):
        parser.error(f"{args.state}: no such directory")
    if args.verb == "unpack":
        missing = [t for t in args.tars if not os.path.isfile(t)]
        if missing:
            parser.error(f"{', '.join(missing)}: no such file")
    try:
        verbs = {"pack": lambda: pack(args.work, args.out, args.folders),
                 "unpack": lambda: unpack(args.work, args.tars),
                 "save": lambda: save(args.work, args.state), "restore": lambda: restore(args.work, args.state)}
        lines = verbs[args.verb]()
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    print("\n".join(lines) if lines else f"benchmarks.carry: nothing to {args.verb} in {args.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
