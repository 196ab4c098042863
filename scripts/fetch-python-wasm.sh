#!/usr/bin/env bash
# Builds the CPython guest component used by the dtm sandbox (crate dtm-sandbox).
#
# The guest is sandbox/guest/dtm_guest.py turned into a WebAssembly component (WASI 0.2) by
# componentize-py, which links an optimised CPython 3.14 build it ships, imports the guest
# module once and snapshots the initialised interpreter (see sandbox/README.md). The tool comes
# from PyPI, pinned by version and by the sha256 of each platform's wheel (pip --require-hashes).
#
# Destination: ${DTM_CACHE:-$HOME/.cache/dtm}/dtm-python-guest-<key>.wasm, where <key> is the
# first 16 hex digits of sha256("componentize-py==<version>\n" + the guest's sources); the
# sandbox computes the same name (dtm_sandbox::python_wasm_file), so a build from other sources
# is never picked up.
# Idempotent: does nothing when the file for the current sources is already there.
# Atomic: the component is written under a temporary name in the same directory, then renamed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GUEST="$ROOT/sandbox/guest"
TOOL="componentize-py==0.25.1"
# sha256 of the componentize-py 0.25.1 wheels (cp39-abi3) for the platforms we build on.
TOOL_HASHES=(
    8623cd8cab8453cb0cd8bf03f3c7103420d06f2f3d360186a280a70a1ca5e89f # manylinux_2_28_x86_64
    7b6a87c520358166843af0daa86d2312d7af4cbcbbf1e598951085cf7f2991ca # manylinux_2_28_aarch64
    a556991534cc496207a9d2ca733c4b0f17ed38ef56a8d6b5f1847fdf1225dd1b # macosx_11_0_arm64
)
# The sources, in the order the sandbox hashes them (sandbox/src/lib.rs, GUEST_SOURCES).
SOURCES=("$GUEST/dtm_guest.py" "$GUEST/wit/world.wit" "$GUEST/wit/deps/cli/run.wit")

sha256_stdin() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum | cut -d' ' -f1
    else
        shasum -a 256 | cut -d' ' -f1
    fi
}

KEY="$({ printf '%s\n' "$TOOL"; cat "${SOURCES[@]}"; } | sha256_stdin | cut -c1-16)"
CACHE_DIR="${DTM_CACHE:-$HOME/.cache/dtm}"
DEST="$CACHE_DIR/dtm-python-guest-$KEY.wasm"

if [[ -f "$DEST" ]]; then
    echo "already present: $DEST"
    exit 0
fi

PYTHON=""
for candidate in python3 python; do
    if "$candidate" -m pip --version >/dev/null 2>&1; then
        PYTHON="$candidate"
        break
    fi
done
if [[ -z "$PYTHON" ]]; then
    echo "error: python3 with pip is required" >&2
    exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

{
    printf '%s' "$TOOL"
    for h in "${TOOL_HASHES[@]}"; do printf ' --hash=sha256:%s' "$h"; done
    printf '\n'
} >"$TMP/requirements.txt"

echo "downloading $TOOL from PyPI (hash-checked) ..."
"$PYTHON" -m pip download --no-deps --only-binary=:all: --require-hashes \
    --disable-pip-version-check --dest "$TMP/dl" -r "$TMP/requirements.txt" >&2
"$PYTHON" -m pip install --no-deps --no-index --disable-pip-version-check --quiet \
    --target "$TMP/tool" "$TMP/dl"/*.whl >&2

# Build from a copy, so that nothing (e.g. __pycache__) is written into the work tree.
cp -R "$GUEST" "$TMP/guest"
mkdir -p "$CACHE_DIR"
PART="$(mktemp "$CACHE_DIR/.dtm-python-guest-$KEY.XXXXXX")"
echo "building the guest component (componentize-py: pre-initialising CPython) ..."
(
    cd "$TMP/guest"
    PYTHONPATH="$TMP/tool" "$PYTHON" -c 'import sys, componentize_py; sys.argv[0] = "componentize-py"; componentize_py.script()' \
        --wit-path wit --world guest componentize --python-path . dtm_guest --output "$PART" >&2
) || {
    rm -f "$PART"
    echo "error: componentize-py failed to build the guest" >&2
    exit 1
}
chmod 0644 "$PART"
mv -f "$PART" "$DEST"
echo "installed: $DEST"
