#!/usr/bin/env bash
# Merge throughput and peak memory: `trainer merge` vs mergekit (mergekit-yaml) on the same
# inputs and the same YAML configs — `linear` over three perturbed copies of SmolLM2-135M-Instruct
# and `ties` (density 0.5) of the three against the original. Run from the repository root on an
# idle machine; writes results/bench/merge.txt.
#
# Needs: the GGUF that scripts/fetch-models.sh fetches, and a Python venv ($VENV, default
# /work/venv) with torch, transformers, gguf and mergekit (`pip install gguf mergekit`).
# The checkpoints (about 1.1 GB) go to $WORK (default /tmp/dtm-merge-bench).
set -euo pipefail
VENV="${VENV:-/work/venv}"
WORK="${WORK:-/tmp/dtm-merge-bench}"
RUNS="${RUNS:-3}"
GGUF="${DTM_CACHE:-$HOME/.cache/dtm}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
T="${CARGO_TARGET_DIR:-target}/release/trainer"
OUT=results/bench/merge.txt
mkdir -p "$WORK"

# 1. The inputs: SmolLM2 dequantised from the GGUF and saved as a bfloat16 HF folder, and three
#    copies with every weight moved by 0.002·N(0,1) (seeds 1, 2, 3), so that merging has work to do.
"$VENV/bin/python" - "$GGUF" "$WORK" <<'PY'
import os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, work = sys.argv[1], sys.argv[2]
base_dir = os.path.join(work, "base")
if not os.path.exists(os.path.join(base_dir, "model.safetensors")):
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    # A GGUF-loaded model refuses save_pretrained; a fresh one with its weights does not.
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    fresh.load_state_dict(m.state_dict())
    fresh.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
base = None
for i in (1, 2, 3):
    out = os.path.join(work, f"m{i}")
    if os.path.exists(os.path.join(out, "model.safetensors")):
        continue
    if base is None:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(i)
    m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in m.parameters():
            p.add_((0.002 * torch.randn(p.shape, generator=g)).to(p.dtype))
    m.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
PY

cat > "$WORK/linear.yml" <<YML
merge_method: linear
models:
  - model: $WORK/m1
    parameters: {weight: 1.0}
  - model: $WORK/m2
    parameters: {weight: 1.0}
  - model: $WORK/m3
    parameters: {weight: 1.0}
YML
cat > "$WORK/ties.yml" <<YML
merge_method: ties
base_model: $WORK/base
models:
  - model: $WORK/m1
    parameters: {weight: 1.0, density: 0.5}
  - model: $WORK/m2
    parameters: {weight: 1.0, density: 0.5}
  - model: $WORK/m3
    parameters: {weight: 1.0, density: 0.5}
YML

# 2. Our binary.
cargo build --release -p dtm-trainer >/dev/null 2>&1

bytes_of() { stat -c %s "$@" | awk '{s += $1} END {print s}'; }
in_linear=$(bytes_of "$WORK"/m{1,2,3}/model.safetensors)
in_ties=$(bytes_of "$WORK"/{base,m1,m2,m3}/model.safetensors)

# 3. Each tool, each method, RUNS times, inputs in the page cache first; wall time and peak RSS
#    from GNU time (the same measure for both tools).
run() { # tool method -> "seconds maxrss_kb"
    local tool=$1 method=$2 dest="$WORK/out-$1-$2"
    rm -rf "$dest"
    cat "$WORK"/{base,m1,m2,m3}/model.safetensors > /dev/null
    if [ "$tool" = trainer ]; then
        /usr/bin/time -f "%e %M" -o "$WORK/time" "$T" merge --config "$WORK/$method.yml" \
            --output "$dest" --quiet > "$WORK/log-$tool-$method" 2>&1
    else
        /usr/bin/time -f "%e %M" -o "$WORK/time" "$VENV/bin/mergekit-yaml" "$WORK/$method.yml" \
            "$dest" --quiet --no-write-model-card > "$WORK/log-$tool-$method" 2>&1
    fi
    tail -n 1 "$WORK/time"
}

{
echo "# trainer merge vs mergekit $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mergekit"))')"
echo "# $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(uname -m)"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other agents share this machine)"
echo "# inputs: SmolLM2-135M-Instruct as bfloat16 safetensors, $(awk -v b="$in_ties" 'BEGIN {printf "%.1f", b / 4 / 1e6}') MB a model"
echo "# linear: 3 models, weights 1 (normalised); ties: base + 3 models, density 0.5, weights 1"
echo "# GB/s = input bytes (3 models for linear, 4 for ties) / wall seconds of the whole command;"
echo "# best (lowest) of $RUNS runs each; peak = max RSS (GNU time)"
printf "%-8s %-8s %10s %10s %12s %s\n" tool method seconds "GB/s" "peak MiB" "all runs (s)"
for method in linear ties; do
    bytes=$in_linear; [ "$method" = ties ] && bytes=$in_ties
    for tool in trainer mergekit; do
        best=""; best_rss=""; all=""
        for _ in $(seq "$RUNS"); do
            read -r secs rss < <(run "$tool" "$method")
            all="$all $secs"
            if [ -z "$best" ] || awk -v a="$secs" -v b="$best" 'BEGIN {exit !(a < b)}'; then
                best=$secs; best_rss=$rss
            fi
        done
        printf "%-8s %-8s %10s %10.2f %12.0f %s\n" "$tool" "$method" "$best" \
            "$(awk -v b="$bytes" -v s="$best" 'BEGIN {print b / 1e9 / s}')" \
            "$(awk -v k="$best_rss" 'BEGIN {print k / 1024}')" "$all"
    done
done
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# trainer's own report (last run of each):"
sed 's/^/#   /' "$WORK/log-trainer-linear" "$WORK/log-trainer-ties"
# The two tools' outputs agree (mergekit computes in bfloat16, trainer in float32, both write
# bfloat16): the largest difference of any weight.
"$VENV/bin/python" - "$WORK" <<'PY'
import sys, glob, torch
from safetensors.torch import load_file
work = sys.argv[1]
def load(d):
    t = {}
    for f in sorted(glob.glob(f"{d}/*.safetensors")):
        t.update(load_file(f))
    return t
for method in ("linear", "ties"):
    a, b = load(f"{work}/out-trainer-{method}"), load(f"{work}/out-mergekit-{method}")
    assert set(a) == set(b), set(a) ^ set(b)
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    scale = max(a[k].float().abs().max().item() for k in a)
    same = sum(int((a[k] == b[k]).sum()) for k in a) / sum(a[k].numel() for k in a)
    print(f"# {method}: outputs differ by at most {diff:.3g} (largest weight {scale:.3g}); {100 * same:.2f}% of entries bit-identical")
PY
} | tee "$OUT"
