# RL that learns at d12 (issue #16): pretrain d12 briefly on a text corpus, fine-tune it on the packaged
# conversations (`sft --data demo`), then RL on DemoArith with held-out pass@1 before and after.
# usage, from the repository root on the GPU machine:
#   DATA=/path/to/parquet/folder bash benchmarks/gpu_rl_d12.sh      (DATA=demo works too, for a smoke run)
# Knobs (env): DEPTH=12 PT_STEPS=150 SFT_STEPS=200 RL_STEPS=100 EXTRA="" (extra flags for every stage, e.g.
# "--device cpu" together with DEPTH=2 for a CPU smoke run). Logs go to $OUT (default /tmp/rl-d12-out).
# What to look for (printed last): the RL done line, "pass@1 <before> before RL, <after> after".
set -euo pipefail
OUT=${OUT:-/tmp/rl-d12-out}; mkdir -p "$OUT"
DEPTH=${DEPTH:-12}; PT_STEPS=${PT_STEPS:-150}; SFT_STEPS=${SFT_STEPS:-200}; RL_STEPS=${RL_STEPS:-100}; EXTRA=${EXTRA:-}
NC=${NC:-python3 -m nanochat}
TAG=rl$DEPTH
stage() {  # name, then the command's arguments: runs it, logs it, prints the lines that matter and the time
  local name=$1; shift; local t0; t0=$(date +%s)
  # shellcheck disable=SC2086
  $NC "$@" $EXTRA > "$OUT/$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$OUT/$name.log"; exit 1; }
  grep -E "^done|val bpb|pass@1|warning" "$OUT/$name.log" | tail -4
  echo "--- $name $(( $(date +%s) - t0 ))s"
}
stage pretrain pretrain --depth "$DEPTH" --data "${DATA:?set DATA to a parquet folder or demo}" --num-iterations "$PT_STEPS" \
  --eval-every "$PT_STEPS" --core-metric-every -1 --sample-every -1 --resume never --model-tag "$TAG" ${PT_ARGS:-}
# short conversations: many small steps (a d12 run's default batch would be a few steps an epoch)
stage sft sft --data demo --model-tag "$TAG" --num-iterations "$SFT_STEPS" --total-batch-size "${SFT_BATCH:-65536}" \
  --device-batch-size "${SFT_ROWS:-32}" --eval-every -1 --resume never ${SFT_ARGS:-}
# the demo's RL recipe (train/speedrun.py DEMO) at issue #15's shape: 8 problems x 16 samples a step
stage rl rl --task demo-arith --model-tag "$TAG" --num-iterations "$RL_STEPS" --examples-per-step 8 --num-samples 16 \
  --device-batch-size 16 --max-new-tokens 24 --init-lr-frac 0.08 --embedding-lr 0 --unembedding-lr 0 \
  --eval-every "$RL_STEPS" --eval-examples "${RL_EVAL:-200}" --save-every -1 --resume never ${RL_ARGS:-}
grep -E "^step" "$OUT/rl.log" | tail -3
