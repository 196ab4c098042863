#!/usr/bin/env bash
# Throughput benchmarks (run from the repository root after scripts/setup.sh, on an idle machine).
set -euo pipefail
T="${CARGO_TARGET_DIR:-target}/release"
M="${DTM_CACHE:-$HOME/.cache/dtm}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
# Request engine: 24 four-choice questions after one five-shot preamble, with and without prefix
# reuse, and 8 greedy generations of 32 tokens.
"$T/harness" bench --model "$M" --questions 24 --generations 8 --new-tokens 32 > results/bench/harness-bench-smollm2.json
# Sandbox: the 164 canonical HumanEval programs, in wasmtime (2 jobs) vs native python3 subprocesses.
cargo run --release -p dtm-sandbox --example bench_humaneval > results/bench/sandbox-humaneval.txt 2>&1
