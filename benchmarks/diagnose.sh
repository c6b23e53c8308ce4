#!/usr/bin/env bash
# Issue 34's diagnosis, on validation only, with the teachers of benchmarks/results (not retrained):
#
#   bash benchmarks/diagnose.sh WORK [translation|summarization] [STAGE,...]   # default: translation, every stage
#   DIAG_JOBS=1 bash benchmarks/diagnose.sh WORK translation &    # the two tasks side by side on 2 cores,
#   DIAG_JOBS=1 bash benchmarks/diagnose.sh WORK summarization &  # one training of one thread each
#
# Resumable. DIAG_JOBS (default 2): trainings run at once by this call, one thread each. STAGEs run in the order
# given (default candidates,long,variants: what decides the recipe and the rerun's cap before the ablations).
# 1. WORK/data: prepare.py's data from the apt lists of 2026-11-29 (benchmarks/offline_data.sh); refused when the
#    lists' sha256 differ from benchmarks/results/data_manifest.json's inputs (another split: the teachers would not fit).
# 2. WORK/teachers/TASK.pt: the run's teacher, from git history (1f2f84e:benchmarks/run_state/TASK/teacher/).
# 3. candidates: the recipes item 2 chooses between, at the standard cap (3,000) on the long runs' validation grid
#    (every 250 updates, patience 4), stopping and choosing on the metric: makd, word_kd_t1 (word KD at T 1, CE + KL,
#    the better word-KD setting on en→de) and kd_alpha_0.1 (0.9·CE + 0.1·KL, the closest to plain fine-tuning on
#    en→de); on summarization svd_ce too, at the standard cap before its long run (en→de's is its long run's).
# 4. long: (a, b) svd_ce, word_kd_t1 and makd at 50%, seed 1, trained as long as their teacher (cap 15,000, the same
#    grid: the teachers' rule), stopping and choosing on the task's metric; every validation's nll and metric kept:
#    one curve answers both the checkpoint choice and the training length. Each goes on from its candidates-stage
#    training (--extend). en→de's long svd_word_kd (T 2, weight 4, the old setting) stopped at 3,000 updates when the
#    long stage changed to word_kd_t1 and is reported as it stands.
# 5. variants: (c, d) the KD-target and aspect variants (benchmarks/sizes.py DIAGNOSIS_METHODS) at the standard cap.
#    standard (not in the default): the methods of DIAG_METHODS (comma-separated; default svd_ce, the candidates and
#    the variants) at the standard cap in one pool: a machine with as many cores as trainings, e.g. a GPU's.
# 6. benchmarks/results/diagnosis.{json,md,png} from every curve so far (python3 -m benchmarks.diagnosis), the
#    committed report's students kept (DIAG_REPORT, default benchmarks/results/diagnosis.json; "none": not kept).
# DIAG_DEVICE=cuda trains the students on the GPU (benchmarks.quality --device cuda; the cpu size's fp32 recipe) in
# WORK/TASK.cuda: other students than the CPU's, reported as such.
# Nothing is decoded on test. Re-running resumes every training from its checkpoint_last.pt.
set -euo pipefail
usage="usage: diagnose.sh WORK [translation|summarization] [STAGE,... of candidates, long, variants, standard]"
work=${1:?$usage} task=${2:-translation} stages=${3:-candidates,long,variants} jobs=${DIAG_JOBS:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
device=${DIAG_DEVICE:-cpu} report=${DIAG_REPORT:-$root/benchmarks/results/diagnosis.json}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
case $task in translation|summarization) ;; *) echo "diagnose.sh: task must be translation or summarization" >&2; exit 2 ;; esac
IFS=, read -r -a stages <<< "$stages"
for stage in "${stages[@]}"; do
  case $stage in candidates|long|variants|standard) ;;
    *) echo "diagnose.sh: a stage is candidates, long, variants or standard, got '$stage'" >&2; exit 2 ;; esac
done
case $jobs in [1-9]|[1-3][0-9]) ;; *) echo "diagnose.sh: DIAG_JOBS must be 1 to 39, got $jobs" >&2; exit 2 ;; esac
case $device in cpu) suffix= ;; cuda) suffix=.cuda ;; *) echo "diagnose.sh: DIAG_DEVICE is cpu or cuda, got $device" >&2; exit 2 ;; esac
case $report in none) report= ;; *) [ -f "$report" ] || { echo "diagnose.sh: DIAG_REPORT $report: no such file" >&2; exit 2; } ;; esac
# shellcheck source=benchmarks/offline_data.sh
source "$root/benchmarks/offline_data.sh"
offline_data "$work"
teacher=$(run_teacher "$work" "$task")

quality() {  # NAME [benchmarks.quality flags]
  local name=$1
  shift
  python3 -m benchmarks.quality --task "$task" --data "$work/data/$task/bin" --size cpu --teacher "$teacher" \
    --budgets 0.5 --seeds 1 --select-on metric --validation-only --jobs "$jobs" --threads 1 --device "$device" \
    --work "$work/$task$suffix" --out "$work/$task.$name$suffix.json" "$@" >> "$work/$task.$name$suffix.log" 2>&1 \
    || { echo "diagnose.sh: $task $name failed, see $work/$task.$name$suffix.log" >&2; return 1; }
}
# the standard cap's students in WORK/TASK, the long ones in WORK/TASK.long; every stage on one validation grid
case $task in
  translation) candidates=(makd word_kd_t1 kd_alpha_0.1) ;;
  summarization) candidates=(svd_ce makd word_kd_t1 kd_alpha_0.1) ;;
esac
variants=(kd_alpha_0.5 makd_no_model kd_select_0.5 kd_top8 makd_no_layer makd_no_matrix makd_anneal makd_aspects_0.3)
IFS=, read -r -a standard <<< "${DIAG_METHODS:-svd_ce,$(IFS=,; echo "${candidates[*]},${variants[*]}")}"
for stage in "${stages[@]}"; do
  case $stage in
    candidates) quality candidates --methods "${candidates[@]}" --stopping 3000 250 4 ;;
    variants) quality variants --methods "${variants[@]}" --stopping 3000 250 4 ;;
    standard) quality standard --methods "${standard[@]}" --stopping 3000 250 4 ;;
    long) quality long --methods svd_ce word_kd_t1 makd --stopping 15000 250 4 --work "$work/$task.long$suffix" \
            --extend "$work/$task$suffix" ;;
  esac
done
shopt -s nullglob  # the other task's results may not exist yet: its students so far are read from their logs
python3 -m benchmarks.diagnosis ${report:+"$report"} "$work"/{translation,summarization}.*.json \
  $(for w in "$work"/{translation,summarization}{,.long}{,.cuda}; do
      if [ -d "$w" ]; then t=$(basename "$w"); echo --in-progress "${t%%.*}=$w"; fi; done) \
  --out "$root/benchmarks/results/diagnosis"
