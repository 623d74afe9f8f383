#!/usr/bin/env bash
# Step 20: the project's tests on ARM under qemu-user (binfmt_misc), in the debootstrapped rootfs.
#   aarch64: a venv /opt/inferd-test in the arm64 rootfs, offline from the bundle's wheelhouse plus the
#            test wheels (pytest, hypothesis, onnx, ...), then a small subset of tests/ (TESTS) run
#            in the chroot against the installed inferd wheel. Inference is ~280x slower: keep it small.
#   armv7:   the armv7 bundle's install.sh run in the armhf rootfs (systemd not running there: it
#            enables but does not start), then qemu/tests/test_armv7_tflite.py on the host, which
#            drives inferd in that chroot.
#   20-test-user.sh ARCH ROOTFS WHEELHOUSE|BUNDLE TESTWHEELS|- [TESTS...]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
arch_vars "$1"
ROOTFS=$2 WHEELS=$3 TESTWHEELS=$4
shift 4
STEP="20 test-user $ARCH"
need_root
host_tools
binfmt_ready
RUN=("$QEMU_DIR/run-in-chroot.sh" "$ARCH" "$ROOTFS")

if [ "$ARCH" = aarch64 ]; then
    STAMP=$ROOTFS/opt/inferd-test/.wheels
    want=$( (ls "$WHEELS" "$TESTWHEELS") | md5sum | cut -c1-12)
    if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        say "venv /opt/inferd-test in the chroot, offline from the wheelhouses (emulated pip: ~1 min)"
        venv() {
            "${RUN[@]}" --bind "$WHEELS:/wheels:ro" --bind "$TESTWHEELS:/test-wheels:ro" -- sh -ec '
                rm -rf /opt/inferd-test
                python3 -m venv --without-pip /opt/inferd-test
                PIP_ROOT_USER_ACTION=ignore /opt/inferd-test/bin/python "$(ls /wheels/pip-*.whl)/pip" \
                    --disable-pip-version-check --no-input --no-cache-dir install -q --no-index \
                    --find-links /wheels --find-links /test-wheels --no-warn-script-location \
                    "inferd[onnx,tflite,test]"'
        }
        timed "test-user venv aarch64 (qemu-user pip)" venv
        echo "$want" >"$STAMP"
    fi
    # A fresh copy of the tests and examples (the installed wheel is what gets tested, not daemon/).
    rm -rf "$ROOTFS/opt/inferd-src" && mkdir -p "$ROOTFS/opt/inferd-src"
    cp -a "$REPO/pyproject.toml" "$REPO/tests" "$REPO/examples" "$ROOTFS/opt/inferd-src/"
    find "$ROOTFS/opt/inferd-src" -name __pycache__ -prune -exec rm -rf {} +
    say "pytest under qemu-user: $*"
    tests() {
        "${RUN[@]}" -- sh -c 'cd /opt/inferd-src && HOME=/tmp exec /opt/inferd-test/bin/python -m pytest \
            -p no:cacheprovider -q -o timeout=1200 "$@"' pytest "$@"
    }
    timed "test-user aarch64 (pytest under qemu-user)" tests "$@"
else
    STAMP=$ROOTFS/opt/inferd/.bundle
    want=$(md5sum <"$WHEELS" | cut -c1-12)
    if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        say "install.sh of $(basename "$WHEELS") in the armhf chroot (--no-start: no systemd running there)"
        rm -rf "$ROOTFS/tmp-bundle" && mkdir -p "$ROOTFS/tmp-bundle"
        tar -xzf "$WHEELS" -C "$ROOTFS/tmp-bundle"
        install_bundle() { "${RUN[@]}" -- sh -c 'cd /tmp-bundle/inferd-* && ./install.sh --no-start'; }
        timed "test-user armv7 install.sh (qemu-user)" install_bundle
        rm -rf "$ROOTFS/tmp-bundle"
        echo "$want" >"$STAMP"
    fi
    say "pytest -m qemu qemu/tests/test_armv7_tflite.py (host side, inferd in the armhf chroot)"
    tests() {
        cd "$REPO" && QEMU_ARMHF_ROOTFS=$ROOTFS "$REPO/.venv/bin/python" -m pytest -p no:cacheprovider -q -m qemu \
            "$QEMU_DIR/tests/test_armv7_tflite.py" "$@"
    }
    timed "test-user armv7 (pytest, inferd under qemu-arm)" tests "$@"
fi
