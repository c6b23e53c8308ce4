#!/usr/bin/env bash
# IWSLT'14 de-en quality benchmark on one GPU:
#   bash examples/iwslt14_de_en/run.sh DATA_BIN WORK_DIR [more benchmarks.quality flags]
set -euo pipefail
data=$1 work=$2
shift 2
root=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # python3 -m benchmarks.quality from anywhere
python3 -m benchmarks.quality --task translation --data "$data" --size iwslt --work "$work" \
  --remove-bpe "@@ " --out "$work/iwslt14_de_en.json" "$@"
