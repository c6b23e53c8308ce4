#!/usr/bin/env bash
# The quality benchmark on the Debian descriptions, both tasks, one command:
#
#   bash benchmarks/quality.sh cpu /tmp/qb      # 2 cores: about 2 hours (CPU teacher 3+3 x 128, 1k vocabulary)
#   bash benchmarks/quality.sh gpu /data/qb     # one GPU: Transformer-base teacher, full data, 8k vocabulary
#
# Prepares WORK/data once (prepare.py; the same seed gives the same data hash), then runs benchmarks/quality.py
# for summarization and translation with every method at 50% and 25%. Results: benchmarks/results/<task>.{json,md,png}
# (OUT_DIR=... to write them elsewhere). Re-running resumes: finished steps in WORK are reused.
set -euo pipefail
size=${1:?usage: quality.sh cpu|gpu WORK_DIR} work=${2:?usage: quality.sh cpu|gpu WORK_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT_DIR:-$root/benchmarks/results}
case $size in
  cpu) prep=(--spm-vocab 1000 --max-source-words 120) jobs=$(nproc) ;;
  gpu) prep=(--spm-vocab 8000) jobs=1 ;;
  *) echo "quality.sh: size must be cpu or gpu, got $size" >&2; exit 2 ;;
esac
[ -f "$work/data/manifest.json" ] || python3 "$root/examples/debian_descriptions/prepare.py" --out "$work/data" "${prep[@]}"
for task in summarization translation; do
  python3 "$root/benchmarks/quality.py" --task "$task" --data "$work/data/$task/bin" --size "$size" \
    --work "$work/$task" --jobs "$jobs" --out "$out/$task.json"
done
