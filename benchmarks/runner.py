"""The work directory of one benchmark run: its paths, its stages (logged subprocesses, reused when their output
exists, their times in WORK/stages.json), and the names of the models it trains."""
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from makd_fairseq.files import git_state, write_json
from makd_fairseq.forking import FORK, forked

from .sizes import STUDENT_KINDS


def read_json(path, default):
    return json.load(open(path)) if os.path.isfile(path) else default


def record_start(log, cmd):
    """What produced ``log``'s training, recorded in LOG.provenance.json each time it starts (a resumed training adds
    a record): the commit, whether the tree differed from it, the time and the command."""
    prov = log + ".provenance.json"
    write_json(prov, read_json(prov, []) + [
        {**git_state(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": cmd}])


class Run:
    """The work directory ``args.work`` of one run; every subprocess it starts gets ``args.threads`` threads."""

    def __init__(self, args):
        self.args, self.work = args, args.work
        self.stages_path = os.path.join(self.work, "stages.json")
        self.stages = read_json(self.stages_path, {})
        self.lock = threading.Lock()  # --jobs threads finish stages concurrently
        self.env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                        PYTHONWARNINGS="ignore")
        self.fork = os.environ.get(FORK) == "1"

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def execute(self, cmd, log, append):
        """Run ``cmd`` with stdout and stderr into ``log``; its exit code."""
        rc = forked(cmd, log, append=append, env=self.env) if self.fork else None
        if rc is not None:
            return rc
        with open(log, "a" if append else "w") as f:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env).returncode

    def stage(self, name, cmd, log, done, resumes=False):
        """Run ``cmd`` (output to ``log``) unless ``done()`` already holds; record its time. A stage that ``resumes``
        its own work (fairseq-train continues from its checkpoint_last.pt) adds to its log, so that the log keeps
        every validation of every start; any other stage starts its log afresh."""
        if done():
            return
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        record_start(log, cmd)
        start = time.time()
        rc = self.execute([str(c) for c in cmd], log, resumes)
        if rc != 0 or not done():
            with open(log) as f:
                tail = f.read()[-3000:]
            raise SystemExit(f"benchmarks: {name} failed (exit {rc}); the end of {log}:\n{tail}")
        with self.lock:
            # another command on this WORK (quality --partial while the run goes on) may have recorded stages
            # since this one read the file: keep them
            self.stages = {**self.stages, **read_json(self.stages_path, {}), name: round(time.time() - start, 1)}
            write_json(self.stages_path, self.stages)

    def pool(self, fn, stages):
        """``fn(*stage)`` for every stage, ``args.jobs`` at once; the first failure is raised."""
        with ThreadPoolExecutor(self.args.jobs) as ex:
            for f in [ex.submit(fn, *s) for s in stages]:
                f.result()


def student_paths(run, budget):
    """{kind: the initial student of ``sizes.STUDENT_KINDS`` at ``budget``} and the budget's folder (``b50``)."""
    key = f"b{round(budget * 100)}"
    return {kind: run.path(key, f"{kind}.pt") for kind in STUDENT_KINDS}, key


def seeds_of(args, budget):
    """The seeds a budget's students train with: every ``--seeds`` at ``--seeded-budgets``, else the first."""
    return list(args.seeds) if any(abs(budget - b) < 1e-9 for b in args.seeded_budgets) else list(args.seeds[:1])


def model_name(method, budget, seed=None):
    """``teacher``, ``b50/makd`` or ``b50/makd/seed1``: a model's name in logs, stages and results."""
    name = method if budget is None else f"b{round(budget * 100)}/{method}"
    return name if seed is None else f"{name}/seed{seed}"


def first_seed(models, method, budget):
    """The smallest seed of ``method`` at ``budget`` among ``models`` (method, budget, seed, checkpoint); None if
    untrained."""
    return min((s for m, b, s, _ in models if (m, b) == (method, budget) and s is not None), default=None)
