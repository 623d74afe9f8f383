#!/usr/bin/env bash
# Step 30: dist/inferd-VERSION-ARCH.tar.gz: wheels, systemd files, default config, example models,
# docs, install.sh and build-info.json (the exact versions inside), in one folder
# inferd-VERSION-ARCH/ with a SHA256SUMS of every file (install.sh refuses a bundle that does not match
# it). Reproducible: sorted names, fixed owner, modes and mtimes (the last commit's), gzip -n.
#   30-bundle.sh ARCH WHEELHOUSE OUT.tar.gz
set -euo pipefail
source "$(dirname "$0")/../qemu/lib.sh"
[ $# = 3 ] || die "usage: ${0##*/} ARCH WHEELHOUSE OUT.tar.gz"
arch_vars "$1"
STEP="30 bundle $ARCH"
WHEELS=$2 OUT=$3
VERSION=$(inferd_version)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(source_date_epoch)}
umask 022
NAME=inferd-$VERSION-$ARCH
STAGE=$(dirname "$WHEELS")/stage
rm -rf "$STAGE" && mkdir -p "$STAGE/$NAME"
D=$STAGE/$NAME
cp -a "$WHEELS" "$D/wheels"
install -D -m 0755 "$REPO/cross/install.sh" "$D/install.sh"
mkdir -p "$D/systemd" "$D/models" "$D/doc"
cp "$REPO"/systemd/inferd.{service,sysusers,tmpfiles,service.d-example.conf} "$D/systemd/"
cp "$REPO/cross/config/inferd-$ARCH.yaml" "$D/inferd.yaml"
cp "$REPO/README.md" "$REPO/docs/deploy.md" "$D/doc/"
case $ARCH in
aarch64)
    cp "$REPO"/examples/models/{classifier_int8.onnx,classifier_float.onnx,classifier_uint8_nhwc.onnx,classifier_int8.tflite,labels.txt} "$D/models/"
    REQUIREMENT="inferd[onnx,tflite]==$VERSION" SYSTEM_SITE="" DEBS=""
    IMPORTS="inferd.cli, numpy, zmq, yaml, PIL, pydantic, prometheus_client, onnxruntime, ai_edge_litert.interpreter"
    ;;
armv7)
    cp "$REPO"/examples/models/{classifier_int8.tflite,labels.txt} "$D/models/"
    REQUIREMENT="" SYSTEM_SITE=1 DEBS="python3-numpy python3-zmq python3-yaml python3-pil"
    IMPORTS="inferd.cli, numpy, zmq, yaml, PIL, pydantic, prometheus_client, tflite_runtime.interpreter"
    ;;
esac
cat >"$D/bundle.env" <<ENV
# Written by cross/30-bundle.sh; read by install.sh.
ARCH=$ARCH
UNAME_M=$UNAME_M
VERSION=$VERSION
REQUIREMENT="$REQUIREMENT"
SYSTEM_SITE_PACKAGES="$SYSTEM_SITE"
DEBIAN_PACKAGES="$DEBS"
IMPORTS="$IMPORTS"
ENV
pins build-info "$ARCH" "$D/wheels" >"$D/build-info.json"
(cd "$D" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
mkdir -p "$(dirname "$OUT")"
# Reproducible: sorted names, fixed owner and modes, the last commit's time as every mtime.
tar --sort=name --owner=0 --group=0 --numeric-owner --mode=u+rw,go=rX --mtime="@$SOURCE_DATE_EPOCH" \
    -C "$STAGE" -cf - "$NAME" |
    gzip -n -6 >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
rm -rf "$STAGE"
say "$OUT ($(du -h "$OUT" | cut -f1)) sha256 $(sha256sum "$OUT" | cut -c1-16)"
