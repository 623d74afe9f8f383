# shellcheck shell=bash disable=SC2034
# Shared helpers for the qemu/ and cross/ scripts (sourced, not run).
# Every script: `set -euo pipefail`, source this, then call its numbered steps.

# `SCRIPT help` (or -h, --help): print the comment block at the top of the script and exit.
case "${1:-}" in
help | -h | --help)
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
    exit 0
    ;;
esac

QEMU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$QEMU_DIR/.." && pwd)
SUITE=${SUITE:-bookworm}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

say() { printf '\033[1m[%s %s]\033[0m %s\n' "$(date +%H:%M:%S)" "${STEP:-${0##*/}}" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Wall time of a step, printed and appended to build/timings.txt (the numbers in the READMEs).
timed() {  # timed NAME COMMAND...
    local name=$1 t0 rc=0
    shift
    t0=$(date +%s)
    "$@" || rc=$?
    local dt=$(($(date +%s) - t0))
    say "$name: $((dt / 60))m$((dt % 60))s$([ "$rc" = 0 ] || echo " (failed: exit $rc)")"
    [ "$rc" != 0 ] || { mkdir -p "${TIMINGS_DIR:-$QEMU_DIR/build}" &&
        echo "$(date -u +%FT%TZ) $name ${dt}s" >>"${TIMINGS_DIR:-$QEMU_DIR/build}/timings.txt"; }
    return "$rc"
}

# ARCH (aarch64, arm64, armv7, armhf) -> the names each tool wants.
arch_vars() {
    case "${1:-aarch64}" in
    aarch64 | arm64)
        ARCH=aarch64 DEB_ARCH=arm64 WHEEL_ARCH=aarch64 QEMU_USER=qemu-aarch64 UNAME_M=aarch64 CPU=cortex-a72 ;;
    armv7 | armv7l | armhf)
        ARCH=armv7 DEB_ARCH=armhf WHEEL_ARCH=armv7l QEMU_USER=qemu-arm UNAME_M=armv7l CPU=cortex-a15 ;;
    *) die "ARCH=$1: use aarch64 (arm64) or armv7 (armhf)" ;;
    esac
}

# The Debian mirror this host uses (sources.list, then deb822 .sources), else deb.debian.org.
host_mirror() {
    local m=""
    if [ -n "${MIRROR:-}" ]; then echo "$MIRROR"; return; fi
    if [ -f /etc/apt/sources.list ]; then
        m=$(awk -v s="$SUITE" '$1 == "deb" && $0 !~ /security/ {
                for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { u = $i; if ($(i + 1) == s) { print u; exit } } }' \
            /etc/apt/sources.list)
    fi
    if [ -z "$m" ] && compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        m=$(awk -v s="$SUITE" 'BEGIN { RS = ""; FS = "\n" } {
                uris = ""; ok = 0; deb = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/ && (" " $i " ") ~ (" " s " ")) ok = 1
                    if ($i ~ /^Types:/ && $i ~ /(^|[ \t])deb([ \t]|$)/) deb = 1
                    if ($i ~ /^Enabled:[ \t]*no/) ok = 0
                }
                if (ok && deb && uris !~ /security/) { split(uris, u, /[ \t]+/); print u[1]; exit } }' \
            /etc/apt/sources.list.d/*.sources)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

need_root() { [ "$(id -u)" = 0 ] || die "${0##*/} needs root (debootstrap, chroot, binfmt_misc): run it with sudo"; }

# Host tools: installed when missing (CI starts on a fresh machine as root).
HOST_PACKAGES="qemu-user-static binfmt-support debootstrap qemu-system-arm qemu-efi-aarch64 qemu-utils"
host_tools() {
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v qemu-system-aarch64 >/dev/null || missing+=(qemu-system-arm)
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
    command -v ssh >/dev/null || missing+=(openssh-client)
    command -v dpkg-deb >/dev/null || missing+=(dpkg)
    [ ${#missing[@]} = 0 ] && return 0
    need_root
    say "installing host tools: $HOST_PACKAGES ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $HOST_PACKAGES "${missing[@]}" </dev/null >/dev/null
}

# binfmt_misc with qemu-user for this ARCH: mounted, registered, enabled, with the F flag
# (interpreter opened at registration, so a chroot needs no qemu binary inside).
binfmt_ready() {
    local entry=/proc/sys/fs/binfmt_misc/$QEMU_USER
    need_root
    if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
        say "mounting binfmt_misc"
        mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc ||
            die "cannot mount binfmt_misc (a container without CAP_SYS_ADMIN?): qemu-user chroots need it"
    fi
    if [ ! -e "$entry" ] || ! grep -q '^enabled' "$entry"; then
        say "enabling $QEMU_USER in binfmt_misc"
        update-binfmts --enable "$QEMU_USER" >/dev/null 2>&1 || update-binfmts --enable >/dev/null 2>&1 || true
    fi
    [ -e "$entry" ] && grep -q '^enabled' "$entry" ||
        die "binfmt_misc has no enabled $QEMU_USER entry: is qemu-user-static installed? (update-binfmts --display $QEMU_USER)"
    grep -q '^flags:.*F' "$entry" ||
        die "$entry lacks the F flag: the chroot would need its own qemu binary; reinstall qemu-user-static"
}

# --- chroot work ------------------------------------------------------------------------------------
# Mounts live only while a script runs: chroot_mount adds an EXIT trap that undoes them, so a later
# `cp -a` or `mkfs -d` of the tree never copies /proc.
CHROOT_MOUNTS=()
chroot_umount() {
    local i
    for ((i = ${#CHROOT_MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${CHROOT_MOUNTS[$i]}" 2>/dev/null || true
    done
    CHROOT_MOUNTS=()
}
chroot_mount() {  # chroot_mount ROOT
    local root=$1
    trap chroot_umount EXIT
    mount -t proc proc "$root/proc" && CHROOT_MOUNTS+=("$root/proc")
    mount -t sysfs sys "$root/sys" && CHROOT_MOUNTS+=("$root/sys")
    mount --bind /dev "$root/dev" && CHROOT_MOUNTS+=("$root/dev")
    mount -t devpts devpts "$root/dev/pts" -o newinstance,ptmxmode=0666 && CHROOT_MOUNTS+=("$root/dev/pts")
    mount -t tmpfs tmpfs "$root/tmp" && CHROOT_MOUNTS+=("$root/tmp")
    if [ "$DEB_ARCH" = arm64 ]; then
        # The trap: onnxruntime's cpuinfo init segfaults on the host's x86 /proc/cpuinfo under
        # qemu-user 7.2. A minimal aarch64 one over it fixes that.
        mount --bind "$QEMU_DIR/cpuinfo-aarch64" "$root/proc/cpuinfo" && CHROOT_MOUNTS+=("$root/proc/cpuinfo")
    fi
}
bind_into() {  # bind_into HOSTDIR ROOT/PATH [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2" && CHROOT_MOUNTS+=("$2")
    [ "${3:-}" != ro ] || mount -o remount,bind,ro "$2"
}
# Run in the chroot with a clean environment: no host PIP_*, VIRTUAL_ENV or proxies leak in.
# QEMU_CPU: a real core (Pi 4 class) rather than qemu-user's default "max". Under "max" (SVE/SVE2)
# LiteRT's XNNPACK int8 kernels give wrong results on qemu 7.2 (off by up to 125 quantization
# steps); with cortex-a72/a76, neoverse-n1, a64fx or max,sve=off they equal x86 bit for bit.
in_chroot() {  # in_chroot ROOT COMMAND...
    local root=$1
    shift
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        QEMU_CPU="${QEMU_CPU:-$CPU}" \
        DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 chroot "$root" "$@" </dev/null
}

# Host-side pip for downloading target wheels (the project venv's pip, else the system one).
host_pip() {
    if [ -x "$REPO/.venv/bin/python" ]; then "$REPO/.venv/bin/python" -m pip --disable-pip-version-check "$@"
    else python3 -m pip --disable-pip-version-check "$@"; fi
}
# The platforms bookworm's glibc 2.36 accepts, newest first. manylinux2014 alone silently gives old
# onnxruntime / ai-edge-litert releases.
platform_args() {
    local a=$1 p
    for p in manylinux_2_36 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
        manylinux_2_26 manylinux_2_17 manylinux2014; do
        printf -- '--platform %s_%s ' "$p" "$a"
    done
}
target_download() {  # target_download WHEEL_ARCH DEST PIP-ARGS... : binary wheels for cp311 on the target
    local a=$1 dest=$2
    shift 2
    # shellcheck disable=SC2046
    host_pip download -q --only-binary=:all: $(platform_args "$a") --python-version 3.11 \
        --implementation cp -d "$dest" "$@"
}

inferd_version() { sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1; }
# Reproducible builds: file dates inside the wheel, the bundle and the .deb are the last commit's.
source_date_epoch() { git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0; }
# cross/pins.py (locks, build-info.json, comparisons) with the project venv's python (packaging).
pins() { "$REPO/.venv/bin/python" "$REPO/cross/pins.py" "$@"; }

# Every qemu-system process we start writes a pid file in build/run/; this kills exactly those
# (checking the pid still is that qemu), never anything else.
kill_recorded_qemus() {  # kill_recorded_qemus RUNDIR
    local f pid n=0
    for f in "$1"/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '^qemu-system'; then
            kill "$pid" 2>/dev/null && n=$((n + 1))
            sleep 1
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        fi
        rm -f "$f"
    done
    echo "clean-procs: stopped $n qemu process(es)"
}

# Run a long command with its output in LOG, printing LOG's last line every 15 s (the progress of a
# minutes-long debootstrap or emulated apt run), and the log's tail if it fails.
with_progress() {  # with_progress LOG COMMAND...
    local log=$1 pid rc=0 n=0
    shift
    "$@" >"$log" 2>&1 </dev/null &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        n=$((n + 1))
        if [ $((n % 15)) = 0 ]; then
            say "... ${n}s: $(tail -n 1 "$log" 2>/dev/null | tr -d '\r' | cut -c1-100)"
        fi
    done
    wait "$pid" || rc=$?
    [ "$rc" = 0 ] || { tail -n 20 "$log" >&2; say "failed (exit $rc); full log: $log"; }
    return "$rc"
}
