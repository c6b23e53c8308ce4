"""A command for the fork server's test (``python -m tests.fork_probe``), run forked by
``makd_fairseq.forking.forked``.

    meet MINE THEIRS   create MINE, then wait (at most 60 s) for THEIRS: exit 0 if it came, 3 if not
    socket OUT         write the fork server this process was forked from (MAKD_FORK_SERVER) into OUT
    nest OUT           run ``socket OUT.inner`` forked from here, then ``socket OUT``
    startenv NAME OUT  write NAME's value in the environment this process's program started with (/proc/self/environ:
                       a fork's is its server's) into OUT, or nothing if it was not set
    lines N CODE       print N lines, one every 0.3 s, to stdout and stderr in turn (the last without its newline);
                       exit CODE
"""
import os
import sys
import time

from makd_fairseq.forking import SOCKET, forked

mode, *paths = sys.argv[1:]
if mode == "meet":
    open(paths[0], "w").close()
    deadline = time.time() + 60
    while not os.path.exists(paths[1]) and time.time() < deadline:
        time.sleep(0.05)
    sys.exit(0 if os.path.exists(paths[1]) else 3)
if mode == "startenv":
    started = dict(v.split(b"=", 1) for v in open("/proc/self/environ", "rb").read().split(b"\0") if b"=" in v)
    with open(paths[1], "w") as f:
        f.write(started.get(paths[0].encode(), b"").decode())
    sys.exit(0)
if mode == "lines":
    n, code = map(int, paths)
    for i in range(n):
        print(f"line {i}", file=(sys.stdout, sys.stderr)[i % 2], end="\n" if i < n - 1 else "", flush=True)
        time.sleep(0.3)
    sys.exit(code)
if mode == "nest":
    code = forked([sys.executable, "-m", "tests.fork_probe", "socket", paths[0] + ".inner"], paths[0] + ".log")
    if code != 0:
        sys.exit(code)
with open(paths[0], "w") as f:
    f.write(os.environ[SOCKET])
