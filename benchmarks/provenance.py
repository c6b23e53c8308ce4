"""Where a benchmark result comes from (commit, machine, command), and writing results without half files."""
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def git_state() -> dict:
    """The commit and whether the work tree differs from it (tracked files): what a result was produced by."""
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"commit": git_commit(), "dirty": bool(dirty)}


def hardware(detail: str) -> str:
    """The processor and core count, then ``detail`` (how the benchmark used them)."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {detail}"


def command(script: str, argv=None) -> str:
    """The command line that reproduces a run of ``script``, relative to the repository root."""
    return " ".join([os.path.relpath(script, ROOT), *(argv if argv is not None else sys.argv[1:])])


def write_atomic(path: str, text: str) -> None:
    """Write through a temporary file: a run stopped half-way never leaves a truncated result at ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
