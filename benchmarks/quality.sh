#!/usr/bin/env bash
# The quality benchmark on the Debian descriptions, one command:
#
#   bash benchmarks/quality.sh cpu /tmp/qb      # 2 cores, many hours (students train to convergence, up to 3,000
#                                               # updates; seq-KD decodes each train split once): 3 tasks, resumable
#   bash benchmarks/quality.sh gpu /data/qb     # one GPU: Transformer-base teachers, full data, 8k vocabulary
#
# Prepares WORK/data once (prepare.py; the same seed gives the same data hash), then runs benchmarks/quality.py per
# task with every method at 50% and 25%: on cpu the three tasks side by side (one job each, so the teachers'
# single-process training overlaps), on gpu one after the other. Results: benchmarks/results/<task>.{json,md,png}
# (OUT_DIR=... to write them elsewhere); logs: WORK/<task>.log. Re-running resumes: finished steps are reused.
set -euo pipefail
size=${1:?usage: quality.sh cpu|gpu WORK_DIR} work=${2:?usage: quality.sh cpu|gpu WORK_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT_DIR:-$root/benchmarks/results}
case $size in
  cpu) prep=(--spm-vocab 1000 --max-source-words 120) ;;
  gpu) prep=(--spm-vocab 8000) ;;
  *) echo "quality.sh: size must be cpu or gpu, got $size" >&2; exit 2 ;;
esac
[ -f "$work/data/manifest.json" ] || python3 "$root/examples/debian_descriptions/prepare.py" --out "$work/data" "${prep[@]}"
[ -d "$work/data/language_modeling/bin" ] || python3 "$root/examples/debian_descriptions/prepare_lm.py" --prepared "$work/data"

run_task() {  # TASK SIZE
  python3 "$root/benchmarks/quality.py" --task "$1" --data "$work/data/$1/bin" --size "$2" --work "$work/$1" \
    --out "$out/$1.json" > "$work/$1.log" 2>&1 || { echo "quality.sh: $1 failed, see $work/$1.log" >&2; return 1; }
  tail -n 20 "$work/$1.log" | grep '^|'
}
if [ "$size" = cpu ]; then
  run_task summarization cpu & a=$!
  run_task translation cpu & b=$!
  run_task language_modeling lm_cpu & c=$!
  status=0
  for pid in $a $b $c; do wait "$pid" || status=1; done
  exit $status
fi
run_task summarization gpu
run_task translation gpu  # decoder-only: no GPU preset yet (sizes.py has lm_smoke and lm_cpu)
