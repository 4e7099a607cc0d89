#!/usr/bin/env bash
# The side-by-side run of issue #11 on one GPU machine, in stages short enough for 10-minute calls:
#   bash benchmarks/gpu_compare.sh data prep ref          # corpus, tokenizer for both, validation rows, reference d12
#   bash benchmarks/gpu_compare.sh ours score table       # ours d12 with the same steps, score every checkpoint, the table
#   TAG=nosb ARGS="--no-smear --no-backout" bash benchmarks/gpu_compare.sh ours score table   # an ablation
#   bash benchmarks/gpu_compare.sh d20                    # ours d20, 10 steps (throughput); ARGS=--fp8 for FP8
#   bash benchmarks/gpu_compare.sh data prep refcache ours score table   # against a reference run kept from before
#   bash benchmarks/gpu_compare.sh data prep sweep        # the miniseries d4-d12 of `nanochat sweep` on this corpus
# `refscore` scores the reference's checkpoints and copies its scores and log to $OUT (keep them in
# benchmarks/results/ref_d12_160/); `refcache` copies them back from REFCACHE (default that folder: the reference's
# scores and log from an earlier call on the same corpus, whose `prep` printed the same valrows hash) instead of
# training the reference again.
# Needs: REF (default .refbench/ref) a reference nanochat checkout; MKDATA (default .refbench/mkdata.py) a script
# `MKDATA OUT_DIR CHARS` writing parquet shards with a text column (last = validation); wheels of the light
# dependencies the GPU image lacks in .whl/ (rustbpe, platformdirs, starlette, uvicorn). Logs and tables go to $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
REF=${REF:-$PWD/.refbench/ref}; MKDATA=${MKDATA:-$PWD/.refbench/mkdata.py}
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/rustbpe ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src
D=${DATA:-/tmp/data/code}; W=${WORK:-/tmp/cmp}; TAG=${TAG:-d_cmp}
CMP="python3 benchmarks/compare_reference.py --ref $REF --data $D --work $W --tok-chars 1e8 --eval-rows 1280"
for stage in "$@"; do t0=$(date +%s); echo "=== $stage $(date +%T)"
  case $stage in
    data) [ -f "$D/shard_00008.parquet" ] || python3 "$MKDATA" "$D" 700e6 > "$OUT/mkdata.log" 2>&1; tail -2 "$OUT/mkdata.log";;
    prep) $CMP tokenizer valrows 2>&1 | tee "$OUT/prep.log" | tail -5; sha256sum "$W/valrows.npy" | tee -a "$OUT/prep.log";;
    refscore) $CMP score-ref 2>&1 | tail -3; cp "$W/scores_ref.json" "$W/ref_train.log" "$OUT/";;
    refcache) C=${REFCACHE:-$PWD/benchmarks/results/ref_d12_160}; mkdir -p "$W"; cp "$C/scores_ref.json" "$C/ref_train.log" "$W/" && ls -l "$W/scores_ref.json";;
    sweep) NANOCHAT_HOME=$W/ours timeout "${T:-560}" python3 -m nanochat sweep miniseries --depths 4,6,8,10,12 --ratio "${RATIO:-1}" \
             --data "$D" --max-per-task "${CORE:-50}" --bpb-tokens 2097152 --measure-steps 0 > "$OUT/sweep.log" 2>&1
           tail -25 "$OUT/sweep.log"; cp "$W"/ours/sweeps/miniseries/*.csv "$W"/ours/sweeps/miniseries/*.png "$OUT/" 2>/dev/null;;
    ref) timeout "${T:-540}" $CMP train-ref 2>&1 | tail -5; cp "$W/ref_train.log" "$OUT/" 2>/dev/null;;
    ours) timeout "${T:-540}" $CMP --tag "$TAG" --ours-args="${ARGS:-}" train-ours 2>&1 | tail -5; cp "$W/ours_train_$TAG.log" "$OUT/" 2>/dev/null;;
    score) $CMP --tag "$TAG" score 2>&1 | tail -20;;
    table) $CMP --tag "$TAG" --ours-args="${ARGS:-}" table 2>&1 | tee "$OUT/table_$TAG.md";;
    d20) rm -rf "$W/ours/checkpoints/base/d20bench"  # each call a fresh run (--resume never refuses an old one)
         NANOCHAT_HOME=$W/ours timeout 330 python3 -m nanochat pretrain --depth 20 --data "$D" --num-iterations 10 --eval-every -1 ${ARGS:-} \
           --core-metric-every -1 --sample-every -1 --resume never --model-tag d20bench > "$OUT/ours_d20.log" 2>&1
         grep -E "^step|done|compile cache" "$OUT/ours_d20.log" | tail -5;;
    *) echo "unknown stage $stage (data prep ref refscore refcache ours score table d20 sweep)"; exit 2;;
  esac
  echo "--- $stage $(( $(date +%s) - t0 ))s"
done
