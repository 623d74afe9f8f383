#!/usr/bin/env bash
# Step 00: host tools (apt, when missing) and binfmt_misc for ARCH; says clearly what is missing.
#   00-host.sh ARCH
set -euo pipefail
source "$(dirname "$0")/lib.sh"
arch_vars "${1:-aarch64}"
STEP="00 host $ARCH"
host_tools
binfmt_ready
say "binfmt_misc: $(sed -n 1,3p /proc/sys/fs/binfmt_misc/$QEMU_USER | tr '\n' ' ')"
if [ -e /dev/kvm ]; then
    say "/dev/kvm exists, but it runs x86 guests only: ARM guests use TCG (software emulation, ~300x slower)"
else
    say "no /dev/kvm: fine, ARM guests on an x86 host always use TCG (software emulation)"
fi
