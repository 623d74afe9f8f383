#!/usr/bin/env bash
# Step 10: the inferd wheel (pure Python, the same for every target), byte for byte reproducible:
# built from a plain copy of the sources (fresh dates, normalized modes) with the pinned build backend
# (cross/requirements-build.txt, hash-checked, no build isolation) and SOURCE_DATE_EPOCH set to the
# last commit's time (the wheel's zip entry dates; without it they are the files' mtimes).
#   10-wheel.sh OUTDIR
set -euo pipefail
source "$(dirname "$0")/../qemu/lib.sh"
STEP="10 wheel"
[ $# = 1 ] || die "usage: ${0##*/} OUTDIR"
OUT=$1
BACKEND=$(dirname "$OUT")/build-backend
LOCK=$REPO/cross/requirements-build.txt
umask 022
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(source_date_epoch)}
# The build backend, exactly the locked setuptools (re-installed only when the lock changes).
want=$(sha256sum <"$LOCK" | cut -c1-16)
if [ "$(cat "$BACKEND/.lock" 2>/dev/null)" != "$want" ]; then
    say "build backend: pip install --require-hashes -r ${LOCK#"$REPO"/}"
    rm -rf "$BACKEND"
    host_pip install -q --no-deps --require-hashes --only-binary=:all: --no-compile --target "$BACKEND" -r "$LOCK"
    echo "$want" >"$BACKEND/.lock"
fi
rm -rf "$OUT" && mkdir -p "$OUT"
# The build runs in a copy so the work tree gets no build/ or *.egg-info.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
cp "$REPO/pyproject.toml" "$REPO/README.md" "$SRC/"
mkdir -p "$SRC/daemon" && cp -r "$REPO/daemon/inferd" "$SRC/daemon/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
chmod -R u=rwX,go=rX "$SRC"
say "pip wheel --no-deps --no-build-isolation (setuptools from the lock), SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
PYTHONPATH=$BACKEND host_pip wheel -q --no-deps --no-build-isolation -w "$OUT" "$SRC" 2>&1 |
    grep -v 'is ignored: it is neither' >&2 || true
ls "$OUT"/inferd-*.whl >/dev/null 2>&1 || die "no wheel built"
say "$(ls "$OUT") sha256 $(sha256sum "$OUT"/inferd-*.whl | cut -c1-16)"
