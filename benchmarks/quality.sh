#!/usr/bin/env bash
# The quality benchmark on the Debian descriptions, one command:
#
#   bash benchmarks/quality.sh cpu /tmp/qb      # 2 cores, many hours (students train to convergence, up to 3,000
#                                               # updates; seq-KD decodes each train split once): 3 tasks, resumable
#   bash benchmarks/quality.sh gpu /data/qb     # one GPU: Transformer-base teachers, full data, 8k vocabulary
#
# Prepares WORK/data once (prepare.py; the same seed gives the same data hash), then runs benchmarks.quality per
# task with every method at 50% (seeds 1, 2, 3) and 25% (seed 1): on cpu summarization and translation side by side
# (one job each), the language model (seed 1) on the core of whichever finishes first; on gpu one after the other.
# Then, with nothing else running, each task once more with --time-generation: every model's generation is timed
# one at a time (the rest is reused).
# Results: benchmarks/results/<task>.{json,md,png} and hypotheses/<task>/ (OUT_DIR=... to write them elsewhere);
# logs: WORK/<task>.log. Re-running resumes: finished steps are reused. On another machine (WORK lost), REUSE=DIR
# takes over the trained seeds of DIR/<task>.json and DIR/hypotheses/<task>/ (--reuse) once each retrained
# teacher writes that run's teacher hypotheses byte for byte; prepare the data from the same apt lists (--lists-dir).
set -euo pipefail
size=${1:?usage: quality.sh cpu|gpu WORK_DIR} work=${2:?usage: quality.sh cpu|gpu WORK_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # python3 -m benchmarks.quality from anywhere
out=${OUT_DIR:-$root/benchmarks/results}
case $size in
  cpu) prep=(--spm-vocab 1000 --max-source-words 120) ;;
  gpu) prep=(--spm-vocab 8000) ;;
  *) echo "quality.sh: size must be cpu or gpu, got $size" >&2; exit 2 ;;
esac
[ -f "$work/data/manifest.json" ] || python3 "$root/examples/debian_descriptions/prepare.py" --out "$work/data" "${prep[@]}"
[ -d "$work/data/language_modeling/bin" ] || python3 "$root/examples/debian_descriptions/prepare_lm.py" --prepared "$work/data"

run_task() {  # TASK SIZE [benchmarks.quality flags]
  local task=$1 tsize=$2
  shift 2
  [ -n "${REUSE:-}" ] && [ -f "$REUSE/$task.json" ] && set -- --reuse "$REUSE/$task.json" "$@"
  python3 -m benchmarks.quality --task "$task" --data "$work/data/$task/bin" --size "$tsize" \
    --work "$work/$task" --out "$out/$task.json" "$@" >> "$work/$task.log" 2>&1 \
    || { echo "quality.sh: $task failed, see $work/$task.log" >&2; return 1; }
  tail -n 30 "$work/$task.log" | grep '^|'
}
if [ "$size" = cpu ]; then
  # two jobs of one thread: the language model (one seed) takes the core of whichever task finishes first
  run_task summarization cpu &
  run_task translation cpu &
  status=0
  wait -n || status=1
  run_task language_modeling lm_cpu --seeds 1 || status=1
  wait -n || status=1
  [ $status = 0 ] || exit $status
  run_task summarization cpu --time-generation
  run_task translation cpu --time-generation
  exit 0
fi
run_task summarization gpu
run_task translation gpu  # decoder-only: no GPU preset yet (benchmarks/sizes.py has lm_smoke and lm_cpu)
run_task summarization gpu --time-generation
run_task translation gpu --time-generation
