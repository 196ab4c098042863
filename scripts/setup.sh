#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the main job on a real model:
#   1. fetches the pinned, hash-checked SmolLM2-135M-Instruct and WASI CPython into ~/.cache/dtm
#   2. builds the workspace in release (the harness binary and the benchmark plugins)
#   3. runs a short harness job on SmolLM2
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-models.sh smollm2
if [ -x scripts/fetch-python-wasm.sh ]; then scripts/fetch-python-wasm.sh; fi

cargo build --workspace --release
target_dir="${CARGO_TARGET_DIR:-target}"
model="${DTM_CACHE:-$HOME/.cache/dtm}/models/SmolLM2-135M-Instruct.Q4_1.gguf"

echo "== main job: SmolLM2-135M-Instruct"
"$target_dir/release/harness" generate --model "$model" --text "The capital of France is" --max-new-tokens 12
"$target_dir/release/harness" bench --model "$model" --questions 8 --generations 2 --new-tokens 16
