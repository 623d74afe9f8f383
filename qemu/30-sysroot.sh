#!/usr/bin/env bash
# Step 30: the bootable arm64 tree: a copy of the rootfs with Debian's cloud kernel + initramfs
# (virtio drivers in the initrd), openssh-server with a throwaway key for root, mosquitto and
# mosquitto-clients (an MQTT broker for test_system.py's publishing test: the booted guest has no
# network to fetch one; disabled, the test starts it), systemd-networkd on DHCP, fstab, hostname,
# and the apt/man-db timers masked. Kernel and initrd are copied out.
#   30-sysroot.sh ROOTFS SYSROOT PUBKEY OUTDIR
set -euo pipefail
source "$(dirname "$0")/lib.sh"
arch_vars aarch64
STEP="30 sysroot arm64"
ROOTFS=$1 SYSROOT=$2 PUBKEY=$3 OUT=$4
need_root
host_tools
binfmt_ready
grep -q " $ROOTFS/" /proc/mounts && die "$ROOTFS has mounts (a chroot still running?): not copying it"
TMP=$SYSROOT.tmp
rm -rf "$TMP"
say "copying the rootfs (without the test venvs)"
cp -a "$ROOTFS" "$TMP"
rm -rf "$TMP"/opt/inferd-test "$TMP"/opt/inferd-src "$TMP"/opt/inferd "$TMP"/opt/*.py "$TMP"/opt/*.npz

chroot_mount "$TMP"
printf '#!/bin/sh\nexit 101\n' >"$TMP/usr/sbin/policy-rc.d" && chmod +x "$TMP/usr/sbin/policy-rc.d"
# The initramfs is built once, with only what the guest needs to mount / (virtio-mmio disk; ext4
# is built in): every module mkinitramfs copies costs emulated modprobe/ldd runs, and Debian's
# defaults (MODULES=most, and a second full build from the initramfs-tools trigger after the
# kernel's own postinst) took 8 of this step's 9 minutes under qemu-user.
initramfs_config() {
    printf 'MODULES=list\nCOMPRESS=gzip\n' >"$TMP/etc/initramfs-tools/conf.d/qemu-guest.conf"
    printf 'virtio_mmio\nvirtio_blk\n' >>"$TMP/etc/initramfs-tools/modules"
    sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$TMP/etc/initramfs-tools/update-initramfs.conf"
}
packages() {
    in_chroot "$TMP" apt-get update -qq
    with_progress "$OUT/sysroot-apt.log" in_chroot "$TMP" apt-get install -y --no-install-recommends \
        initramfs-tools openssh-server mosquitto mosquitto-clients ||
        die "apt-get install in the chroot failed (log: $OUT/sysroot-apt.log)"
    initramfs_config
    with_progress "$OUT/sysroot-kernel.log" in_chroot "$TMP" apt-get install -y --no-install-recommends \
        linux-image-cloud-arm64 || die "apt-get install of the kernel failed (log: $OUT/sysroot-kernel.log)"
    [ "$(ls "$TMP"/boot/initrd.img-* | wc -l)" = 1 ] || die "no initramfs was built (log: $OUT/sysroot-kernel.log)"
}
say "apt-get install linux-image-cloud-arm64 initramfs-tools openssh-server mosquitto mosquitto-clients (emulated: ~2 min)"
timed "kernel+initramfs+ssh+mosquitto (qemu-user apt)" packages
rm -f "$TMP/usr/sbin/policy-rc.d"

say "configuring: fstab, hostname, networkd, ssh key, masked timers"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$TMP/etc/fstab"
echo inferd-qemu >"$TMP/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tinferd-qemu\n' >"$TMP/etc/hosts"
cat >"$TMP/etc/systemd/network/20-wired.network" <<NET
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET
install -d -m 0700 "$TMP/root/.ssh"
install -m 0600 "$PUBKEY" "$TMP/root/.ssh/authorized_keys"
cat >"$TMP/etc/ssh/sshd_config.d/qemu.conf" <<SSH
# Throwaway test image: key-only root login, no DNS lookups (slow under TCG).
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
SSH
in_chroot "$TMP" systemctl enable systemd-networkd.service ssh.service >/dev/null 2>&1
# The broker runs only when a test starts it (systemctl start mosquitto): boots stay as they were.
in_chroot "$TMP" systemctl disable mosquitto.service >/dev/null 2>&1
in_chroot "$TMP" systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
    fstrim.timer systemd-networkd-wait-online.service >/dev/null 2>&1
# No network on a field board: apt install ./inferd_*.deb must not need package lists.
in_chroot "$TMP" apt-get clean
rm -rf "$TMP"/var/lib/apt/lists/*_Packages* "$TMP"/var/lib/apt/lists/*_InRelease
chroot_umount

cp -L "$TMP/vmlinuz" "$OUT/vmlinuz"
cp -L "$TMP/initrd.img" "$OUT/initrd.img"
rm -rf "$SYSROOT" && mv "$TMP" "$SYSROOT"
say "$SYSROOT: $(du -sh "$SYSROOT" | cut -f1); kernel $(ls "$SYSROOT"/boot/vmlinuz-* | sed 's|.*/vmlinuz-||')"
