#!/usr/bin/env bash
# Issue 34's remaining trainings for one task, in the order they are wanted, each resumable: run it again after any
# stop (a session's end, a lost machine once benchmarks/run_state is restored) and it goes on where WORK left off.
#
#   (nohup bash benchmarks/chain.sh WORK translation   > WORK/../chain_translation.log   2>&1 &)
#   (nohup bash benchmarks/chain.sh WORK summarization > WORK/../chain_summarization.log 2>&1 &)
#
# 1. the replicate teacher (the run's recipe, seed 2; "already trained" once it has stopped),
# 2. its 50% students, CE and word KD, seeds 1-3 (results/rerun/replicate/patience8/, a subset file until the rest),
# 3. every training of the run's teacher (results/rerun/patience8/),
# 4. the replicate's other 50% students (seq-KD, makd, makd_seq_kd, the dense student; the races), its whole file.
# One thread per job: the two tasks' chains share two cores (two jobs of two threads slow each other ~5x). Start it
# from a clean tree and leave the tree alone while it runs: bash reads its scripts as it goes.
set -euo pipefail -x
usage="usage: chain.sh WORK translation|summarization"
work=${1:?$usage} task=${2:?$usage}
case $task in translation|summarization) ;; *) echo "chain.sh: task must be translation or summarization" >&2; exit 2 ;; esac
[ -f "$work/data/manifest.json" ] || { echo "chain.sh: $work has no data: run offline_data first (benchmarks/offline_data.sh)" >&2; exit 2; }
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$(dirname "$0")/.."
teacher=$work/teachers_replicate/$task
python3 -m benchmarks.train_teacher --data "$work/data/$task/bin" --size cpu --save-dir "$teacher" -- --seed 2 \
  > "$work/train_teacher_$task.out" 2>&1
RERUN_METHODS="svd_ce svd_word_kd" RERUN_SEEDS="1 2 3" RERUN_JOBS=1 \
  bash benchmarks/rerun.sh "$work" "$task" "$teacher/checkpoint_best.pt" replicate
RERUN_JOBS=1 bash benchmarks/rerun.sh "$work" "$task"
RERUN_JOBS=1 bash benchmarks/rerun.sh "$work" "$task" "$teacher/checkpoint_best.pt" replicate
