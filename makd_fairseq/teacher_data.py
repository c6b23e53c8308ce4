"""Sequence-level KD data (Kim & Rush, 2016): the train targets replaced by the teacher's beam (``makd-teacher-data``).

    p = plan(args)              # checks, the run key, whether BIN_KD is reused, resumed or rebuilt
    hyps, seconds = make(args, p, command)

Decodes every source of the ``--splits`` of the binarized translation data BIN (default: train) with fairseq's own
sequence generator (the task's ``build_generator``/``inference_step``, as fairseq-generate does) and writes BIN_KD, a
data directory fairseq's translation task (and ``makd_translation``) loads: example i of a decoded split has source
i of BIN, unchanged, and the teacher's best hypothesis for it as its target, written as token ids by fairseq's
indexed-dataset builder in BIN's dataset format; the dictionaries and every other split are copied byte for byte.
With the default a student trained on BIN_KD is validated on the original references; with ``--splits train,valid``
on the teacher's outputs for the valid sources, i.e. on what it is trained to produce (so that early stopping and
``--best-checkpoint-metric`` measure its own objective). Decoding is saved every ``--shard-size`` sentences under
BIN_KD/.partial, so an interrupted run resumes; BIN_KD/teacher_data.json is written last and a re-run with the same
teacher, data, splits and decoding flags reuses the finished directory.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings

from .files import atomic, copy_file, write_json
from .student import TASK_FIELDS

MANIFEST = "teacher_data.json"
PARTIAL = ".partial"
# what a finished or partial BIN_KD must have been made from to be reused or resumed
KEY_FIELDS = ("teacher_sha256", "sources_sha256", "splits", "source_lang", "target_lang", "beam", "max_len_a",
              "max_len_b")


class TeacherDataError(ValueError):
    """Bad input; the message is one line for the user."""


def sha256_of(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def split_prefixes(data: str, split: str, src: str, tgt: str) -> list:
    """``DIR/split{,1,2,...}.{src}-{tgt}.`` (or ``{tgt}-{src}``) prefixes, as fairseq's translation task finds them."""
    from fairseq.data import indexed_dataset

    prefixes = []
    for k in range(10 ** 6):
        name = split + (str(k) if k else "")
        found = [os.path.join(data, f"{name}.{a}-{b}.") for a, b in ((src, tgt), (tgt, src))
                 if indexed_dataset.infer_dataset_impl(os.path.join(data, f"{name}.{a}-{b}.{src}"))]
        if not found:
            return prefixes
        prefixes.append(found[0])


def encoder_decoder_check(state: dict, path: str) -> None:
    from fairseq.models import ARCH_MODEL_REGISTRY, FairseqEncoderDecoderModel

    from .checkpoint import model_args

    arch = model_args(state).arch
    model_cls = ARCH_MODEL_REGISTRY.get(arch)
    if model_cls is None or not issubclass(model_cls, FairseqEncoderDecoderModel):
        raise TeacherDataError(f"teacher {path}: arch {arch!r} is not an encoder-decoder model; sequence-level KD "
                               "data is for translation/summarization teachers (decoder-only models have no sources)")


def build_task(args, state):
    """The ``makd_translation`` task on BIN with the teacher's language pair and source handling, and its cfg."""
    from fairseq import options, tasks
    from fairseq.data import data_utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from .checkpoint import model_args

    saved = state["cfg"]["task"] if state.get("cfg") is not None else model_args(state)
    parser = options.get_generation_parser(default_task="makd_translation")
    flags = [args.data, "--task", "makd_translation", "--teacher-path", args.teacher, "--path", args.teacher,
             "--beam", str(args.beam), "--max-len-a", str(args.max_len_a),
             "--max-len-b", str(args.max_len_b), "--batch-size", str(args.batch_size), "--nbest", "1"]
    with warnings.catch_warnings():  # hydra's deprecation notices inside fairseq: stderr keeps one error line
        warnings.simplefilter("ignore")
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, flags + ["--cpu"] * args.cpu))
    for name in TASK_FIELDS["makd_translation"]:  # the teacher's language pair and source handling
        if getattr(saved, name, None) is not None:
            setattr(cfg.task, name, getattr(saved, name))
    if cfg.task.source_lang is None or cfg.task.target_lang is None:  # fairseq infers them from the file names
        cfg.task.source_lang, cfg.task.target_lang = data_utils.infer_language_pair(args.data)
    if cfg.task.source_lang is None:
        raise TeacherDataError(f"--data {args.data}: no binarized language-pair files there (run fairseq-preprocess)")
    return cfg, tasks.setup_task(cfg.task)


def run_key(args, state_path_sha, task) -> dict:
    """What the output depends on (compared on re-runs) plus where it came from (recorded only)."""
    from fairseq.data import indexed_dataset

    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    source_files = []
    for split in args.splits:
        prefixes = split_prefixes(args.data, split, src, tgt)
        if not prefixes:
            raise TeacherDataError(f"--data {args.data}: no {split} split for {src}-{tgt} (run fairseq-preprocess)")
        impls = {indexed_dataset.infer_dataset_impl(p + lang) for p in prefixes for lang in (src, tgt)}
        if not impls <= {"mmap", "lazy", "cached"}:
            raise TeacherDataError(f"--data {args.data}: {split} files in dataset format {sorted(map(str, impls))}; "
                                   "makd-teacher-data writes binarized (mmap, lazy or cached) data only")
        source_files += [p + src + ext for p in prefixes for ext in (".idx", ".bin")]
    dicts = [os.path.join(args.data, f"dict.{lang}.txt") for lang in (src, tgt)]
    return {"teacher_sha256": state_path_sha, "sources_sha256": sha256_of(source_files + dicts),
            "splits": args.splits, "source_lang": src, "target_lang": tgt, "beam": args.beam,
            "max_len_a": args.max_len_a, "max_len_b": args.max_len_b, "teacher": os.path.abspath(args.teacher),
            "data": os.path.abspath(args.data)}


def differences(old: dict, new: dict) -> str:
    if "splits" not in old:  # written before --splits: the train split alone, hashed under another name
        old = dict(old, splits=["train"], sources_sha256=old.get("train_sha256"))
    return ", ".join(f"{k} {old.get(k)!r} vs {new[k]!r}" for k in KEY_FIELDS if old.get(k) != new[k])


def out_state(out: str, key: dict):
    """('fresh' | 'finished' | 'resume', reason the directory cannot be used as it is or '')."""
    if not os.path.exists(out):
        return "fresh", ""
    for name, state, what in ((MANIFEST, "finished", "finished"), (os.path.join(PARTIAL, "run.json"), "resume",
                                                                    "partial")):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            with open(path) as f:
                diff = differences(json.load(f), key)
            return state, diff and f"--out {out} holds {what} teacher data made with other arguments ({diff})"
    if os.listdir(out):
        return "fresh", f"--out {out} exists and is not a makd-teacher-data directory"
    return "fresh", ""


def load_teacher(cfg, task, state):
    """The teacher as fairseq-generate loads it: the task builds it, fairseq loads the weights, inference mode."""
    import torch
    from fairseq import checkpoint_utils

    models, _ = checkpoint_utils.load_model_ensemble([cfg.common_eval.path], task=task, state=state)
    model = models[0].eval()
    if torch.cuda.is_available() and not cfg.common.cpu:
        model.cuda()
    model.prepare_for_inference_(cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def decode(cfg, task, model, split, ids, progress) -> dict:
    """{sentence id: the teacher's best hypothesis as token ids, EOS included} for sentences ``ids`` of ``split``."""
    import torch
    from fairseq import utils

    dataset = task.dataset(split)
    generator = task.build_generator([model], cfg.generation)
    order = sorted(ids, key=lambda i: -int(dataset.src_sizes[i]))  # similar lengths per batch: little padding
    eos, out = task.target_dictionary.eos(), {}
    for start in range(0, len(order), cfg.dataset.batch_size):
        sample = dataset.collater([dataset[i] for i in order[start:start + cfg.dataset.batch_size]])
        if next(model.parameters()).is_cuda:
            sample = utils.move_to_cuda(sample)
        with torch.no_grad():
            hypos = task.inference_step(generator, [model], sample)
        for i, nbest in zip(sample["id"].tolist(), hypos):
            tokens = nbest[0]["tokens"].int().cpu().tolist()
            out[i] = tokens if tokens and tokens[-1] == eos else tokens + [eos]  # an empty hypothesis is EOS alone
        progress.update(len(hypos))
    return out


def decode_shards(args, cfg, task, model, partial: str, split: str) -> dict:
    """All hypotheses for ``split``: those saved under ``partial`` by an earlier run, the rest decoded
    ``--shard-size`` sentences at a time, each shard saved as soon as it is done."""
    import glob

    from fairseq import utils
    from tqdm import tqdm

    dataset = task.dataset(split)
    n = len(dataset)
    max_src = utils.resolve_max_positions(task.max_positions(), model.max_positions())[0]
    hyps, unread = {}, 0
    for path in sorted(glob.glob(os.path.join(partial, f"{split}-shard-*.json"))):  # whatever shard size wrote them
        with open(path) as f:
            hyps.update({int(k): v for k, v in json.load(f).items()})
    if hyps:
        print(f"resuming: {len(hyps)} of {n} {split} sentences already decoded in {partial}", flush=True)
    with tqdm(total=n, initial=len(hyps), unit="sent", desc=f"makd-teacher-data {split}", file=sys.stderr,
              mininterval=1 if sys.stderr.isatty() else 30) as progress:
        for s in range(0, n, args.shard_size):
            e = min(s + args.shard_size, n)
            todo = [i for i in range(s, e) if i not in hyps]
            if not todo:
                continue
            # a source the teacher cannot read keeps its reference (fairseq-train skips such examples anyway)
            readable = [i for i in todo if dataset.src_sizes[i] <= max_src]
            shard = decode(cfg, task, model, split, readable, progress)
            shard.update({i: dataset.tgt[i].tolist() for i in todo if i not in shard})
            unread += len(todo) - len(readable)
            progress.update(len(todo) - len(readable))
            write_json(os.path.join(partial, f"{split}-shard-{s:09d}-{e:09d}.json"), shard)
            hyps.update(shard)
    if unread:
        logging.getLogger(__name__).warning(f"{unread} {split} sources are longer than the teacher reads "
                                            f"({max_src} tokens): they keep their reference targets")
    return hyps


def write_outputs(args, task, hyps: dict, key: dict, command: str, seconds: float) -> None:
    """BIN_KD's files: the decoded splits' targets from ``hyps`` ({split: {id: tokens}}), everything else copied; the
    manifest last (the 'done' mark)."""
    import torch
    from fairseq.data import indexed_dataset

    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    out = args.out
    for name in sorted(os.listdir(args.data)):  # dictionaries and the other splits as they are
        split = re.match(r"(train|valid|test)\d*\..+\.(bin|idx)$", name)
        if re.match(r"dict\..+\.txt$", name) or (split and split.group(1) not in hyps):
            copy_file(os.path.join(args.data, name), os.path.join(out, name))
    for split, split_hyps in hyps.items():
        n = 0
        for prefix in split_prefixes(args.data, split, src, tgt):  # sources unchanged, teacher targets
            base = os.path.basename(prefix)
            for ext in (".bin", ".idx"):
                copy_file(prefix + src + ext, os.path.join(out, base + src + ext))
            impl = indexed_dataset.infer_dataset_impl(prefix + tgt) or indexed_dataset.infer_dataset_impl(prefix + src)
            count = len(indexed_dataset.make_dataset(prefix + src, impl))
            target = os.path.join(out, base + tgt)
            with atomic(target + ".bin") as bin_path, atomic(target + ".idx") as idx_path:
                builder = indexed_dataset.make_builder(bin_path, impl, vocab_size=len(task.target_dictionary))
                for i in range(n, n + count):
                    builder.add_item(torch.IntTensor(split_hyps[i]))
                builder.finalize(idx_path)
            n += count
    write_json(os.path.join(out, MANIFEST), dict(
        key, sentences={split: len(h) for split, h in hyps.items()},
        hypothesis_tokens={split: sum(len(t) for t in h.values()) for split, h in hyps.items()}, command=command,
        decode_seconds=round(seconds, 1)))


def plan(args) -> dict:
    """The checks before any decoding (a ``TeacherDataError``/``CheckpointError``/``OSError`` with a one-line message)
    and what to do: {"state", "cfg", "task", "key", "reuse", "rebuild"} (reuse: BIN_KD already holds these outputs;
    rebuild: it holds other ones and --force was given)."""
    from .checkpoint import load_checkpoint

    if args.beam < 1 or args.batch_size < 1 or args.shard_size < 1:
        raise TeacherDataError("--beam, --batch-size and --shard-size must be >= 1")
    if not os.path.isdir(args.data):
        raise TeacherDataError(f"--data {args.data}: no such directory (binarize with fairseq-preprocess)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise TeacherDataError(f"--out {args.out} exists and is not a directory")
    if os.path.exists(args.out) and os.path.samefile(args.out, args.data):
        raise TeacherDataError(f"--out {args.out} is the --data directory itself; choose another path")
    state = load_checkpoint(args.teacher)
    encoder_decoder_check(state, args.teacher)
    cfg, task = build_task(args, state)
    task.check_dictionaries(state, args.teacher)
    key = run_key(args, sha256_of([args.teacher]), task)
    status, problem = out_state(args.out, key)
    if problem and not args.force:
        raise TeacherDataError(f"{problem}; pass --force to rebuild it")
    return {"state": state, "cfg": cfg, "task": task, "key": key, "reuse": status == "finished" and not problem,
            "rebuild": bool(problem)}


def make(args, p: dict, command: str):
    """Decode the ``--splits`` (resuming from BIN_KD/.partial) and write BIN_KD; returns ({split: {id: tokens}},
    decoding seconds)."""
    partial = os.path.join(args.out, PARTIAL)
    if p["rebuild"]:  # --force: our own state goes, files of the same names are overwritten, nothing else is touched
        shutil.rmtree(partial, ignore_errors=True)
        if os.path.isfile(os.path.join(args.out, MANIFEST)):
            os.remove(os.path.join(args.out, MANIFEST))
    os.makedirs(partial, exist_ok=True)
    write_json(os.path.join(partial, "run.json"), p["key"])
    started = time.time()
    cfg, task, model, hyps = p["cfg"], p["task"], None, {}
    for split in args.splits:
        task.load_dataset(split)
        if model is None:
            model = load_teacher(cfg, task, p.pop("state"))
        hyps[split] = decode_shards(args, cfg, task, model, partial, split)
    seconds = time.time() - started
    write_outputs(args, task, hyps, p["key"], command, seconds)
    shutil.rmtree(partial)
    return hyps, seconds
