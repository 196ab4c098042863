#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the main job on a real model:
#   1. fetches the pinned, hash-checked SmolLM2-135M-Instruct, the all-MiniLM-L6-v2 sentence encoder,
#      WASI CPython and OpenBLAS (the CPU's matrix products; optional, only speed) into ~/.cache/dtm
#   2. builds the workspace in release (the harness binary and the benchmark plugins)
#   3. runs the main job, briefly: SmolLM2 scored on five items of four benchmarks (runs/demo/)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-models.sh smollm2
scripts/fetch-models.sh minilm
if [ -x scripts/fetch-python-wasm.sh ]; then scripts/fetch-python-wasm.sh; fi
scripts/fetch-openblas.sh

cargo build --workspace --release
target_dir="${CARGO_TARGET_DIR:-target}"
model="${DTM_CACHE:-$HOME/.cache/dtm}/models/SmolLM2-135M-Instruct.Q4_1.gguf"

echo "== main job: SmolLM2-135M-Instruct on a few items of four benchmarks"
"$target_dir/release/harness" list --data-dir ../shared/data
"$target_dir/release/harness" score --model "$model" --data-dir ../shared/data \
  --tasks arc_challenge,mmlu:astronomy,gsm8k,humaneval --limit 5 --max-new-tokens 128 --output runs/demo
cat runs/demo/results.md
