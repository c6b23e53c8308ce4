#!/usr/bin/env bash
# Distill a trained Debian-descriptions teacher into a low-rank student with MaKD, on CPU.
#
#   bash examples/debian_descriptions/distill.sh DATA_BIN TEACHER.pt SAVE_DIR [BUDGET] [UPDATES] [fairseq-train flags...]
#
# DATA_BIN: fairseq-preprocess output of prepare.py (OUT/summarization/bin or OUT/translation/bin);
# BUDGET: student parameters as a fraction of the teacher's (default 0.5); UPDATES: default 2000.
# Validation every 250 updates; the json log is SAVE_DIR/train.log. DEVICE (default --cpu) picks the device
# flags: DEVICE=--fp16 on a GPU.
set -euo pipefail
data=$1 teacher=$2 save=$3 budget=${4:-0.5} updates=${5:-2000}
shift $(( $# < 5 ? $# : 5 ))
mkdir -p "$save"
student=$save/student_init.pt
[ -e "$student" ] || makd-init --teacher "$teacher" --param-budget "$budget" --init whiten --data "$data" \
  --out "$student" | tail -n 4
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# the fairseq-train command distilling the student (task, teacher, arch; the student brings its shape), then ours
mapfile -t cmd < <(python3 -m makd_fairseq.student "$data" "$teacher" "$student" --criterion makd \
  --optimizer adam --adam-betas '(0.9, 0.98)' --lr 0.0005 --lr-scheduler inverse_sqrt --warmup-updates 100 \
  --clip-norm 1.0 --dropout 0.1 --max-tokens 6000 --max-update "$updates" ${DEVICE:---cpu} --seed 1 \
  --truncate-source --max-source-positions 256 --skip-invalid-size-inputs-valid-test \
  --validate-interval-updates 250 --save-interval-updates 250 --keep-interval-updates 1 --no-epoch-checkpoints \
  --num-workers 0 --log-format json --log-interval 50 --save-dir "$save" "$@")
[ ${#cmd[@]} -gt 0 ] || { echo "distill.sh: no fairseq-train command for $student" >&2; exit 2; }
"${cmd[@]}" 2>&1 | tee -a "$save/train.log"
