"""Writing results without half files, and where they came from: the one copy of each for the CLIs and benchmarks.

Every file a command produces is written through ``atomic`` (a temporary name, then ``os.replace``): a run stopped
half-way leaves either the old file or the new one, never a truncated one.
"""

import json
import os
import shutil
import subprocess
from contextlib import contextmanager

USER_DIR = os.path.dirname(os.path.abspath(__file__))  # what fairseq's --user-dir takes
ROOT = os.path.dirname(USER_DIR)  # the checkout (or site-packages) this package lies in


@contextmanager
def atomic(path: str):
    """Yields a temporary path beside ``path``; on a clean exit it replaces ``path``, on an error it is removed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    with atomic(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    with atomic(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path: str, value) -> None:
    write_text(path, json.dumps(value, indent=1))


def copy_file(src: str, dst: str) -> None:
    with atomic(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_torch(state, path: str) -> None:
    import torch

    with atomic(path) as tmp:
        torch.save(state, tmp)


def git_commit() -> str:
    """The commit of the checkout this package runs from ('unknown (not a git checkout)' for an installed copy)."""
    proc = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown (not a git checkout)"


def git_state() -> dict:
    """The commit and whether tracked files differ from it: what a result was produced by."""
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"commit": git_commit(), "dirty": bool(dirty)}
