#!/usr/bin/env bash
# Produces the tables in this folder: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to f32) on
# every benchmark, with limits a 2-core CPU can afford. Run from the repository root after
# scripts/setup.sh.
set -euo pipefail
H="${CARGO_TARGET_DIR:-target}/release/harness"
M="${DTM_CACHE:-$HOME/.cache/dtm}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT=results/smollm2-135m-instruct

"$H" score --model "$M" --data-dir ../shared/data \
  --tasks arc_challenge,openbookqa,race,truthfulqa_mc1,mmlu,gsm8k \
  --limit 20 --max-new-tokens 256 --batch-size 16 --output "$OUT/limit20"

"$H" score --model "$M" --data-dir ../shared/data \
  --tasks humaneval,mbpp \
  --limit 20 --max-new-tokens 256 --batch-size 16 --output "$OUT/limit20-code"

"$H" score --model "$M" --data-dir ../shared/data \
  --tasks bbh --limit 2 --max-new-tokens 256 --batch-size 16 --output "$OUT/bbh-limit2"
