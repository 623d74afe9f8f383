#!/usr/bin/env bash
# Step 10: a Debian bookworm root filesystem for ARCH, built with debootstrap (qemu-user runs its
# second stage through binfmt_misc). arm64: the default variant (systemd, apt) + python3, the base of
# the bootable image and of the chroot tests. armhf: minbase + python3 and the Debian python3-*
# packages the TFLite-only armv7 bundle relies on (no kernel: qemu-user only), then python3-av
# (PyAV 10, `inferd capture`'s decoder on armv7: no armv7l wheel on PyPI) with apt in the chroot:
# its FFmpeg libraries have alternatives and virtual packages that --include does not resolve.
#   10-rootfs.sh ARCH OUT      (OUT is replaced atomically: a half-built tree is never left as OUT)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ $# = 2 ] || die "usage: ${0##*/} ARCH OUT"
arch_vars "$1"
OUT=$2
STEP="10 rootfs $DEB_ARCH"
host_tools
binfmt_ready

case $DEB_ARCH in
arm64) ARGS=(--include=python3) ;;
# python3-zmq needs python3-cffi-backend named: --include does not resolve virtual dependencies.
armhf) ARGS=(--variant=minbase
    --include=python3,python3-numpy,python3-zmq,python3-cffi-backend,python3-yaml,python3-pil,systemd,systemd-sysv) ;;
esac
MIRROR=$(host_mirror)
TMP=$OUT.tmp
rm -rf "$TMP"
mkdir -p "$(dirname "$OUT")"
say "debootstrap $SUITE $DEB_ARCH from $MIRROR (arm64 ~2.5 min, armhf minbase ~3 min; log: $OUT.log)"
build() {
    with_progress "$OUT.log" debootstrap --arch="$DEB_ARCH" "${ARGS[@]}" "$SUITE" "$TMP" "$MIRROR" ||
        die "debootstrap failed (full log: $OUT.log)"
}
timed "rootfs-$DEB_ARCH (debootstrap)" build
# debootstrap sometimes leaves TMP/proc mounted (its umount races the last emulated maintainer
# script): a tree with mounts must not become OUT (cp -a and mkfs -d would copy /proc).
for m in $(awk -v t="$TMP/" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r); do
    say "unmounting $m (left by debootstrap)"
    umount -l "$m"
done
if [ "$DEB_ARCH" = armhf ]; then
    python3_av() {
        chroot_mount "$TMP"
        printf '#!/bin/sh\nexit 101\n' >"$TMP/usr/sbin/policy-rc.d" && chmod +x "$TMP/usr/sbin/policy-rc.d"
        in_chroot "$TMP" apt-get update -qq &&
            with_progress "$OUT.apt.log" in_chroot "$TMP" apt-get install -y --no-install-recommends python3-av ||
            die "apt-get install python3-av in the armhf chroot failed (log: $OUT.apt.log)"
        rm -f "$TMP/usr/sbin/policy-rc.d"
        in_chroot "$TMP" apt-get clean
        rm -rf "$TMP"/var/lib/apt/lists/*_Packages* "$TMP"/var/lib/apt/lists/*_InRelease
        chroot_umount
    }
    say "apt-get install python3-av in the armhf chroot (emulated; log: $OUT.apt.log)"
    timed "rootfs-armhf python3-av (qemu-user apt)" python3_av
fi
# Downloaded .debs are not needed in a tree that becomes an image.
rm -rf "$TMP"/var/cache/apt/archives/*.deb
rm -rf "$OUT"
mv "$TMP" "$OUT"
say "$OUT: $(du -sh "$OUT" | cut -f1)"
