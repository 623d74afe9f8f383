#!/usr/bin/env bash
# Reproducibility check: the inferd wheel, ARCH's wheelhouse and the bundle built twice from scratch
# into WORKDIR/a and WORKDIR/b, then the sha256 of every file of both compared (exit 1 on any
# difference). Both builds run from one snapshot of the sources taken first (so a commit or an edit
# landing meanwhile cannot pass for non-determinism); each copies it again with fresh file dates, and
# the second starts at least 2 s after the first (zip dates have 2 s steps).
#   repro.sh ARCH WORKDIR            (make -C cross check-repro ARCH=...)
set -euo pipefail
source "$(dirname "$0")/../qemu/lib.sh"
[ $# = 2 ] || die "usage: ${0##*/} ARCH WORKDIR"
arch_vars "$1"
STEP="repro $ARCH"
W=$2
rm -rf "$W" && mkdir -p "$W"
# The snapshot: what the three steps read, and the repo's git state for build-info.json.
S=$W/src
mkdir -p "$S/daemon" "$S/docs" "$S/examples" "$S/qemu" "$S/cross"
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/systemd" "$S/"
cp -r "$REPO/daemon/inferd" "$S/daemon/"
cp -r "$REPO/docs/deploy.md" "$REPO/docs/capture.md" "$REPO/docs/mqtt.md" "$S/docs/"
cp -r "$REPO/examples/models" "$S/examples/"
cp "$REPO/qemu/lib.sh" "$S/qemu/"
(cd "$REPO/cross" && cp -r ./*.sh ./*.py ./*.txt config "$S/cross/")
ln -s "$REPO/.venv" "$S/.venv"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(source_date_epoch)}
INFERD_GIT_COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)
INFERD_GIT_DIRTY=0
[ -z "$(git -C "$REPO" status --porcelain -uno -- daemon pyproject.toml 2>/dev/null)" ] || INFERD_GIT_DIRTY=1
export INFERD_GIT_COMMIT INFERD_GIT_DIRTY
build() {  # build a|b
    "$S/cross/10-wheel.sh" "$W/$1/wheel"
    "$S/cross/20-wheelhouse.sh" "$ARCH" "$W/$1/wheel" "$W/$1/out/wheels"
    "$S/cross/30-bundle.sh" "$ARCH" "$W/$1/out/wheels" "$W/$1/out/inferd-$(inferd_version)-$ARCH.tar.gz"
}
timed "repro $ARCH build a" build a
sleep 2
timed "repro $ARCH build b" build b
pins compare "$W/a/out" "$W/b/out" >"$W/compare.txt" || { cat "$W/compare.txt"; die "the two builds differ (above)"; }
say "$(tail -1 "$W/compare.txt") (list: $W/compare.txt)"
