"""Shared fixtures: real data (committed Debian DDTP excerpts), a teacher trained by fairseq-train.

Everything runs through the real fairseq CLIs on tiny sizes so the whole suite stays on 2 cores.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import makd_fairseq  # noqa: F401  (users import it too: it allow-lists checkpoint types)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "debian"
USER_DIR = str(ROOT / "makd_fairseq")

# the teacher's shape; a student trained with fairseq-train repeats these flags
TINY_ARCH = [
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
    "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
    "--share-all-embeddings",
]
TRAIN_COMMON = [
    "--cpu", "--seed", "1", "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "2048",
    "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
    "--num-workers", "0", "--no-progress-bar",
]


# The files that take longest, longest first. xdist's loadfile mode starts files in order of their number of tests,
# which left these few-test files to the end and one worker idle for minutes; starting them first lets the two workers
# finish together. The first two files go one to each worker: the second needs no fixture teacher, so that its worker
# does not wait while the first trains it. Seconds of one file (--durations of the whole suite, -n 2, nothing else
# running, at 1e820b6): validation_metric 124, benchmarks 109, quality_benchmark 102, lm 77, teacher_data 68,
# quality_seeds 67, student 42, distributed 41, compress 33, debian_data 28, makd_criterion 27, resume 23,
# latent_cache 21, training_path 21, diagnosis 16; the rest under 16.
LONGEST_FIRST = ("test_benchmarks.py", "test_quality_benchmark.py", "test_validation_metric.py",
                 "test_quality_seeds.py", "test_lm.py", "test_student.py", "test_distributed.py",
                 "test_teacher_data.py", "test_compress.py", "test_debian_data.py", "test_makd_criterion.py",
                 "test_resume.py", "test_latent_cache.py", "test_training_path.py", "test_diagnosis.py")


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from collections import OrderedDict

    from xdist.scheduler import LoadFileScheduling

    class LongestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            if not getattr(self, "_longest_first", False):  # the queue is complete at the first assignment
                rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
                order = sorted(self.workqueue, key=lambda scope: rank.get(Path(scope).name, len(rank)))
                self.workqueue = OrderedDict((scope, self.workqueue[scope]) for scope in order)
                self._longest_first = True
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


def forks(args):
    """Whether ``run`` forks ``args`` from a process that has imported fairseq and the plugin
    (``makd_fairseq.forking.forked``): the commands that import the plugin anyway (makd-*, a fairseq CLI given
    ``--user-dir``) and the benchmarks; the others (a plain fairseq CLI, ``python -m makd_fairseq.cli.X``) start a
    new interpreter, as a user's would."""
    name = os.path.basename(args[0])
    return name.startswith("makd-") or (name.startswith("fairseq-") and "--user-dir" in args) or (
        args[0] == sys.executable and args[1:2] == ["-m"] and args[2].startswith("benchmarks."))


def run(*args, check=True, cwd=None):
    """Run a CLI; on failure show its output (the assertion message is all a CI log keeps). A benchmark it starts
    runs its stages' commands forked from a process that has imported fairseq once (``makd_fairseq.forking.FORK``)."""
    from makd_fairseq.forking import captured

    args = [str(a) for a in args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MAKD_BENCHMARKS_FORK="1")
    proc = captured(args, env=env, cwd=cwd, fork=forks(args))
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def makd_init(*args, check=True, process=False):
    """makd-init with these arguments: in this process (its ``main``; what a test checks is the command, not the
    process start), or with ``process=True`` as a real ``python -m makd_fairseq.cli.init`` subprocess."""
    if process:
        return run(sys.executable, "-m", "makd_fairseq.cli.init", *args, check=check)
    import contextlib
    import io

    from makd_fairseq.cli.init import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's errors
            code = e.code if isinstance(e.code, int) else 2
    proc = subprocess.CompletedProcess(["makd-init", *map(str, args)], code or 0, out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"makd-init exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def shared(tmp_path_factory, name, build):
    """A directory ``build(dir)`` fills once per test run, shared by every pytest-xdist worker (the first to take
    the lock builds it; the others wait and reuse it), so each fixture teacher is trained once per run."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's directory, above the workers' own
    path = base / "shared" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / ".built").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(path)
            (path / ".built").touch()
    return path


@pytest.fixture(scope="session")
def mt_data(tmp_path_factory):
    """English->German Debian descriptions, binarized by fairseq-preprocess (joined dictionary)."""
    src = FIXTURES / "translation"
    return shared(tmp_path_factory, "mt", lambda d: run(
        "fairseq-preprocess", "--source-lang", "en", "--target-lang", "de",
        "--trainpref", src / "train", "--validpref", src / "valid", "--testpref", src / "test",
        "--destdir", d / "bin", "--joined-dictionary", "--nwordssrc", "1000", "--workers", "1")) / "bin"


@pytest.fixture(scope="session")
def other_vocab_data(tmp_path_factory):
    """The summarization fixture: another vocabulary than the teacher's."""
    src = FIXTURES / "summarization"
    return shared(tmp_path_factory, "sum", lambda d: run(
        "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", src / "train",
        "--validpref", src / "valid", "--destdir", d / "bin", "--joined-dictionary", "--nwordssrc", "1000",
        "--workers", "1")) / "bin"


@pytest.fixture(scope="session")
def teacher(mt_data, tmp_path_factory):
    """A small Transformer teacher trained by fairseq-train (once per test run); returns its checkpoint path."""
    return shared(tmp_path_factory, "teacher", lambda d: run(
        "fairseq-train", mt_data, "--arch", "transformer", *TINY_ARCH, *TRAIN_COMMON,
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-update", "60", "--save-dir", d)) / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def full_rank_student(teacher, tmp_path_factory):
    return shared(tmp_path_factory, "student_full", lambda d: makd_init(
        "--teacher", teacher, "--rank-ratio", "1.0", "--out", d / "student.pt")) / "student.pt"


@pytest.fixture(scope="session")
def half_student(teacher, tmp_path_factory):
    return shared(tmp_path_factory, "student_half", lambda d: makd_init(
        "--teacher", teacher, "--param-budget", "0.5", "--out", d / "student.pt")) / "student.pt"


def load(path, data):
    """(model in eval mode, task) through fairseq's own loader, as fairseq-generate does."""
    import makd_fairseq  # noqa: F401
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides={"data": str(data)}
    )
    return models[0].eval(), task


def valid_batch(task, split="valid", max_sentences=16):
    task.load_dataset(split)
    itr = task.get_batch_iterator(task.dataset(split), max_sentences=max_sentences).next_epoch_itr(shuffle=False)
    return next(iter(itr))


def batch_of(task, ids, split="valid"):
    """The collated batch of the given examples of a loaded split."""
    ds = task.dataset(split)
    return ds.collater([ds[i] for i in ids])


def per_token(criterion, model, sample):
    """(each logged component per target token, the loss, the sample size) of one criterion call."""
    from makd_fairseq.criterions.makd import COMPONENTS

    loss, sample_size, log = criterion(model, sample)
    return {k: log[k].item() / sample_size for k in COMPONENTS}, loss, sample_size
