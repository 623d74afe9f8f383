#!/usr/bin/env bash
# Step 20: every runtime dependency of inferd for ARCH as binary wheels for CPython 3.11 on glibc
# 2.36 (Debian bookworm), downloaded on the host (no build, no emulation).
#   aarch64: inferd[onnx,tflite] with all its dependencies (onnxruntime, ai-edge-litert, numpy 2...).
#   armv7:   PyPI has no armv7l wheels for onnxruntime, ai-edge-litert, numpy, pyzmq, PyYAML or Pillow:
#            tflite-runtime 2.14 + the pure-Python/armv7l deps (pydantic, pydantic-core,
#            prometheus-client); numpy, pyzmq, PyYAML, Pillow come from Debian on the board.
#   Both: pip itself (install.sh runs pip from its wheel: no python3-venv/python3-pip on the board).
#   20-wheelhouse.sh ARCH WHEELDIR OUTDIR
set -euo pipefail
source "$(dirname "$0")/../qemu/lib.sh"
arch_vars "$1"
STEP="20 wheelhouse $ARCH"
WHEEL=$(ls "$2"/inferd-*.whl)
OUT=$3
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
quiet() { grep -v 'is ignored: it is neither' >&2 || true; }
case $ARCH in
aarch64)
    say "pip download inferd[onnx,tflite] for manylinux_2_36..2014 $WHEEL_ARCH, cp311"
    target_download "$WHEEL_ARCH" "$OUT.tmp" "${WHEEL}[onnx,tflite]" pip 2>&1 | quiet
    ;;
armv7)
    say "pip download tflite-runtime 2.14 + pydantic, prometheus-client for $WHEEL_ARCH, cp311"
    cp "$WHEEL" "$OUT.tmp/"
    target_download "$WHEEL_ARCH" "$OUT.tmp" "pydantic>=2.6" "prometheus-client>=0.20" pip 2>&1 | quiet
    target_download "$WHEEL_ARCH" "$OUT.tmp" --no-deps "tflite-runtime==2.14.0" 2>&1 | quiet
    ;;
esac
for w in inferd- pip-; do ls "$OUT.tmp/$w"*.whl >/dev/null 2>&1 || die "the wheelhouse lacks $w*.whl"; done
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
say "$(ls "$OUT" | wc -l) wheels, $(du -sh "$OUT" | cut -f1): $(cd "$OUT" && ls | sed 's/-py.*//; s/-cp.*//' | tr '\n' ' ')"
