#!/usr/bin/env bash
# Step 40: boot the arm64 image under qemu-system-aarch64 (TCG), install the .deb offline (or the
# bundle: QEMU_INSTALL=bundle), run the host-side e2e tests against inferd.service.
# Artifacts (console.log, journal.txt, install.log, equality.json...) in qemu/build/artifacts/.
#   40-test-system.sh PYTHON [PYTEST ARGS...]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
STEP="40 test-system"
PY=$1
shift
command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 missing: make -C qemu host"
# Whatever happens (failure, Ctrl-C, timeout), no qemu started here outlives this script.
trap 'kill_recorded_qemus "$QEMU_DIR/build/run" >/dev/null' EXIT
rm -rf "$QEMU_DIR/build/artifacts" && mkdir -p "$QEMU_DIR/build/artifacts"
say "booting arm64 (TCG: ~30 s to ssh), installing ${QEMU_INSTALL:-deb}, pytest -m qemu qemu/tests/test_system.py"
tests() {
    cd "$REPO" && "$PY" -m pytest -p no:cacheprovider -m qemu -v -s -o timeout=1500 --durations=0 \
        "$QEMU_DIR/tests/test_system.py" "$@"
}
timed "test-system (boot + install + e2e)" tests "$@"
