"""Where a benchmark result comes from: the machine and the command (the commit: ``makd_fairseq.files.git_state``)."""
import os
import platform
import sys


def hardware(detail: str) -> str:
    """The processor and core count, then ``detail`` (how the benchmark used them)."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {detail}"


def command(module: str, argv=None) -> str:
    """The command line that reproduces a run of the script ``module`` (e.g. ``benchmarks.quality``), run from the
    repository root."""
    return " ".join(["python3", "-m", module, *(argv if argv is not None else sys.argv[1:])])
