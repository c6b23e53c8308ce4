"""Commands run in a fork of a process that has imported torch, fairseq and the plugin once (a fork server),
instead of in a new interpreter that pays those imports (~3 s) again: what the tests and the benchmarks start, and
the fairseq commands makd-compress starts when MAKD_BENCHMARKS_FORK=1. Output, files and exit code are a
subprocess's."""
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
import warnings

# With MAKD_BENCHMARKS_FORK=1 (the tests set it) a stage's command runs in a process forked from a server that has
# imported torch, fairseq and the plugin once, instead of in a new interpreter that pays those imports (~3 s) again.
FORK = "MAKD_BENCHMARKS_FORK"
PRELOAD = ("torch", "fairseq", "fairseq.options", "fairseq.checkpoint_utils", "fairseq.trainer",
           "fairseq.sequence_generator", "makd_fairseq", "makd_fairseq.score")


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
        # started in the current directory: a forked command changes to its own, where `-c`'s sys.path entry ('')
        # finds its modules as a new interpreter started there would
        self.proc = subprocess.Popen([sys.executable, "-c", "from makd_fairseq.forking import serve; serve()",
                                      self.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
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


def streamed(cmd, on_line, env=None, cwd=None, fork=None, poll=0.2):
    """Run ``cmd``, calling ``on_line`` with each line of its output (stdout and stderr together) as it comes; its
    exit code. Forked from a fork server as ``captured`` decides, the lines read from its output file as it grows."""
    env = dict(os.environ if env is None else env)
    if (os.environ.get(FORK) == "1" if fork is None else fork) and forkable(cmd):
        with tempfile.TemporaryDirectory() as tmp:
            out, ended = os.path.join(tmp, "output"), {}
            open(out, "w").close()

            def run():
                try:
                    ended["rc"] = forked([str(c) for c in cmd], out, env=env, cwd=str(cwd or os.getcwd()))
                except BaseException as e:  # noqa: B036  (raised here, after the output read so far)
                    ended["error"] = e

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            pending = ""
            with open(out, errors="replace") as f:
                while True:
                    running = thread.is_alive()  # before the read: what it wrote before ending is read below
                    chunk = f.read()
                    *lines, pending = (pending + chunk).split("\n")
                    for line in lines:
                        on_line(line + "\n")
                    if not running:
                        break
                    if not chunk:
                        thread.join(poll)
            if pending:
                on_line(pending)
            if "error" in ended:
                raise ended["error"]
            return ended["rc"]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, env=env, cwd=cwd)
    for line in proc.stdout:
        on_line(line)
    return proc.wait()


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
