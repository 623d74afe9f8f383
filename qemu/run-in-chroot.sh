#!/usr/bin/env bash
# Run a command in an ARM root filesystem under qemu-user, with proc/sys/dev/tmp mounted (and the
# aarch64 /proc/cpuinfo fix), a clean environment, and every mount undone on exit.
#   run-in-chroot.sh ARCH ROOTFS [--bind HOSTDIR:/PATH[:ro]]... -- COMMAND...
set -euo pipefail
source "$(dirname "$0")/lib.sh"
arch_vars "$1"
ROOTFS=$2
shift 2
STEP="chroot $DEB_ARCH"
binfmt_ready
[ -d "$ROOTFS/usr/bin" ] || die "$ROOTFS is not a root filesystem: make -C qemu rootfs ARCH=$ARCH"
chroot_mount "$ROOTFS"
while [ "${1:-}" = --bind ]; do
    IFS=: read -r src dst mode <<<"$2"
    bind_into "$src" "$ROOTFS$dst" "${mode:-}"
    shift 2
done
[ "${1:-}" = -- ] && shift
# A TERM/INT (e.g. a test stopping `inferd run` here) still runs the EXIT trap that unmounts.
trap 'exit 143' TERM INT
rc=0
in_chroot "$ROOTFS" "$@" || rc=$?
exit $rc
