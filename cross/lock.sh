#!/usr/bin/env bash
# Lock (run on purpose, never by a build): resolve ARCH's wheels as PyPI has them today and write
# cross/requirements-ARCH.txt, one `name==version --hash=sha256:...` per wheel of the bundle (inferd's
# own excepted). `build` locks the inferd wheel's build backend instead (cross/requirements-build.txt).
# Review the diff and commit it: builds download exactly these files (--require-hashes), so a bundle
# built months later holds the same bytes.
#   lock.sh aarch64|armv7 INFERD_WHEEL_DIR      (make -C cross lock ARCH=...)
#   lock.sh build                               (make -C cross lock-build)
set -euo pipefail
source "$(dirname "$0")/../qemu/lib.sh"
[ $# -ge 1 ] || die "usage: ${0##*/} aarch64|armv7 INFERD_WHEEL_DIR | build"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
quiet() { grep -v 'is ignored: it is neither' >&2 || true; }
if [ "$1" = build ]; then
    STEP="lock build"
    OUT=$REPO/cross/requirements-build.txt
    mapfile -t ROOTS < <(pins roots build)
    say "pip download ${ROOTS[*]} (the build backend, for this host)"
    host_pip download -q --only-binary=:all: -d "$TMP" "${ROOTS[@]}" 2>&1 | quiet
    pins lock build "$TMP" "$OUT" "${ROOTS[@]}"
    exit 0
fi
arch_vars "$1"
STEP="lock $ARCH"
[ $# = 2 ] || die "usage: ${0##*/} $ARCH INFERD_WHEEL_DIR"
WHEEL=$(ls "$2"/inferd-*.whl)
OUT=$REPO/cross/requirements-$ARCH.txt
mapfile -t ROOTS < <(pins roots "$ARCH" "$WHEEL")
DEPS=() NODEPS=()
for r in "${ROOTS[@]}"; do
    case $r in --no-deps\ *) NODEPS+=("${r#--no-deps }") ;; *) DEPS+=("$r") ;; esac
done
say "resolving for cp311 $WHEEL_ARCH, manylinux_2_36..2014: ${DEPS[*]##*/}${NODEPS[*]:+ + --no-deps ${NODEPS[*]}}"
target_download "$WHEEL_ARCH" "$TMP" "${DEPS[@]}" 2>&1 | quiet
[ ${#NODEPS[@]} = 0 ] || target_download "$WHEEL_ARCH" "$TMP" --no-deps "${NODEPS[@]}" 2>&1 | quiet
pins lock "$ARCH" "$TMP" "$OUT" "${ROOTS[@]}"
say "now: git diff $OUT; make -C cross bundle ARCH=$ARCH; commit the lock with the change that needed it"
