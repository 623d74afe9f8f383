#!/usr/bin/env bash
# Step 20: the project's tests on ARM under qemu-user (binfmt_misc), in the debootstrapped rootfs.
#   aarch64: a venv /opt/inferd-test in the arm64 rootfs, offline from the bundle's wheelhouse plus the
#            test wheels (pytest, hypothesis, onnx, ...), then a small subset of tests/ (TESTS) run
#            in the chroot against the installed inferd wheel. Inference is ~280x slower: keep it small.
#            Then qemu/tests/test_install.py (host side): the bundle's install.sh on a copy of the
#            rootfs: refused when altered, upgrade, rollback, a broken wheel (its last two tests,
#            arch-independent shell paths, and the armv7-only python3-av check run on armv7 only).
#   armv7:   the armv7 bundle's install.sh run in the armhf rootfs (systemd not running there: it
#            enables but does not start; python3-av is there from the rootfs step), then
#            qemu/tests/test_armv7_tflite.py (TFLite, paho-mqtt, `inferd capture` with Debian's PyAV)
#            and test_install.py on the host, which drive inferd and install.sh in that chroot
#            (test_install.py: in a copy).
#   20-test-user.sh aarch64 ROOTFS BUNDLE WHEELHOUSE TESTWHEELS [TESTS...]
#   20-test-user.sh armv7 ROOTFS BUNDLE [PYTEST ARGS...]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ $# -ge 3 ] || die "usage: ${0##*/} aarch64 ROOTFS BUNDLE WHEELHOUSE TESTWHEELS [TESTS...] | armv7 ROOTFS BUNDLE [PYTEST ARGS...]"
arch_vars "$1"
ROOTFS=$2 BUNDLE=$3
shift 3
if [ "$ARCH" = aarch64 ]; then WHEELS=$1 TESTWHEELS=$2 && shift 2; fi
STEP="20 test-user $ARCH"
need_root
host_tools
binfmt_ready
RUN=("$QEMU_DIR/run-in-chroot.sh" "$ARCH" "$ROOTFS")

if [ "$ARCH" = aarch64 ]; then
    STAMP=$ROOTFS/opt/inferd-test/.wheels
    want=$( (ls "$WHEELS" "$TESTWHEELS") | md5sum | cut -c1-12)
    # The inferd wheel keeps its name when daemon/ changes: reinstalled whenever its bytes differ.
    WHEEL_STAMP=$ROOTFS/opt/inferd-test/.inferd-wheel
    wheel=$(sha256sum "$WHEELS"/inferd-*.whl | cut -c1-16)
    if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        say "venv /opt/inferd-test in the chroot, offline from the wheelhouses (emulated pip: ~1 min)"
        venv() {
            "${RUN[@]}" --bind "$WHEELS:/wheels:ro" --bind "$TESTWHEELS:/test-wheels:ro" -- sh -ec '
                rm -rf /opt/inferd-test
                python3 -m venv --without-pip /opt/inferd-test
                PIP_ROOT_USER_ACTION=ignore /opt/inferd-test/bin/python "$(ls /wheels/pip-*.whl)/pip" \
                    --disable-pip-version-check --no-input --no-cache-dir install -q --no-index \
                    --find-links /wheels --find-links /test-wheels --no-warn-script-location \
                    "inferd[onnx,tflite,test]"
                [ ! -f /test-wheels/no-deps.txt ] || PIP_ROOT_USER_ACTION=ignore /opt/inferd-test/bin/python \
                    "$(ls /wheels/pip-*.whl)/pip" --disable-pip-version-check --no-input --no-cache-dir install -q \
                    --no-index --find-links /test-wheels --no-deps -r /test-wheels/no-deps.txt'
        }
        timed "test-user venv aarch64 (qemu-user pip)" venv
        echo "$want" >"$STAMP"
        echo "$wheel" >"$WHEEL_STAMP"
    fi
    if [ "$(cat "$WHEEL_STAMP" 2>/dev/null)" != "$wheel" ]; then
        say "reinstalling the inferd wheel ($wheel) in /opt/inferd-test"
        "${RUN[@]}" --bind "$WHEELS:/wheels:ro" -- sh -ec 'PIP_ROOT_USER_ACTION=ignore /opt/inferd-test/bin/python \
            "$(ls /wheels/pip-*.whl)/pip" --disable-pip-version-check --no-input --no-cache-dir install -q \
            --no-index --no-deps --force-reinstall /wheels/inferd-*.whl'
        echo "$wheel" >"$WHEEL_STAMP"
    fi
    # A fresh copy of the tests and examples (the installed wheel is what gets tested, not daemon/).
    rm -rf "$ROOTFS/opt/inferd-src" && mkdir -p "$ROOTFS/opt/inferd-src"
    cp -a "$REPO/pyproject.toml" "$REPO/tests" "$REPO/examples" "$ROOTFS/opt/inferd-src/"
    find "$ROOTFS/opt/inferd-src" -name __pycache__ -prune -exec rm -rf {} +
    say "pytest under qemu-user: $*"
    tests() {
        "${RUN[@]}" -- sh -c 'cd /opt/inferd-src && HOME=/tmp exec /opt/inferd-test/bin/python -m pytest \
            -p no:cacheprovider -q -o timeout=1200 "$@"' pytest "$@" 2>&1 | tee "$ROOTFS.pytest.log" || return
        # CI (INFERD_CI=1) must run every test of the subset: a skip in the chroot is a failure too.
        if [ "${INFERD_CI:-0}" != 0 ] && grep -Eq '[0-9]+ skipped' "$ROOTFS.pytest.log"; then
            say "INFERD_CI=1: tests were skipped under qemu-user (reasons above): failing"
            return 1
        fi
    }
    timed "test-user aarch64 (pytest under qemu-user)" tests "$@"
    say "pytest -m qemu qemu/tests/test_install.py (host side, install.sh in a copy of the arm64 rootfs)"
    install_tests() {
        cd "$REPO" && QEMU_BOARD_ARCH=$ARCH QEMU_BOARD_ROOTFS=$ROOTFS QEMU_BOARD_BUNDLE=$BUNDLE \
            "$REPO/.venv/bin/python" -m pytest -p no:cacheprovider -q -m qemu "$QEMU_DIR/tests/test_install.py" \
            -k 'not fails_inferd_check and not does_not_stay_active and not python3_av'
    }
    timed "test-user aarch64 install.sh (pytest, qemu-user)" install_tests
else
    STAMP=$ROOTFS/opt/.inferd-bundle
    want=$(md5sum <"$BUNDLE" | cut -c1-12)
    if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        say "install.sh of $(basename "$BUNDLE") in the armhf chroot (--no-start: no systemd running there)"
        rm -rf "$ROOTFS/tmp-bundle" && mkdir -p "$ROOTFS/tmp-bundle"
        tar -xzf "$BUNDLE" -C "$ROOTFS/tmp-bundle"
        install_bundle() { "${RUN[@]}" -- sh -c 'cd /tmp-bundle/inferd-* && ./install.sh --no-start'; }
        timed "test-user armv7 install.sh (qemu-user)" install_bundle
        rm -rf "$ROOTFS/tmp-bundle"
        echo "$want" >"$STAMP"
    fi
    say "pytest -m qemu test_armv7_tflite.py test_install.py (host side, inferd and install.sh in the armhf chroot)"
    tests() {
        cd "$REPO" && QEMU_ARMHF_ROOTFS=$ROOTFS QEMU_BOARD_ARCH=$ARCH QEMU_BOARD_ROOTFS=$ROOTFS QEMU_BOARD_BUNDLE=$BUNDLE \
            "$REPO/.venv/bin/python" -m pytest -p no:cacheprovider -q -m qemu \
            "$QEMU_DIR/tests/test_armv7_tflite.py" "$QEMU_DIR/tests/test_install.py" "$@"
    }
    timed "test-user armv7 (pytest, inferd and install.sh under qemu-arm)" tests "$@"
fi
