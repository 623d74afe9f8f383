#!/usr/bin/env bash
# Step 30: dist/inferd-VERSION-ARCH.tar.gz: wheels, systemd files (inferd.service and the capture
# template inferd-capture@.service), default config, an example camera config, example models,
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
cp "$REPO"/systemd/{inferd.service,inferd.sysusers,inferd.tmpfiles,inferd.service.d-example.conf,inferd-capture@.service} \
    "$D/systemd/"
cp "$REPO/cross/config/inferd-$ARCH.yaml" "$D/inferd.yaml"
cp "$REPO/cross/config/capture-example.yaml" "$D/capture-example.yaml"
cp "$REPO/README.md" "$REPO/docs/deploy.md" "$REPO/docs/capture.md" "$REPO/docs/mqtt.md" "$D/doc/"
# The capture and mqtt extras are installed by default (install.sh --no-capture leaves PyAV out).
# aarch64: PyAV's wheel (FFmpeg inside) and paho-mqtt's. armv7: paho-mqtt's wheel; PyAV is Debian's
# python3-av (no armv7l wheel), which install.sh requires unless --no-capture.
case $ARCH in
aarch64)
    cp "$REPO"/examples/models/{classifier_int8.onnx,classifier_float.onnx,classifier_uint8_nhwc.onnx,classifier_int8.tflite,labels.txt} "$D/models/"
    REQUIREMENT="inferd[onnx,tflite,mqtt]==$VERSION" REQUIREMENT_CAPTURE="inferd[onnx,tflite,mqtt,capture]==$VERSION"
    SYSTEM_SITE="" DEBS="" DEBS_CAPTURE=""
    IMPORTS="inferd.cli, numpy, zmq, yaml, PIL, pydantic, prometheus_client, onnxruntime, ai_edge_litert.interpreter, paho.mqtt.client"
    ;;
armv7)
    cp "$REPO"/examples/models/{classifier_int8.tflite,labels.txt} "$D/models/"
    REQUIREMENT="" REQUIREMENT_CAPTURE="" SYSTEM_SITE=1
    DEBS="python3-numpy python3-zmq python3-yaml python3-pil" DEBS_CAPTURE="python3-av"
    IMPORTS="inferd.cli, numpy, zmq, yaml, PIL, pydantic, prometheus_client, tflite_runtime.interpreter, paho.mqtt.client"
    ;;
esac
cat >"$D/bundle.env" <<ENV
# Written by cross/30-bundle.sh; read by install.sh.
ARCH=$ARCH
UNAME_M=$UNAME_M
VERSION=$VERSION
REQUIREMENT="$REQUIREMENT"
REQUIREMENT_CAPTURE="$REQUIREMENT_CAPTURE"
SYSTEM_SITE_PACKAGES="$SYSTEM_SITE"
DEBIAN_PACKAGES="$DEBS"
DEBIAN_PACKAGES_CAPTURE="$DEBS_CAPTURE"
IMPORTS="$IMPORTS"
IMPORTS_CAPTURE="inferd.capture.run, av"
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
