#!/usr/bin/env bash
# Some of the rerun's trainings on a machine held for a while (a lent GPU), handed back as tar files that the rerun's
# own machine unpacks and goes on from (benchmarks/carry.py; docs/benchmarks.md, "Trainings begun on a lent GPU"):
#
#   bash benchmarks/lease.sh WORK OUT SECONDS TASK:METHODS:SEEDS[:BUDGETS] ...
#   bash benchmarks/lease.sh /work/w "$OUT" 520 translation:makd:2 summarization:makd,svd_seq_kd:2
#
# Each TASK runs benchmarks/rerun.sh WORK TASK with RERUN_DEVICE=${LEASE_DEVICE:-cuda} and only those trainings
# (METHODS, SEEDS and BUDGETS comma-separated; BUDGETS default 0.5), all at once, under the protocol's patience
# (RERUN_PATIENCE as rerun.sh reads it: its work directory RUN is WORK/rerun/TASK.patience8, or WORK/rerun/TASK for
# RERUN_PATIENCE=4). WORK must hold the rerun's data (WORK/data), its teachers (WORK/teachers: git history may not
# travel) and its initial students (RUN/b50/svd.pt, dense.pt and their logs), carried from the rerun's machine at the
# same path, so that every start of a seed begins from the same weights. SECONDS after the start (or once all have
# finished) the trainings are stopped and `python3 -m benchmarks.carry pack RUN OUT/TASK` writes what they reached.
# Then, on the rerun's machine: python3 -m benchmarks.carry unpack RUN OUT/TASK/*.tar
set -uo pipefail
usage="usage: lease.sh WORK OUT SECONDS TASK:METHODS:SEEDS[:BUDGETS] ..."
work=${1:?$usage} out=${2:?$usage} seconds=${3:?$usage}
shift 3
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
case $seconds in ''|*[!0-9]*) echo "lease.sh: SECONDS must be a whole number, got $seconds" >&2; exit 2 ;; esac
[ -f "$work/data/manifest.json" ] || { echo "lease.sh: $work/data/manifest.json: no rerun data in WORK" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
patience=${RERUN_PATIENCE:-8}  # rerun.sh's default
suffix=; [ "$patience" = 4 ] || suffix=.patience$patience
start=$(date +%s) groups=() tasks=()
for spec in "$@"; do
  IFS=: read -r task methods seeds budgets <<< "$spec"
  case $task in translation|summarization) ;; *) echo "lease.sh: $spec: task must be translation or summarization" >&2; exit 2 ;; esac
  [ -n "$methods" ] && [ -n "$seeds" ] || { echo "lease.sh: $spec: name the methods and seeds (TASK:METHODS:SEEDS)" >&2; exit 2; }
  read -r -a m <<< "${methods//,/ }"
  read -r -a s <<< "${seeds//,/ }"
  read -r -a b <<< "${budgets//,/ }"
  [ ${#b[@]} -gt 0 ] || b=(0.5)
  mkdir -p "$out/$task" "$work/rerun"
  RERUN_DEVICE=${LEASE_DEVICE:-cuda} RERUN_METHODS="${m[*]}" RERUN_SEEDS="${s[*]}" RERUN_BUDGETS="${b[*]}" \
    RERUN_JOBS=$(( ${#m[@]} * ${#s[@]} * ${#b[@]} )) \
    setsid bash "$root/benchmarks/rerun.sh" "$work" "$task" > "$work/rerun/$task.lease.log" 2>&1 &
  groups+=($!) tasks+=("$task")
done
while [ $(( $(date +%s) - start )) -lt "$seconds" ]; do
  running=0
  for g in "${groups[@]}"; do kill -0 "$g" 2>/dev/null && running=1; done
  [ $running = 1 ] || break
  sleep 5
done
for g in "${groups[@]}"; do kill -TERM -- -"$g" 2>/dev/null; done
sleep 3
for g in "${groups[@]}"; do kill -KILL -- -"$g" 2>/dev/null; done
echo "lease.sh: stopped after $(( $(date +%s) - start )) s"
for task in $(printf '%s\n' "${tasks[@]}" | sort -u); do
  (cd "$root" && python3 -m benchmarks.carry pack "$work/rerun/$task$suffix" "$out/$task")
  # the logs in one file per task (what comes back from a lent machine may be limited in files)
  (cd "$work/rerun" && tar -cf "$out/$task/logs.tar" "$task$suffix.log" "$task.lease.log" 2>/dev/null)
done
