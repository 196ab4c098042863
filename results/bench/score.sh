#!/usr/bin/env bash
# Loglikelihood scoring speed (issue #14, target 1): `harness score` against lm-eval 0.4.13 +
# transformers (torch, CPU) on the same float32 SmolLM2-135M-Instruct, the same prompts
# (shared/docs/PROTOCOL.md) and the same items, run alternately on this machine's cores:
#
#   * ARC-Challenge, first 100 test items, 0-shot (lm-eval batch 64, its faster setting);
#   * MMLU 5-shot, abstract_algebra, anatomy, astronomy x 20 items (lm-eval batch 8).
#
# Per run: wall time of the whole command, the scoring phase (harness: results.json's
# wall_seconds; lm-eval: `simple_evaluate`), token positions computed per second of scoring
# (padding included on both sides) and whether both chose the same answer on every item. The
# harness also runs once with DTM_BLAS=off (candle's matmul) to show what the BLAS path gives.
#
#   results/bench/score.sh [ROUNDS] > results/bench/score.txt
#
# Env: DTM_COMPARE_VENV (a venv with lm-eval 0.4.13, torch, transformers; default
# $DTM_CACHE/venv-compare, made by results/bench/compare.sh), DTM_CACHE (default ~/.cache/dtm),
# DTM_DATA_DIR (default ../shared/data), CARGO_TARGET_DIR (default target). Set up first:
# scripts/fetch-models.sh smollm2 and scripts/fetch-openblas.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
ROUNDS="${1:-2}"
CACHE="${DTM_CACHE:-$HOME/.cache/dtm}"
VENV="${DTM_COMPARE_VENV:-$CACHE/venv-compare}"
DATA="$(cd "${DTM_DATA_DIR:-$ROOT/../shared/data}" && pwd)"
T="${CARGO_TARGET_DIR:-target}/release"
GGUF="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
HF="$CACHE/models/SmolLM2-135M-Instruct-hf"
SUBJECTS=(abstract_algebra anatomy astronomy)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

"$VENV/bin/python" -c "import lm_eval, torch, transformers" 2>/dev/null || {
    echo "error: $VENV lacks lm-eval/torch/transformers (pip install lm-eval==0.4.13 torch transformers)" >&2
    exit 1
}
cargo build --release -q -p dtm-harness -p dtm-bench-arc_challenge -p dtm-bench-mmlu >&2
H="$T/harness"
[ -f "$HF/model.safetensors" ] || "$H" convert --model "$GGUF" --output "$HF" >&2

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tasks"
cat >"$WORK/tasks/arc_speed.yaml" <<EOF
task: arc_speed
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
for s in "${SUBJECTS[@]}"; do
    cat >"$WORK/tasks/mmlu_speed_$s.yaml" <<EOF
task: mmlu_speed_$s
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

load() { cut -d' ' -f1-3 /proc/loadavg; }
now() { date +%s.%N; }

# harness_run NAME TASKS LIMIT [ENV...]: prints "wall scoring positions answers-file"
harness_run() {
    local name="$1" tasks="$2" limit="$3"; shift 3
    local out="$WORK/h-$name"
    rm -rf "$out"
    local t0; t0="$(now)"
    env "$@" "$H" score --model "$HF" --data-dir "$DATA" --tasks "$tasks" --limit "$limit" \
        --output "$out" >/dev/null 2>&1
    local t1; t1="$(now)"
    python3 - "$out" "$t0" "$t1" <<'EOF'
import json, sys
out, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
r = json.load(open(f"{out}/results.json"))
scoring = sum(t["wall_seconds"] for t in r["tasks"].values())
positions = sum(t["tokens"]["forwarded"] + t["tokens"]["padding"] for t in r["tasks"].values())
answers = {}
samples = [json.loads(line) for line in open(f"{out}/samples.jsonl")]
# lm-eval numbers each task's documents from 0; the harness numbers items across subtasks.
for task in {s["subtask"] for s in samples}:
    mine = sorted((s for s in samples if s["subtask"] == task), key=lambda s: s["doc_id"])
    name = task.replace("mmlu:", "mmlu_speed_").replace("arc_challenge", "arc_speed")
    for i, s in enumerate(mine):
        lls = [x["logprob"] for x in s["responses"]]
        answers[f"{name}/{i}"] = max(range(len(lls)), key=lls.__getitem__)
json.dump(answers, open(f"{out}/answers.json", "w"))
print(f"{t1 - t0:.2f} {scoring:.2f} {positions} {out}/answers.json")
EOF
}

# lmeval_run NAME TASKS LIMIT BATCH: prints "wall scoring positions answers-file"
lmeval_run() {
    local name="$1" tasks="$2" limit="$3" batch="$4"
    local out="$WORK/l-$name.json"
    local t0; t0="$(now)"
    "$VENV/bin/python" results/bench/score_lmeval.py "$HF" "$WORK/tasks" "$tasks" "$limit" "$batch" \
        2>/dev/null | tail -n 1 >"$out"
    local t1; t1="$(now)"
    python3 - "$out" "$t0" "$t1" <<'EOF'
import json, sys
out, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
r = json.load(open(out))
json.dump(r["answers"], open(out + ".answers", "w"))
print(f"{t1 - t0:.2f} {r['scoring_s']:.2f} {r['positions']} {out}.answers")
EOF
}

same() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(f"{sum(a[k] == b.get(k) for k in a)}/{len(a)}")
EOF
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "harness: $(git rev-parse --short HEAD), SmolLM2-135M-Instruct f32 ($HF), default batch (8 rows) and prefix cache"
echo "lm-eval: $("$VENV/bin/python" -c 'import lm_eval, torch, transformers; print("lm-eval", lm_eval.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "threads", torch.get_num_threads())')"
MMLU_H="$(printf 'mmlu:%s,' "${SUBJECTS[@]}")"
MMLU_L="$(printf 'mmlu_speed_%s,' "${SUBJECTS[@]}")"
for round in $(seq 1 "$ROUNDS"); do
    for w in arc mmlu; do
        if [ "$w" = arc ]; then
            ht=arc_challenge; lt=arc_speed; limit=100; batch=64; label="ARC-Challenge 100 items, 0-shot"
        else
            ht="${MMLU_H%,}"; lt="${MMLU_L%,}"; limit=20; batch=8; label="MMLU 5-shot, 3 subjects x 20"
        fi
        l0="$(load)"
        read -r hw hs hp ha < <(harness_run "$w" "$ht" "$limit")
        read -r lw ls lp la < <(lmeval_run "$w" "$lt" "$limit" "$batch")
        read -r bw bs bp ba < <(harness_run "$w-noblas" "$ht" "$limit" DTM_BLAS=off)
        python3 - "$round" "$label" "$l0" "$(load)" "$hw" "$hs" "$hp" "$lw" "$ls" "$lp" "$bw" "$bs" "$batch" "$(same "$ha" "$la")" <<'EOF'
import sys
(rnd, label, l0, l1, hw, hs, hp, lw, ls, lp, bw, bs, batch, same) = sys.argv[1:]
hw, hs, hp, lw, ls, lp, bw, bs = map(float, (hw, hs, hp, lw, ls, lp, bw, bs))
print(f"\nround {rnd}: {label} (load average before {l0}, after {l1})")
print(f"  harness            wall {hw:6.1f} s, scoring {hs:6.1f} s, {hp:7.0f} positions, {hp / hs:6.0f} positions/s")
print(f"  lm-eval (batch {int(batch):2d}) wall {lw:6.1f} s, scoring {ls:6.1f} s, {lp:7.0f} positions, {lp / ls:6.0f} positions/s")
print(f"  harness, DTM_BLAS=off  wall {bw:6.1f} s, scoring {bs:6.1f} s")
print(f"  ratios (lm-eval / harness): wall {lw / hw:.2f}x, scoring {ls / hs:.2f}x; positions/s harness / lm-eval {hp / hs / (lp / ls):.2f}x; BLAS on vs off: scoring {bs / hs:.2f}x")
print(f"  same answer on {same} items")
EOF
    done
done
