#!/usr/bin/env bash
# Step 10: the inferd wheel (pure Python, the same for every target).
#   10-wheel.sh OUTDIR
set -euo pipefail
source "$(dirname "$0")/../qemu/lib.sh"
STEP="10 wheel"
OUT=$1
rm -rf "$OUT" && mkdir -p "$OUT"
say "pip wheel --no-deps $REPO"
# The build runs in a copy so the work tree gets no build/ or *.egg-info.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
cp -a "$REPO/pyproject.toml" "$REPO/README.md" "$SRC/"
mkdir -p "$SRC/daemon" && cp -a "$REPO/daemon/inferd" "$SRC/daemon/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
host_pip wheel -q --no-deps -w "$OUT" "$SRC" 2>&1 | grep -v 'is ignored: it is neither' >&2 || true
ls "$OUT"/inferd-*.whl >/dev/null || die "no wheel built"
say "$(ls "$OUT")"
