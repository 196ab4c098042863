#!/usr/bin/env bash
# Issue #14's speed table, every row measured side by side in one run, printed as ratios.
#
#   results/bench/compare.sh > results/bench/compare.txt      (from anywhere; ~15-25 min)
#
# Rows (SmolLM2-135M-Instruct, the same weights in float32 on every f32 side, this machine's cores):
#   * ARC-Challenge, first 100 test items, 0-shot, and MMLU 5-shot on 3 subjects x 20 items:
#     lm-eval (HFLM, transformers, torch CPU) vs `harness score` (built-in plugins, same prompts
#     per shared/docs/PROTOCOL.md): whole-command wall time, and the scoring phase alone (lm-eval:
#     `evaluator.evaluate`; harness: the task's wall_seconds in results.json); also whether both
#     picked the same answer on every item.
#   * positions computed per second while scoring (padding included on both sides).
#   * greedy generation, the first 8 GSM8K test questions as `Q: {question}\nA:` (the protocol's
#     GSM8K prompt with 0 shots), <= 128 new tokens, stop `Q:` `</s>` `<|im_end|>`: transformers
#     `generate` at batch 1 and 8, llama.cpp (llama-cpp-python, the GGUF's own 4-bit weights,
#     2 threads) at batch 1, `harness score --tasks gsm8k` at batch 1 and 8 (and with
#     `--quantized` when this harness has that flag: the GGUF's quantised compute path).
#   * HumanEval: the 164 canonical programs, sandbox vs one native python3 subprocess each, 2 jobs
#     (`cargo run -p dtm-sandbox --example bench_humaneval`).
# With DTM_BLAS=off in the environment the harness runs on candle's matmul instead of OpenBLAS
# (what the BLAS path gives). Each timing is the best of DTM_COMPARE_REPEAT runs (default 2). Ratios are written so that
# > 1 means the harness is faster.
#
# The reference tools live in a throwaway venv, made on first use (pinned: torch 2.15.0,
# transformers 5.24.0, lm-eval 0.4.13 with accelerate 1.15.0; llama-cpp-python 0.3.36 has no prebuilt wheel and builds
# from source, ~10 min on 2 cores: DTM_COMPARE_LLAMA=0 skips it and its row).
#
# Env: DTM_COMPARE_VENV (default $DTM_CACHE/venv-compare), DTM_COMPARE_REPEAT, DTM_COMPARE_LLAMA,
# DTM_CACHE (default ~/.cache/dtm; the GGUF is models/SmolLM2-135M-Instruct.Q4_1.gguf there, from
# scripts/fetch-models.sh), DTM_DATA_DIR (default ../shared/data), CARGO_TARGET_DIR (default target).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
CACHE="${DTM_CACHE:-$HOME/.cache/dtm}"
VENV="${DTM_COMPARE_VENV:-$CACHE/venv-compare}"
REPEAT="${DTM_COMPARE_REPEAT:-2}"
DATA="${DTM_DATA_DIR:-$ROOT/../shared/data}"
GGUF="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
HF="$CACHE/models/SmolLM2-135M-Instruct-hf"
T="${CARGO_TARGET_DIR:-target}/release"
REF="$ROOT/results/bench/compare_ref.py"
MMLU_SUBJECTS=(abstract_algebra anatomy astronomy)
HARNESS_BATCH=8
LMEVAL_ARC_BATCH=64 # lm-eval's faster setting on ARC in issue #14 (37.9 s at batch 8)
LMEVAL_MMLU_BATCH=8 # and on MMLU (93.7 s at batch 64)
STOP=("Q:" "</s>" "<|im_end|>")
# Everything is local: the reference tools must not try the Hugging Face hub.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

say() { echo "[compare] $*" >&2; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

[[ -f "$GGUF" ]] || { echo "error: $GGUF missing: run scripts/fetch-models.sh smollm2" >&2; exit 1; }

# ---- the reference venv -------------------------------------------------------------------------
if ! "$VENV/bin/python" -c "import torch, transformers, lm_eval, accelerate" 2>/dev/null; then
    say "building the reference venv at $VENV (torch, transformers, lm-eval from PyPI) ..."
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check -q \
        "torch==2.15.0" "transformers==5.24.0" "lm-eval==0.4.13" "accelerate==1.15.0" >&2
fi
HAVE_LLAMA=0
if [[ "${DTM_COMPARE_LLAMA:-1}" != 0 ]]; then
    if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
        say "building llama-cpp-python 0.3.36 from source (~10 min on 2 cores) ..."
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/pip" install --disable-pip-version-check -q \
            "llama-cpp-python==0.3.36" >&2 || say "llama-cpp-python did not build: its row is skipped"
    fi
    "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null && HAVE_LLAMA=1
fi
PY="$VENV/bin/python"

# ---- our side -----------------------------------------------------------------------------------
say "building the workspace (harness, benchmark plugins) and the sandbox benchmark (release) ..."
cargo build --release -q --workspace >&2
cargo build --release -q --workspace --example bench_humaneval >&2
H="$T/harness"
if [[ ! -f "$HF/model.safetensors" ]]; then
    say "writing the f32 Hugging Face folder of the GGUF ($HF) ..."
    "$H" convert --model "$GGUF" --output "$HF" >&2
fi
QUANTIZED=0
"$H" score --help | grep -q -- "--quantized" && QUANTIZED=1

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# ---- lm-eval task files on the local data (the protocol's prompts, lm-eval's YAML format) -------
mkdir -p "$WORK/tasks"
cat >"$WORK/tasks/arc_compare.yaml" <<EOF
task: arc_compare
dataset_path: json
dataset_kwargs:
  data_files:
    test: $DATA/arc/ARC-Challenge/ARC-Challenge-Test.jsonl
test_split: test
output_type: multiple_choice
num_fewshot: 0
doc_to_text: "Question: {{question.stem}}\nAnswer:"
doc_to_choice: "{{question.choices | map(attribute='text') | list}}"
doc_to_target: "{{(question.choices | map(attribute='label') | list).index(answerKey)}}"
metric_list:
  - metric: acc
EOF
for s in "${MMLU_SUBJECTS[@]}"; do
    cat >"$WORK/tasks/mmlu_compare_$s.yaml" <<EOF
task: mmlu_compare_$s
dataset_path: csv
dataset_kwargs:
  data_files:
    test: $DATA/mmlu/data/test/${s}_test.csv
    dev: $DATA/mmlu/data/dev/${s}_dev.csv
  column_names: [question, A, B, C, D, answer]
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
num_fewshot: 5
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about ${s//_/ }.\n\n"
doc_to_text: "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{['A', 'B', 'C', 'D'].index(answer)}}"
metric_list:
  - metric: acc
EOF
done
MMLU_LMEVAL="$(printf 'mmlu_compare_%s,' "${MMLU_SUBJECTS[@]}")"
MMLU_LMEVAL="${MMLU_LMEVAL%,}"
MMLU_HARNESS="$(printf 'mmlu:%s,' "${MMLU_SUBJECTS[@]}")"
MMLU_HARNESS="${MMLU_HARNESS%,}"

python3 - "$DATA/gsm8k/grade_school_math/data/test.jsonl" "$WORK/gsm8k8.json" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][:8]
json.dump([f"Q: {r['question']}\nA:" for r in rows], open(sys.argv[2], "w"))
EOF

# ---- runners: each prints one JSON line {wall, phase, ...}, the best of REPEAT -------------------
best() { # best FILE_PREFIX KEY: the run (of $REPEAT) with the smallest KEY, printed as its file
    python3 - "$@" <<'EOF'
import glob, json, sys
runs = [json.load(open(f)) for f in sorted(glob.glob(sys.argv[1] + ".*.json"))]
print(json.dumps(min(runs, key=lambda r: r[sys.argv[2]])))
EOF
}

lmeval_run() { # name tasks limit batch
    local i
    for i in $(seq "$REPEAT"); do
        say "lm-eval $1 (batch $4), run $i ..."
        local t0 t1
        t0="$(now)"
        "$PY" "$REF" lmeval --model "$HF" --include-path "$WORK/tasks" --tasks "$2" --limit "$3" \
            --batch-size "$4" >"$WORK/lm-$1.raw" 2>"$WORK/lm-$1.log" || { tail -n 30 "$WORK/lm-$1.log" >&2; exit 1; }
        t1="$(now)"
        python3 - "$WORK/lm-$1.raw" "$(elapsed "$t0" "$t1")" >"$WORK/lm-$1.$i.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
d["wall"] = float(sys.argv[2])
d["phase"] = d["scoring_seconds"]
d["positions_per_second"] = d["positions_computed"] / d["scoring_seconds"]
print(json.dumps(d))
EOF
    done
    best "$WORK/lm-$1" wall >"$WORK/lm-$1.json"
}

harness_run() { # name model tasks limit batch [extra args...]
    local name="$1" model="$2" tasks="$3" limit="$4" batch="$5" i
    shift 5
    for i in $(seq "$REPEAT"); do
        say "harness $name (batch $batch), run $i ..."
        local out="$WORK/h-$name-$i" t0 t1
        t0="$(now)"
        "$H" score --model "$model" --tasks "$tasks" --limit "$limit" --batch-size "$batch" \
            --data-dir "$DATA" --output "$out" "$@" 2>"$WORK/h-$name.log" >/dev/null || { tail -n 30 "$WORK/h-$name.log" >&2; exit 1; }
        t1="$(now)"
        python3 - "$out" "$(elapsed "$t0" "$t1")" >"$WORK/h-$name.$i.json" <<'EOF'
import json, sys
out, wall = sys.argv[1], float(sys.argv[2])
r = json.load(open(out + "/results.json"))
tasks = r["tasks"]
phase = sum(float(t["wall_seconds"]) for t in tasks.values())
computed = sum(t["tokens"]["forwarded"] + t["tokens"]["padding"] for t in tasks.values())
# Each item's choice: the continuation with the highest log-likelihood (acc), keyed like lm-eval's
# doc ids: the item's position within its subtask (the harness numbers MMLU's items across
# subjects: anatomy's first item is doc 100).
by_subtask = {}
for line in open(out + "/samples.jsonl"):
    if line.strip():
        s = json.loads(line)
        lp = [r["logprob"] for r in s["responses"]]
        by_subtask.setdefault(s["subtask"].split(":")[-1], {})[s["doc_id"]] = max(range(len(lp)), key=lp.__getitem__)
predictions = {
    sub: {str(i): docs[d] for i, d in enumerate(sorted(docs))} for sub, docs in by_subtask.items()
}
print(json.dumps({
    "wall": wall,
    "phase": phase,
    "positions_computed": computed,
    "positions_per_second": computed / phase,
    "predictions": predictions,
}))
EOF
    done
    best "$WORK/h-$name" wall >"$WORK/h-$name.json"
}

gen_run() { # name command...: a reference generator printing {seconds, tokens}
    local name="$1" i
    shift
    for i in $(seq "$REPEAT"); do
        say "$name, run $i ..."
        "$@" >"$WORK/g-$name.raw" 2>"$WORK/g-$name.log" || { tail -n 30 "$WORK/g-$name.log" >&2; exit 1; }
        python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); d["tok_s"] = d["tokens"] / d["seconds"]; d["neg"] = -d["tok_s"]; print(json.dumps(d))' \
            "$WORK/g-$name.raw" >"$WORK/g-$name.$i.json"
    done
    best "$WORK/g-$name" neg >"$WORK/g-$name.json"
}

harness_gen_run() { # name model batch [extra args...]: harness score gsm8k, 0-shot, 8 items
    local name="$1" model="$2" batch="$3" i
    shift 3
    for i in $(seq "$REPEAT"); do
        say "harness generation $name, run $i ..."
        local out="$WORK/hg-$name-$i"
        "$H" score --model "$model" --tasks gsm8k --limit 8 --num-fewshot 0 --max-new-tokens 128 \
            --batch-size "$batch" --data-dir "$DATA" --output "$out" "$@" 2>"$WORK/hg-$name.log" >/dev/null ||
            { tail -n 30 "$WORK/hg-$name.log" >&2; exit 1; }
        python3 - "$out" >"$WORK/hg-$name.$i.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1] + "/results.json"))
seconds = sum(float(t["wall_seconds"]) for t in r["tasks"].values())
tokens = sum(t["tokens"]["generated"] for t in r["tasks"].values())
print(json.dumps({"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds, "neg": -tokens / seconds}))
EOF
    done
    best "$WORK/hg-$name" neg >"$WORK/hg-$name.json"
}

# ---- the machine ---------------------------------------------------------------------------------
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# ---- measurements (one run: every row's two sides back to back) ---------------------------------
lmeval_run arc arc_compare 100 "$LMEVAL_ARC_BATCH"
harness_run arc "$HF" arc_challenge 100 "$HARNESS_BATCH"
lmeval_run mmlu "$MMLU_LMEVAL" 20 "$LMEVAL_MMLU_BATCH"
harness_run mmlu "$HF" "$MMLU_HARNESS" 20 "$HARNESS_BATCH"

gen_run hf1 "$PY" "$REF" hf-generate --model "$HF" --prompts "$WORK/gsm8k8.json" --batch-size 1 \
    --max-new-tokens 128 --stop "${STOP[@]}"
harness_gen_run b1 "$HF" 1
gen_run hf8 "$PY" "$REF" hf-generate --model "$HF" --prompts "$WORK/gsm8k8.json" --batch-size 8 \
    --max-new-tokens 128 --stop "${STOP[@]}"
harness_gen_run b8 "$HF" 8
if [[ "$HAVE_LLAMA" == 1 ]]; then
    gen_run llama "$PY" "$REF" llama-generate --gguf "$GGUF" --prompts "$WORK/gsm8k8.json" \
        --max-new-tokens 128 --threads "$(nproc)" --stop "${STOP[@]}"
fi
if [[ "$QUANTIZED" == 1 ]]; then
    harness_gen_run q1 "$GGUF" 1 --quantized
fi

say "HumanEval: sandbox vs native python3 ..."
for i in $(seq "$REPEAT"); do
    "$T/examples/bench_humaneval" 2 >"$WORK/he.$i.txt" 2>&1
    python3 - "$WORK/he.$i.txt" >"$WORK/he.$i.json" <<'EOF'
import json, re, sys
t = open(sys.argv[1]).read()
sandbox = float(re.search(r"^sandbox: ([0-9.]+) s wall, (\d+)/(\d+) passed", t, re.M).group(1))
passed = re.search(r"^sandbox: [0-9.]+ s wall, (\d+/\d+) passed", t, re.M).group(1)
native = float(re.search(r"^native .*: ([0-9.]+) s wall, (\d+/\d+) exited 0", t, re.M).group(1))
native_ok = re.search(r"^native .*: [0-9.]+ s wall, (\d+/\d+) exited 0", t, re.M).group(1)
version = re.search(r"^native \S+ \((Python [0-9.]+)\)", t, re.M).group(1)
print(json.dumps({"sandbox": sandbox, "native": native, "passed": passed, "native_ok": native_ok,
                  "version": version}))
EOF
done
python3 - "$WORK" "$REPEAT" >"$WORK/he.json" <<'EOF'
import json, sys
runs = [json.load(open(f"{sys.argv[1]}/he.{i}.json")) for i in range(1, int(sys.argv[2]) + 1)]
best = dict(runs[0])
best["sandbox"] = min(r["sandbox"] for r in runs)
best["native"] = min(r["native"] for r in runs)
print(json.dumps(best))
EOF

LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- the table -----------------------------------------------------------------------------------
python3 - "$WORK" "$HAVE_LLAMA" "$QUANTIZED" <<EOF
import json, sys
w, have_llama, quantized = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
def load(name):
    return json.load(open(f"{w}/{name}.json"))
def agree(lm, h):
    # lm-eval's choice per document against the harness's (tasks named alike: arc_compare ~
    # arc_challenge, mmlu_compare_<subject> ~ subtask <subject>).
    same = total = 0
    for task, preds in lm["predictions"].items():
        ours = h["predictions"].get(task.replace("mmlu_compare_", "").replace("arc_compare", "arc_challenge"), {})
        for doc, p in preds.items():
            total += 1
            same += ours.get(doc) == p
    return same, total
rows = []
def row(work, ref, ours, ratio):
    rows.append(f"| {work} | {ref} | {ours} | {ratio} |")
arc_l, arc_h = load("lm-arc"), load("h-arc")
mm_l, mm_h = load("lm-mmlu"), load("h-mmlu")
row("ARC-Challenge, first 100 test items, 0-shot: wall", f"{arc_l['wall']:.1f} s (batch $LMEVAL_ARC_BATCH)", f"{arc_h['wall']:.1f} s (batch $HARNESS_BATCH)", f"{arc_l['wall'] / arc_h['wall']:.2f}x")
row("... its scoring phase alone", f"{arc_l['phase']:.1f} s (start-up {arc_l['startup_seconds']:.1f} s)", f"{arc_h['phase']:.1f} s (start-up {arc_h['wall'] - arc_h['phase']:.1f} s)", f"{arc_l['phase'] / arc_h['phase']:.2f}x")
row("MMLU 5-shot, 3 subjects x 20 items: wall", f"{mm_l['wall']:.1f} s (batch $LMEVAL_MMLU_BATCH)", f"{mm_h['wall']:.1f} s (batch $HARNESS_BATCH)", f"{mm_l['wall'] / mm_h['wall']:.2f}x")
row("... its scoring phase alone", f"{mm_l['phase']:.1f} s (start-up {mm_l['startup_seconds']:.1f} s)", f"{mm_h['phase']:.1f} s (start-up {mm_h['wall'] - mm_h['phase']:.1f} s)", f"{mm_l['phase'] / mm_h['phase']:.2f}x")
lp = sorted([arc_l["positions_per_second"], mm_l["positions_per_second"]])
hp = sorted([x for x in (arc_h["positions_per_second"], mm_h["positions_per_second"]) if x])
row("positions computed per second while scoring (ARC, MMLU; padding included)", f"{lp[0]:.0f}-{lp[1]:.0f}", f"{hp[0]:.0f}-{hp[-1]:.0f}" if hp else "n/a", f"{hp[0] / lp[1]:.2f}-{hp[-1] / lp[0]:.2f}x" if hp else "n/a")
hf1, hf8, b1, b8 = load("g-hf1"), load("g-hf8"), load("hg-b1"), load("hg-b8")
ref1 = f"transformers {hf1['tok_s']:.1f} tok/s"
ratio1 = f"{b1['tok_s'] / hf1['tok_s']:.2f}x HF"
if have_llama:
    ll = load("g-llama")
    ref1 += f"; llama.cpp (same GGUF, its 4-bit compute) {ll['tok_s']:.1f} tok/s"
    ratio1 += f", {b1['tok_s'] / ll['tok_s']:.2f}x llama.cpp"
row("greedy generation, 8 GSM8K prompts x <= 128 tokens, batch 1", ref1, f"{b1['tok_s']:.1f} tok/s ({b1['tokens']} tokens)", ratio1)
row("same, batch 8", f"transformers {hf8['tok_s']:.1f} tok/s", f"{b8['tok_s']:.1f} tok/s ({b8['tokens']} tokens)", f"{b8['tok_s'] / hf8['tok_s']:.2f}x")
if quantized:
    q1 = load("hg-q1")
    ratio = f"{q1['tok_s'] / ll['tok_s']:.2f}x llama.cpp" if have_llama else "n/a"
    row("same, batch 1, harness --quantized (GGUF compute)", f"llama.cpp {ll['tok_s']:.1f} tok/s" if have_llama else "n/a", f"{q1['tok_s']:.1f} tok/s", ratio)
he = load("he")
row("HumanEval, 164 canonical programs (2 jobs)", f"native {he['version']} subprocess each: {he['native']:.1f} s ({he['native_ok']} exit 0)", f"{he['sandbox']:.1f} s (sandbox, {he['passed']} pass)", f"{he['native'] / he['sandbox']:.2f}x")
print("| work | lm-eval 0.4.13 + transformers 5.24 (torch 2.15, CPU) / native | harness | ratio (> 1: harness faster) |")
print("|---|---|---|---|")
print("\n".join(rows))
print()
a_same, a_total = agree(arc_l, arc_h)
m_same, m_total = agree(mm_l, mm_h)
print(f"Same answer as lm-eval: ARC {a_same}/{a_total}, MMLU {m_same}/{m_total}; accuracy lm-eval ARC {arc_l['accuracy']}, MMLU {mm_l['accuracy']}.")
print(f"Generated tokens per prompt: transformers b1 {hf1['per_prompt']}, b8 {hf8['per_prompt']}" + (f"; llama.cpp {ll['per_prompt']}" if have_llama else "") + f"; harness b1 {b1['tokens']}, b8 {b8['tokens']} in all.")
EOF
echo
echo "Machine: $(uname -m), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB;" \
    "load average $LOAD_BEFORE before, $LOAD_AFTER after; started $STARTED; best of $REPEAT;" \
    "git $(git rev-parse --short HEAD)."
