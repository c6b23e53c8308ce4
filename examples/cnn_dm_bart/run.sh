#!/usr/bin/env bash
# BART summarization benchmark on one GPU:
#   bash examples/cnn_dm_bart/run.sh DATA_BIN TEACHER.pt WORK_DIR ENCODER_JSON VOCAB_BPE \
#       [more benchmarks.quality flags]
set -euo pipefail
data=$1 teacher=$2 work=$3 encoder=$4 vocab=$5
shift 5
root=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # python3 -m benchmarks.quality from anywhere
python3 -m benchmarks.quality --task summarization --data "$data" --size bart --teacher "$teacher" \
  --work "$work" --budgets 0.5 0.35 --remove-bpe none --batch-size 32 --out "$work/cnn_dm.json" \
  --generate-args "--beam 4 --lenpen 2.0 --min-len 55 --max-len-b 140 --no-repeat-ngram-size 3 --bpe gpt2 \
--gpt2-encoder-json $encoder --gpt2-vocab-bpe $vocab" "$@"
