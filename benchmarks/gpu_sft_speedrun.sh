# SFT and speedrun on a GPU machine (no network needed): run from the repository root with
#   bash benchmarks/gpu_sft_speedrun.sh            # one GPU
#   NPROC=2 bash benchmarks/gpu_sft_speedrun.sh    # also the torchrun path of sft (2 GPUs)
# What to look for: every step exits 0; bench_sft's sft tok/s close to pretraining's at the same shapes;
# the demo speedrun's total time (printed last) and an answer from `nanochat chat`.
set -euo pipefail
. benchmarks/gpu_setup.sh
export NANOCHAT_HOME="$(mktemp -d)"
python3 -m pytest -q tests/test_sft.py tests/test_speedrun.py
python3 benchmarks/bench_sft.py --depth 12 --steps 40
time python3 -m nanochat speedrun --demo --device cuda --nproc 1
python3 -m nanochat chat -p "Who are you?" --temperature 0 --max-tokens 40
if [ "${NPROC:-1}" -gt 1 ]; then
  python3 -m nanochat sft --data demo --model-tag demo --out-tag demo-ddp --num-iterations 40 --eval-every 20 --nproc "$NPROC" --no-load-optimizer
fi
