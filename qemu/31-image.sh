#!/usr/bin/env bash
# Step 31: the raw ext4 disk image from the sysroot, without loop devices (mkfs.ext4 -d).
# Booted with -snapshot, so it stays pristine.
#   31-image.sh SYSROOT OUT.raw
set -euo pipefail
source "$(dirname "$0")/lib.sh"
STEP="31 image arm64"
SYSROOT=$1 OUT=$2
need_root
host_tools
grep -q " $SYSROOT/" /proc/mounts && die "$SYSROOT has mounts: not imaging it"
image() {
    rm -f "$OUT.tmp"
    truncate -s 4G "$OUT.tmp"
    mkfs.ext4 -q -F -L inferd-root -d "$SYSROOT" "$OUT.tmp"
    mv "$OUT.tmp" "$OUT"
}
timed "image (mkfs.ext4 -d)" image
say "$OUT: 4 GiB sparse, $(du -h "$OUT" | cut -f1) allocated"
