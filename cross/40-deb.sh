#!/usr/bin/env bash
# Step 40: dist/inferd_VERSION_arm64.deb. The venv is built inside the arm64 root filesystem
# (qemu/ step 10) under qemu-user, at its final path /opt/inferd, so its python and compiled wheels
# are the target's; then it is copied out and packed with dpkg-deb beside the unit, the capture
# template unit inferd-capture@.service (never enabled by the package), sysusers, tmpfiles, the
# default config and an example camera config (conffiles) and the maintainer scripts in debian/.
# The venv holds inferd[onnx,tflite,capture,mqtt]: PyAV (FFmpeg inside its wheel) and paho-mqtt too.
# /opt/inferd/share/doc/inferd/build-info.json records the wheels (the lock's) and the version of every
# Debian package of that root filesystem (debootstrap takes what the mirror has on the day: bookworm
# point releases cannot be pinned without snapshot.debian.org, so they are recorded instead).
#   40-deb.sh ROOTFS WHEELHOUSE OUT.deb
set -euo pipefail
source "$(dirname "$0")/../qemu/lib.sh"
arch_vars aarch64
STEP="40 deb $DEB_ARCH"
ROOTFS=$1 WHEELS=$2 OUT=$3
VERSION=$(inferd_version)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(source_date_epoch)}
umask 022
need_root
host_tools
binfmt_ready
[ -x "$ROOTFS/usr/bin/python3" ] || die "$ROOTFS has no python3: make -C qemu rootfs ARCH=aarch64"
STAGE=$(dirname "$WHEELS")/deb-stage
rm -rf "$STAGE" "$ROOTFS/opt/inferd"

# 1. The venv in the chroot, offline, from the wheelhouse (pip runs from its wheel).
chroot_mount "$ROOTFS"
bind_into "$WHEELS" "$ROOTFS/wheels" ro
venv() {
    in_chroot "$ROOTFS" python3 -m venv --without-pip /opt/inferd
    # SOURCE_DATE_EPOCH: pip's .pyc files are hash-checked rather than stamped with install times.
    in_chroot "$ROOTFS" sh -c 'SOURCE_DATE_EPOCH='"$SOURCE_DATE_EPOCH"' PIP_ROOT_USER_ACTION=ignore \
        /opt/inferd/bin/python "$(ls /wheels/pip-*.whl)/pip" \
        --disable-pip-version-check --no-input --no-cache-dir install -q --no-index --find-links /wheels \
        --no-warn-script-location "inferd[onnx,tflite,capture,mqtt]"'
    in_chroot "$ROOTFS" /opt/inferd/bin/python -c \
        'import inferd.cli, numpy, zmq, yaml, PIL, pydantic, prometheus_client, onnxruntime, ai_edge_litert.interpreter, av, paho.mqtt.client, inferd.capture.run, inferd.outputs.mqtt'
}
say "building the venv /opt/inferd in the arm64 chroot (emulated: ~1-2 min)"
timed "deb venv (qemu-user)" venv
DPKG=$(dirname "$WHEELS")/deb-dpkg.txt
in_chroot "$ROOTFS" dpkg-query -W -f='${Package}\t${Version}\n' | LC_ALL=C sort >"$DPKG"
chroot_umount

# 2. The package tree.
mkdir -p "$STAGE/opt" "$STAGE/DEBIAN"
mv "$ROOTFS/opt/inferd" "$STAGE/opt/inferd"
install -D -m 0644 "$REPO/systemd/inferd.service" "$STAGE/lib/systemd/system/inferd.service"
install -D -m 0644 "$REPO/systemd/inferd-capture@.service" "$STAGE/lib/systemd/system/inferd-capture@.service"
install -D -m 0644 "$REPO/systemd/inferd.sysusers" "$STAGE/usr/lib/sysusers.d/inferd.conf"
install -D -m 0644 "$REPO/systemd/inferd.tmpfiles" "$STAGE/usr/lib/tmpfiles.d/inferd.conf"
install -D -m 0644 "$REPO/cross/config/inferd-aarch64.yaml" "$STAGE/etc/inferd/inferd.yaml"
# /etc/inferd/capture/NAME.yaml is inferd-capture@NAME's config: the package ships only a sample
# (its name matches no instance), so nothing starts a camera process but the admin.
install -D -m 0644 "$REPO/cross/config/capture-example.yaml" "$STAGE/etc/inferd/capture/example.yaml.sample"
install -d "$STAGE/usr/share/inferd/models" "$STAGE/opt/inferd/share/doc/inferd" "$STAGE/usr/bin"
cp "$REPO"/examples/models/{classifier_int8.onnx,classifier_float.onnx,classifier_uint8_nhwc.onnx,classifier_int8.tflite,labels.txt} \
    "$STAGE/usr/share/inferd/models/"
cp "$REPO/README.md" "$REPO/docs/deploy.md" "$REPO/docs/capture.md" "$REPO/docs/mqtt.md" \
    "$REPO/systemd/inferd.service.d-example.conf" "$STAGE/opt/inferd/share/doc/inferd/"
pins build-info aarch64 "$WHEELS" "$DPKG" "$STAGE/opt/inferd/lib/python3.11/site-packages" \
    >"$STAGE/opt/inferd/share/doc/inferd/build-info.json"
ln -s /opt/inferd/bin/inferd "$STAGE/usr/bin/inferd"
printf '%s\n' /etc/inferd/inferd.yaml /etc/inferd/capture/example.yaml.sample >"$STAGE/DEBIAN/conffiles"
install -m 0755 "$REPO"/cross/debian/{postinst,prerm,postrm} "$STAGE/DEBIAN/"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/; s/@DEB_ARCH@/$DEB_ARCH/; s/@SIZE@/$SIZE/" "$REPO/cross/debian/control.in" \
    >"$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -type f ! -path './DEBIAN/*' | LC_ALL=C sort | sed 's|^\./||' | xargs md5sum >DEBIAN/md5sums)

# 3. Pack.
mkdir -p "$(dirname "$OUT")"
pack() { dpkg-deb --root-owner-group -Zxz -z6 --build "$STAGE" "$OUT.tmp" >/dev/null; }
timed "deb pack (dpkg-deb xz)" pack
mv "$OUT.tmp" "$OUT"
rm -rf "$STAGE"
say "$OUT ($(du -h "$OUT" | cut -f1), installed $((SIZE / 1024)) MB)"
dpkg-deb --info "$OUT" | sed -n 's/^ \(Package\|Version\|Architecture\|Depends\|Installed-Size\):/  &/p' >&2
