"""A command for the fork server's test (``python -m tests.fork_probe``), run forked by ``benchmarks.runner.forked``.

    meet MINE THEIRS   create MINE, then wait (at most 60 s) for THEIRS: exit 0 if it came, 3 if not
    socket OUT         write the fork server this process was forked from (MAKD_FORK_SERVER) into OUT
    nest OUT           run ``socket OUT.inner`` forked from here, then ``socket OUT``
    startenv NAME OUT  write NAME's value in the environment this process's program started with (/proc/self/environ:
                       a fork's is its server's) into OUT, or nothing if it was not set
"""
import os
import sys
import time

from benchmarks.runner import SOCKET, forked

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
if mode == "nest":
    code = forked([sys.executable, "-m", "tests.fork_probe", "socket", paths[0] + ".inner"], paths[0] + ".log")
    if code != 0:
        sys.exit(code)
with open(paths[0], "w") as f:
    f.write(os.environ[SOCKET])
