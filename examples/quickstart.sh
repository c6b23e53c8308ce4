#!/usr/bin/env bash
# The main job on data this repository ships: no teacher of yours, no apt lists, no network.
#
#   bash examples/quickstart.sh [WORK_DIR]        # default /tmp/makd-quickstart; a few minutes on 2 CPU cores
#
# 1. binarizes the committed English->German Debian description excerpts (tests/fixtures/debian/translation:
#    400 train, 50 valid, 50 test pairs) with fairseq-preprocess;
# 2. trains a small Transformer teacher on them with fairseq-train;
# 3. runs makd-compress at 50% of the teacher's parameters (whitened low-rank init; word-level KD and plain
#    fine-tuning each trained until validation BLEU stops improving, the better kept; teacher and student decoded
#    and scored on test) and prints WORK_DIR/student/report.md, which says what the race chose.
# Tiny data, tiny models: the point is the pipeline, not the scores (the student, trained on from the teacher's
# weights for up to 600 more updates, can even pass the briefly trained teacher). Re-running reuses every step.
# Measured: 6 min 11 s on 2 cores while a benchmark ran beside it, before the race became makd-compress's default
# (at 618049a, with a 250-update race, the whole script took about 13 min beside two trainings); with the full race,
# the default since 2026-12-05 (both racers to their stop, 600 updates each here), 8 min 46 s at 1c4b19d with
# OMP_NUM_THREADS=1 beside two one-thread trainings.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/makd-quickstart}
fixtures=$root/tests/fixtures/debian/translation
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$work"
if [ ! -f "$work/bin/dict.en.txt" ]; then
  echo "== data: $work/bin"
  fairseq-preprocess --source-lang en --target-lang de --trainpref "$fixtures/train" --validpref "$fixtures/valid" \
    --testpref "$fixtures/test" --destdir "$work/bin" --joined-dictionary --nwordssrc 1000 --workers 2 > /dev/null
fi
if ! grep -qs "done training in" "$work/teacher.log"; then
  echo "== teacher: fairseq-train, 2+2 layers, d=64 (log: $work/teacher.log)"
  fairseq-train "$work/bin" --user-dir "$root/makd_fairseq" --arch transformer --share-all-embeddings \
    --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 64 --decoder-embed-dim 64 \
    --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256 --encoder-attention-heads 4 --decoder-attention-heads 4 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --optimizer adam --adam-betas '(0.9, 0.98)' \
    --lr 0.003 --lr-scheduler inverse_sqrt --warmup-updates 100 --dropout 0.1 --max-tokens 2048 --max-update 400 \
    --validate-interval 1000000 --validate-interval-updates 100 --save-interval 1000000 --save-interval-updates 100 \
    --no-epoch-checkpoints --save-dir "$work/teacher" --cpu --seed 1 --num-workers 0 --log-format simple \
    --log-interval 100 >> "$work/teacher.log" 2>&1
  grep "valid on" "$work/teacher.log" | tail -n 1 | sed 's/.*| valid on/teacher: valid on/' 
fi
echo "== makd-compress at 50%"
makd-compress --teacher "$work/teacher/checkpoint_best.pt" --data "$work/bin" --param-budget 0.5 \
  --out "$work/student" --metric bleu --remove-bpe none --max-tokens 2048 --batch-size 32 --max-update 600 --quiet
