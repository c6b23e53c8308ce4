#!/usr/bin/env bash
# Issue 34's rerun (item 4): the quality benchmark under the protocol the diagnosis chose, with the committed teachers
# (not retrained):
#
#   bash benchmarks/rerun.sh WORK translation|summarization [TEACHER.pt NAME]
#   RERUN_JOBS=1 bash benchmarks/rerun.sh WORK translation &     # the two tasks side by side on 2 cores,
#   RERUN_JOBS=1 bash benchmarks/rerun.sh WORK summarization &   # one training of one thread each
#   RERUN_PARTIAL=1 bash benchmarks/rerun.sh WORK TASK           # score what has finished training so far
#   RERUN_DEVICE=cuda RERUN_METHODS="makd" RERUN_SEEDS="2" ...   # some trainings, elsewhere (benchmarks/lease.sh)
#   RERUN_PATIENCE=4 bash benchmarks/rerun.sh WORK TASK          # the first protocol's patience (results/rerun/TASK.*),
#                                                                # whose trainings the protocol's go on from (--extend)
#
# Protocol (docs/benchmarks.md, "The rerun"): every student stops and is chosen on the task's validation metric (BLEU
# / ROUGE-L of beam-search hypotheses, every 250 updates), with the teachers' cap of 15,000 updates and patience 8
# validations (first 4, the diagnosis's grid; five of the six summarization students of CE and word KD went on
# improving after their patience-4 stop, and the pre-declared validation rule of docs/benchmarks.md, "A longer
# patience, measured", adopted 8). A patience other than 4 has its own work and results (WORK/rerun/TASK.patienceP,
# results under benchmarks/results/rerun/patienceP/), and its trainings go on from the patience-4 run's where that
# has finished them (--extend: the same updates up to that stop; finish a begun patience-4 training first). Methods:
# svd_ce, svd_word_kd (CE + KL at T 1), svd_seq_kd, makd, makd_seq_kd, dense_sft_kd, and the raced recipes
# word_kd_race_full (makd-compress's default: the full race), word_kd_race (the short race) and makd_race; 50% with
# seeds 1, 2, 3 (in that order: every method's seed 1 first), 25% with seed 1 (not with a second teacher: 50% only).
# Data and teacher: benchmarks/offline_data.sh (the run's teacher from git history); TEACHER.pt NAME: another
# teacher (e.g. NAME replicate), its run in WORK/rerun/TASK.NAME and benchmarks/results/rerun/NAME/. The students train
# in WORK/rerun/ (not WORK/TASK: diagnose.sh's trainings of the same names under another protocol live there).
# Results: benchmarks/results/rerun/[NAME/]TASK.{json,md,png} and hypotheses/TASK/. Resumable in WORK; on another
# machine the seeds already in that results file are taken over (benchmarks.quality --reuse: same teacher, data and
# protocol), so a session can commit what finished (RERUN_PARTIAL=1) and the next one go on from there.
set -euo pipefail
usage="usage: rerun.sh WORK translation|summarization [TEACHER.pt NAME]"
work=${1:?$usage} task=${2:?$usage} other=${3:-} name=${4:-} jobs=${RERUN_JOBS:-2} patience=${RERUN_PATIENCE:-8}
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
case $task in translation|summarization) ;; *) echo "rerun.sh: task must be translation or summarization" >&2; exit 2 ;; esac
case $jobs in [1-9]|[1-3][0-9]) ;; *) echo "rerun.sh: RERUN_JOBS must be 1 to 39, got $jobs" >&2; exit 2 ;; esac
case $patience in [4-9]|[1-9][0-9]) ;; *) echo "rerun.sh: RERUN_PATIENCE must be 4 to 99 (the protocol's: 8), got $patience" >&2; exit 2 ;; esac
# another patience: its own work and results (rerun/TASK[.NAME].patienceP, results/rerun/[NAME/]patienceP/)
variant=$name
[ "$patience" = 4 ] || variant=${variant:+$variant/}patience$patience
if [ -n "$other" ]; then
  [ -f "$other" ] || { echo "rerun.sh: teacher $other: no such file" >&2; exit 2; }
  case $name in [a-z]*) ;; *) echo "rerun.sh: a second teacher needs a NAME (letters first), e.g. replicate" >&2; exit 2 ;; esac
fi
# shellcheck source=benchmarks/offline_data.sh
source "$root/benchmarks/offline_data.sh"
offline_data "$work"
teacher=${other:-$(run_teacher "$work" "$task")}
out=$root/benchmarks/results/rerun${variant:+/$variant}
mkdir -p "$out"
results=$out/$task.json
# a subset of the trainings (RERUN_METHODS / RERUN_SEEDS / RERUN_BUDGETS, e.g. on a lent GPU: benchmarks/lease.sh)
# writes its results beside its work directory, never over the committed file of every method
every="svd_ce svd_word_kd svd_seq_kd makd makd_seq_kd dense_sft_kd word_kd_race makd_race word_kd_race_full"
read -r -a methods <<< "${RERUN_METHODS:-$every}"
read -r -a seeds <<< "${RERUN_SEEDS:-1 2 3}"
# a second teacher is for the 50% comparisons only (issue 34: an interval per teacher at 50%)
budgets_default="0.5 0.25"
[ -z "$other" ] || budgets_default=0.5
read -r -a budgets <<< "${RERUN_BUDGETS:-$budgets_default}"
base=$work/rerun/$task${name:+.$name}
run=$base
[ "$patience" = 4 ] || run=$base.patience$patience
[ -n "${RERUN_METHODS:-}${RERUN_SEEDS:-}${RERUN_BUDGETS:-}" ] && results=$run.subset.json
flags=(--task "$task" --data "$work/data/$task/bin" --size cpu --teacher "$teacher" --budgets "${budgets[@]}"
       --seeds "${seeds[@]}" --seeded-budgets 0.5 --select-on metric --stopping 15000 250 "$patience" --jobs "$jobs"
       --threads 1 --work "$run" --out "$results" --device "${RERUN_DEVICE:-cpu}" --methods svd_only "${methods[@]}")
[ -f "$results" ] && flags+=(--reuse "$results")
[ -n "${RERUN_PARTIAL:-}" ] && flags+=(--partial)
# a higher patience goes on from the patience-4 run's trainings where they stopped (a training not finished there
# starts afresh: finish those first); without a patience-4 run every training starts afresh
[ "$run" = "$base" ] || [ ! -d "$base" ] || flags+=(--extend "$base")
log=$run.log
mkdir -p "$work/rerun"
python3 -m benchmarks.quality "${flags[@]}" >> "$log" 2>&1 || { echo "rerun.sh: $task failed, see $log" >&2; exit 1; }
tail -n 40 "$log" | grep '^|' || true
