"""The work directory of one benchmark run: its paths, its stages (logged subprocesses, reused when their output
exists, their times in WORK/stages.json), and the names of the models it trains."""
import functools
import importlib
import importlib.util
import json
import logging
import os
import re
import runpy
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from makd_fairseq.files import git_state, write_json

from .sizes import STUDENT_KINDS


def read_json(path, default):
    return json.load(open(path)) if os.path.isfile(path) else default


# With MAKD_BENCHMARKS_FORK=1 (the tests set it) a stage's command runs in a process forked from a server that has
# imported torch, fairseq and the plugin once, instead of in a new interpreter that pays those imports (~3 s) again.
FORK = "MAKD_BENCHMARKS_FORK"
PRELOAD = ("torch", "fairseq", "fairseq.options", "fairseq.checkpoint_utils", "fairseq.trainer",
           "fairseq.sequence_generator", "makd_fairseq", "makd_fairseq.score")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def entry_point(name):
    """``module:function`` of an installed console script (fairseq-train, makd-init), or None."""
    from importlib.metadata import entry_points

    found = list(entry_points(group="console_scripts", name=name))
    return found[0].value if found else None


def forkable(cmd):
    """(what runs ``cmd`` in a Python process, its ``sys.argv``): a console script's ``module:function`` or
    ``-m module`` for ``python -m module``; None for any other command (it runs as a subprocess)."""
    if cmd[0] == sys.executable and len(cmd) > 2 and cmd[1] == "-m":
        return "-m " + cmd[2], [cmd[2], *cmd[3:]]
    target = entry_point(os.path.basename(cmd[0]))
    return (target, list(cmd)) if target else None


SOCKET = "MAKD_FORK_SERVER"  # the fork server a forked command was forked from: its own commands go there too


class ForkServer:
    """A process that has imported ``PRELOAD`` and runs each command it is sent in a fork of itself (``serve``), as
    many at once as are sent, over a Unix socket; it ends when the process that started it does (its stdin closes)."""

    def __init__(self, env):
        self.path = os.path.join(tempfile.mkdtemp(prefix="makd-fork-"), "socket")
        self.proc = subprocess.Popen([sys.executable, "-c", "from benchmarks.runner import serve; serve()", self.path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"benchmarks: the fork server did not start ({self.proc.wait()})")


SERVERS, SERVERS_LOCK = {}, threading.Lock()  # this process's own fork servers, started on first use


def start_only(env):
    """What of ``env`` a process reads only when it starts (glibc's ``MALLOC_*`` tunables): a command whose
    environment sets them needs a server started with them (its forks inherit the allocator's settings)."""
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith("MALLOC_")))


def server_socket(env):
    """The socket of the fork server that runs a command with ``env``: the one this process was forked from (all
    the commands of a test share one server, a benchmark's stages included) when it was started with the same
    ``start_only`` settings, else one started here for them."""
    inherited = os.environ.get(SOCKET)
    if inherited and os.path.exists(inherited) and start_only(os.environ) == start_only(env):
        return inherited
    with SERVERS_LOCK:
        key = start_only(env)
        if key not in SERVERS:  # torch reads the thread count in the environment when the server imports it
            SERVERS[key] = ForkServer(env)
        return SERVERS[key].path


def forked(cmd, out, err=None, append=False, env=None, cwd=None):
    """Run ``cmd`` (strings) forked from a fork server, stdout into ``out`` and stderr into ``err`` (default: ``out``
    too); its exit code, or None if ``cmd`` is not a Python entry point (``forkable``) and did not run."""
    how = forkable(cmd)
    if not how:
        return None
    env = dict(os.environ if env is None else env)
    env[SOCKET] = server_socket(env)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(env[SOCKET])
        conn.sendall((json.dumps([*how, out, err or out, append, env, cwd or os.getcwd()]) + "\n").encode())
        reply = conn.makefile().readline()
    if not reply:
        raise RuntimeError(f"benchmarks: the fork server gave no exit code for {cmd[:3]}")
    return int(reply)


def captured(cmd, env=None, cwd=None, fork=None):
    """``subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)``, forked from a fork server when
    ``fork`` (default: MAKD_BENCHMARKS_FORK=1) and ``cmd`` is a Python entry point."""
    env = dict(os.environ if env is None else env)
    if os.environ.get(FORK) == "1" if fork is None else fork:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            rc = forked([str(c) for c in cmd], out, err, env=env, cwd=str(cwd or os.getcwd()))
            if rc is not None:
                with open(out, errors="replace") as o, open(err, errors="replace") as e:
                    return subprocess.CompletedProcess(cmd, rc, o.read(), e.read())
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)


def serve():
    """The fork server's loop (socket path in ``sys.argv[1]``): each connection sends one request line and gets the
    exit code of its command back; it runs in a fork that forks the command and waits for it, so the server takes the
    next connection at once and a command that dies by a signal still answers (with a negative code, as
    ``subprocess`` would). Ends when its stdin closes."""
    path = sys.argv[1]
    ready = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the imports print goes to stderr
    for name in PRELOAD:
        importlib.import_module(name)
    import torch

    # the children's thread count is read before any fork; this process never runs an OpenMP region
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    ready.write("ready\n")
    ready.close()
    while True:
        readable, _, _ = select.select([listener, 0], [], [], 1.0)
        while True:  # reap the connections that have finished
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if 0 in readable and not os.read(0, 4096):
            break
        if listener not in readable:
            continue
        conn, _ = listener.accept()
        sys.stdout.flush()  # nothing this process has buffered may reach a child's output
        sys.stderr.flush()
        if os.fork() == 0:  # the connection's process: forks the command, answers its exit code
            listener.close()
            request = json.loads(conn.makefile().readline())
            pid = os.fork()
            if pid == 0:  # the command's process never returns into this loop
                code = 1
                try:
                    conn.close()
                    code = run_forked(*request)
                except BaseException:  # noqa: B036  (setting up its output or directory failed)
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            conn.sendall(f"{os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}\n".encode())
            os._exit(0)
        conn.close()
    listener.close()
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def configures_logging_first(module):
    """Whether ``module`` sets up the root logger before it imports fairseq (fairseq_cli.train: its log goes to
    stdout). In a new interpreter that wins; here the server's import of fairseq has set the logger up already (a
    ``logging.basicConfig`` in fairseq's models), so the child clears it first."""
    source = open(importlib.util.find_spec(module).origin, encoding="utf-8").read()
    first = re.search(r"^(logging\.basicConfig\(|from fairseq\b|import fairseq\b)", source, re.M)
    return bool(first) and first.group(1).startswith("logging")


def run_forked(target, argv, out, err, append, env, cwd):
    """In a forked child: ``target`` as a new interpreter would run it (environment, directory, threads, warnings,
    stdin empty, stdout into ``out``, stderr into ``err``); its exit code as the interpreter would give it."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for std, path in ((1, out), (2, err)):
        if std == 2 and err == out:
            os.dup2(1, 2)
        else:
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644), std)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    import atexit
    import traceback

    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    if env.get("PYTHONWARNINGS") == "ignore":
        warnings.simplefilter("ignore")
    sys.argv = argv
    code = 0
    try:
        if target.startswith("-m "):
            runpy.run_module(target[3:], run_name="__main__", alter_sys=True)
        else:
            module, function = target.split(":")
            if module not in sys.modules and configures_logging_first(module):
                logging.root.handlers.clear()  # as in a new interpreter, where its basicConfig comes first
                logging.root.setLevel(logging.WARNING)
            sys.exit(getattr(importlib.import_module(module), function)())  # as a console script's wrapper does
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: B036  (what the interpreter prints for an uncaught exception)
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    return code


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
        # what produced this stage's output, recorded each time it starts (a resumed training adds a record)
        prov = log + ".provenance.json"
        write_json(prov, read_json(prov, []) + [
            {**git_state(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": cmd}])
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
