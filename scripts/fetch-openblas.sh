#!/usr/bin/env bash
# Fetches OpenBLAS for the CPU's matrix products (see harness/model/src/blas.rs): the shared
# library inside PyPI's `scipy-openblas32` wheel (OpenBLAS 0.3.34 built for many CPUs, CBLAS with
# 32-bit integers, exports prefixed `scipy_`, no other dependency), checked against pinned sha256s.
#
# Destination: ${DTM_CACHE:-$HOME/.cache/dtm}/lib/libscipy_openblas.so (+ its LICENSE), where the
# runtime looks for it. Without it everything still works, on candle's slower matmul; `DTM_BLAS=off`
# chooses that explicitly, `DTM_BLAS=/path/libopenblas.so` another CBLAS.
#
# Idempotent (a library already present with the right hash is kept) and atomic (written under a
# temporary name, then renamed). Platforms without a pinned build are skipped with a note.
set -euo pipefail

VERSION="0.3.34.481.3"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64)
    PLATFORM="manylinux_2_28_x86_64"
    WHEEL_SHA256="0595f94cd58c1f8a0d90c975621f4587337a003916b1979e834ebdf2cb5d9504"
    LIB_SHA256="b396d74f12ab4319e6713b3287104d64245c76c60e5bd9eaeb4b447eda66a561" ;;
  Linux-aarch64)
    PLATFORM="manylinux_2_28_aarch64"
    WHEEL_SHA256="e085dddbc5b9aa130f83def515d31c440e69f387a90c7e63b154a5575b4466bc"
    LIB_SHA256="3530123bc482e51b554d3f282b35bc026e6b94c821472c740507f6417debe290" ;;
  *)
    echo "note: no pinned OpenBLAS for $(uname -s)-$(uname -m); candle's matmul will be used"
    exit 0 ;;
esac

CACHE="${DTM_CACHE:-$HOME/.cache/dtm}"
DEST="$CACHE/lib/libscipy_openblas.so"
PY="${PYTHON:-python3}"
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$DEST" ] && [ "$(sha256_of "$DEST")" = "$LIB_SHA256" ]; then
  echo "ok: $DEST (cached, sha256 verified)"
  exit 0
fi

mkdir -p "$CACHE/lib"
tmp="$(mktemp -d "$CACHE/lib/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "fetching scipy-openblas32==$VERSION ($PLATFORM) from the package registry" >&2
"$PY" -m pip download --quiet --no-deps --no-cache-dir --disable-pip-version-check \
  --only-binary=:all: --platform "$PLATFORM" -d "$tmp/wheel" "scipy-openblas32==$VERSION"
wheel="$(find "$tmp/wheel" -maxdepth 1 -name '*.whl' | head -n 1)"
if [ -z "$wheel" ]; then
  echo "error: pip downloaded no wheel for scipy-openblas32==$VERSION" >&2
  exit 1
fi
got="$(sha256_of "$wheel")"
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "error: $(basename "$wheel"): sha256 $got, expected $WHEEL_SHA256" >&2
  exit 1
fi
"$PY" - "$wheel" "$tmp" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for member, out in [("scipy_openblas32/lib/libscipy_openblas.so", "lib.so"),
                        ("scipy_openblas32-0.3.34.481.3.dist-info/licenses/LICENSE.txt", "LICENSE.txt")]:
        with z.open(member) as src, open(f"{sys.argv[2]}/{out}", "wb") as dst:
            dst.write(src.read())
EOF
got="$(sha256_of "$tmp/lib.so")"
if [ "$got" != "$LIB_SHA256" ]; then
  echo "error: libscipy_openblas.so in $(basename "$wheel"): sha256 $got, expected $LIB_SHA256" >&2
  exit 1
fi
chmod 0644 "$tmp/lib.so" "$tmp/LICENSE.txt"
mv -f "$tmp/LICENSE.txt" "$CACHE/lib/libscipy_openblas.LICENSE.txt"
mv -f "$tmp/lib.so" "$DEST"
echo "installed: $DEST (OpenBLAS $VERSION, sha256 verified)"
