#!/usr/bin/env bash
# One prepared check for a lent GPU machine (under 8 minutes): the speed benchmark in fp16 and a short fp16
# MaKD training that must stay finite and lower its loss. Results land in $OUT (default ./gpu_out):
#   speed_gpu.json / speed_gpu.md, speed_shapes_gpu.json / .md (iwslt and wmt shapes), fp16_train.log, gpu_check.json
#   (pass/fail of each check).
# Needs torch with CUDA and fairseq-fixed already installed (the device has no network): scripts/setup.sh with
# MAKD_KEEP_TORCH=1 beforehand. Data: a Debian prepare.py output in $DATA if given (e.g. .../summarization/bin),
# else the committed fixtures, binarized here. MAKD_GPU_CHECK_CPU=1 runs the same steps on CPU (a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
work=$(mktemp -d)
python3 -c "import fairseq, torch, makd_fairseq; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ -n "${MAKD_GPU_CHECK_CPU:-}" ]; then device=(--cpu); bench=(); else device=(--fp16); bench=(--fp16); fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

data=${DATA:-}
if [ -z "$data" ]; then
  data=$work/bin
  fx=tests/fixtures/debian/summarization
  fairseq-preprocess --source-lang src --target-lang tgt --trainpref $fx/train --validpref $fx/valid \
    --testpref $fx/test --destdir "$data" --joined-dictionary --nwordssrc 1000 --workers 4 > "$work/prep.log"
fi

# a teacher (speed size: 3+3 layers, d=256), briefly trained: speed does not depend on the weights
python3 -m benchmarks.train_teacher --data "$data" --size speed --save-dir "$work/teacher" -- \
  --max-update 100 --max-tokens 4096 "${device[@]}" --log-format simple > "$work/teacher.log" 2>&1
teacher=$work/teacher/checkpoint_last.pt

# 1. speed benchmark (fixtures: budgets the small vocabulary allows)
# (a timeout must not cost the training check below: its status is recorded, the script goes on)
timeout 420 python3 -m benchmarks.speed --data "$data" --teacher "$teacher" --work "$work/speed" \
  --out "$OUT/speed_gpu.json" --threads "$OMP_NUM_THREADS" --steps 10 --repeats 2 "${bench[@]}" \
  --budgets 0.5 0.25 | tail -n 30 || echo "speed benchmark: exit status $?" | tee "$OUT/speed_gpu.failed"

# 1b. generation at the iwslt and wmt shapes (random-weight teachers, forced lengths), fp16 on the GPU
timeout 240 python3 -m benchmarks.speed --data "$data" --teacher "$teacher" --work "$work/speed" --parts \
  --shapes iwslt wmt --shape-threads "$OMP_NUM_THREADS" --repeats 2 "${bench[@]}" --budgets 0.5 0.25 \
  --out "$OUT/speed_shapes_gpu.json" | tail -n 12 || echo "shapes: exit status $?" | tee "$OUT/speed_shapes_gpu.failed"

# 2. fp16 MaKD training: 200 updates, every logged value finite, loss falls
DEVICE="${device[*]}" bash examples/debian_descriptions/distill.sh "$data" "$teacher" "$work/distill" 0.5 200 \
  --log-format json --log-interval 10 --validate-interval-updates 100 > /dev/null
cp "$work/distill/train.log" "$OUT/fp16_train.log"
python3 - "$OUT" <<'PY'
import json, math, re, sys
out = sys.argv[1]
logs = [json.loads(m) for m in re.findall(r"\| train_inner \| (\{.*\})", open(f"{out}/fp16_train.log").read())]
losses = [float(x["loss"]) for x in logs]
finite = all(math.isfinite(float(v)) for x in logs for k, v in x.items() if k.startswith("loss"))
result = {"updates_logged": len(logs), "first_loss": losses[0], "last_loss": losses[-1],
          "all_finite": finite, "loss_falls": losses[-1] < losses[0]}
json.dump(result, open(f"{out}/gpu_check.json", "w"), indent=1)
print(json.dumps(result))
sys.exit(0 if finite and result["loss_falls"] else 1)
PY
