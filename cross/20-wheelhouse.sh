#!/usr/bin/env bash
# Step 20: the target's wheelhouse for CPython 3.11 on glibc 2.36 (Debian bookworm): exactly the wheels
# cross/requirements-ARCH.txt pins (== and sha256; `make -C cross lock ARCH=...` writes it), downloaded
# on the host with --require-hashes --no-deps (no resolution at build time: the lock is the resolution),
# plus the inferd wheel. Then checked: the folder holds exactly the pinned files, and inferd's
# requirements resolve from it alone (the lock still fits pyproject.toml).
#   aarch64: inferd[onnx,tflite] with all its dependencies (onnxruntime, ai-edge-litert, numpy 2...).
#   armv7:   PyPI has no armv7l wheels for onnxruntime, ai-edge-litert, numpy, pyzmq, PyYAML or Pillow:
#            tflite-runtime 2.14 + the pure-Python/armv7l deps (pydantic, pydantic-core,
#            prometheus-client); numpy, pyzmq, PyYAML, Pillow come from Debian on the board.
#   Both: pip itself (install.sh runs pip from its wheel: no python3-venv/python3-pip on the board).
#   20-wheelhouse.sh ARCH WHEELDIR OUTDIR
set -euo pipefail
source "$(dirname "$0")/../qemu/lib.sh"
[ $# = 3 ] || die "usage: ${0##*/} ARCH WHEELDIR OUTDIR"
arch_vars "$1"
STEP="20 wheelhouse $ARCH"
WHEEL=$(ls "$2"/inferd-*.whl)
OUT=$3
LOCK=$REPO/cross/requirements-$ARCH.txt
[ -f "$LOCK" ] || die "no ${LOCK#"$REPO"/}: make -C cross lock ARCH=$ARCH (then commit it)"
umask 022
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
quiet() { grep -v 'is ignored: it is neither' >&2 || true; }
say "pip download --require-hashes -r ${LOCK#"$REPO"/} ($(grep -c -- '--hash=' "$LOCK") wheels, cp311 $WHEEL_ARCH)"
target_download "$WHEEL_ARCH" "$OUT.tmp" --no-deps --require-hashes -r "$LOCK" 2>&1 | quiet
cp "$WHEEL" "$OUT.tmp/"
pins check "$LOCK" "$OUT.tmp" || die "the wheelhouse is not what ${LOCK#"$REPO"/} pins"
# inferd's requirements, resolved offline from the wheelhouse alone.
mapfile -t ROOTS < <(pins roots "$ARCH" "$OUT.tmp/${WHEEL##*/}")
DEPS=() NODEPS=()
for r in "${ROOTS[@]}"; do
    case $r in --no-deps\ *) NODEPS+=("${r#--no-deps }") ;; *) DEPS+=("$r") ;; esac
done
CHECK=$(mktemp -d)
trap 'rm -rf "$CHECK"' EXIT
resolve() {
    target_download "$WHEEL_ARCH" "$CHECK/d" --no-index --find-links "$OUT.tmp" "${DEPS[@]}" &&
        { [ ${#NODEPS[@]} = 0 ] || target_download "$WHEEL_ARCH" "$CHECK/d" --no-index --find-links "$OUT.tmp" \
            --no-deps "${NODEPS[@]}"; }
}
resolve >"$CHECK/log" 2>&1 || { grep -v 'is ignored' "$CHECK/log" >&2
    die "inferd's requirements do not resolve from the locked wheels alone (pyproject.toml changed?):" \
        "make -C cross lock ARCH=$ARCH"; }
for w in inferd- pip-; do ls "$OUT.tmp/$w"*.whl >/dev/null 2>&1 || die "the wheelhouse lacks $w*.whl"; done
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
say "$(ls "$OUT" | wc -l) wheels, $(du -sh "$OUT" | cut -f1): $(cd "$OUT" && ls | sed 's/-py.*//; s/-cp.*//' | tr '\n' ' ')"
