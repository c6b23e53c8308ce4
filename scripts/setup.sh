#!/usr/bin/env bash
# Set up makd-fairseq on a fresh machine: torch first (pinned), then the plugin and its dependencies.
# GPU users: install your CUDA build of torch first, then run with MAKD_KEEP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)  # where a local CPU wheel of torch lies
if [ -z "${MAKD_KEEP_TORCH:-}" ]; then
  # an unpinned torch would pull a multi-GB CUDA build on a CPU machine
  python3 -m pip install "${find_links[@]}" "torch==2.13.0"
fi
python3 -m pip install "${find_links[@]}" -e ".[test,benchmarks]"  # benchmarks: CTranslate2, tested too
python3 -c "import fairseq, torch, makd_fairseq; print('fairseq', fairseq.__version__, 'torch', torch.__version__, 'makd_fairseq', makd_fairseq.__version__)"
