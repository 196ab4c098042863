#!/usr/bin/env bash
# LoRA training-step speed and peak memory: `trainer bench` against PyTorch + PEFT on the same
# model (SmolLM2-135M-Instruct, float32, CPU, both cores), batch 4 x 512 tokens, best and median
# of 5 steps after a warm-up. Run on an idle machine.
#
#   results/bench/train.sh [VENV] > results/bench/train.txt
#
# VENV: a Python venv with torch, transformers, peft (default /work/venv); the HF folder for
# PyTorch is made from the same GGUF by `harness convert` (our converter; its log-probs equal the
# GGUF path's, see harness tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${1:-/work/venv}"
target="${CARGO_TARGET_DIR:-target}"
gguf="${DTM_CACHE:-$HOME/.cache/dtm}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
hf="${DTM_CACHE:-$HOME/.cache/dtm}/models/SmolLM2-135M-Instruct-hf"
cargo build --release -q -p dtm-trainer -p dtm-harness
[ -f "$hf/config.json" ] || "$target/release/harness" convert --model "$gguf" --output "$hf"
echo "machine: $(nproc) cores, $(grep 'model name' /proc/cpuinfo | head -1 | cut -d: -f2 | xargs), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
steps="${STEPS:-5}"
for round in 1 2; do
  echo "== round $round: dtm trainer bench"
  "$target/release/trainer" bench --model "$hf" --batch-size 4 --seq-len 512 --steps "$steps"
  echo "== round $round: torch + peft"
  "$venv/bin/python" results/bench/lora_step_torch.py "$hf" --batch-size 4 --seq-len 512 --steps "$steps"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
