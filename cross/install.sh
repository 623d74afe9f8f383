#!/usr/bin/env bash
# Install inferd from this bundle, offline: a venv at /opt/inferd from the bundled wheels, the
# inferd system user, tmpfiles, the systemd unit, a default /etc/inferd/inferd.yaml (only when there
# is none) and the example models in /var/lib/inferd/models; then enable (and start) the service.
# Run as root from the unpacked bundle:  sudo ./install.sh [--no-start] [--no-check]
# Re-running it upgrades in place (the venv is rebuilt, the config and models are kept).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/bundle.env"  # ARCH, UNAME_M, VERSION, REQUIREMENT, SYSTEM_SITE_PACKAGES, DEBIAN_PACKAGES, IMPORTS

PREFIX=/opt/inferd
START=1 CHECK=1 FORCE=0
usage() {
    cat <<EOF
usage: install.sh [--no-start] [--no-check] [--force]
  Installs inferd $VERSION ($ARCH) from the wheels in $HERE/wheels, without network.
  --no-start  enable the service but do not (re)start it now
  --no-check  skip 'inferd check' of the config and models before starting
  --force     install even if this machine is not $UNAME_M
EOF
}
while [ $# -gt 0 ]; do
    case $1 in
    --no-start) START=0 ;;
    --no-check) CHECK=0 ;;
    --force) FORCE=1 ;;
    -h | --help | help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done
say() { echo "inferd install: $*"; }
die() { echo "inferd install: error: $*" >&2; exit 1; }

# 1. Preconditions: root, the right architecture, Python 3.11, systemd's tools, Debian packages.
[ "$(id -u)" = 0 ] || die "run as root (sudo $0)"
m=$(uname -m)
[ "$m" = "$UNAME_M" ] || [ "$FORCE" = 1 ] || die "this bundle is for $UNAME_M, this machine is $m"
command -v python3 >/dev/null || die "python3 is missing (apt install python3)"
pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The wheels are cp311: Debian bookworm's and Raspberry Pi OS bookworm's python3.
[ "$pyver" = 3.11 ] || die "python3 is $pyver; this bundle's wheels are built for Python 3.11 (Debian 12 bookworm)"
for tool in systemd-sysusers systemd-tmpfiles systemctl; do
    command -v $tool >/dev/null || die "$tool is missing: inferd runs as a systemd service"
done
if [ -n "$DEBIAN_PACKAGES" ]; then
    # The armv7 bundle uses Debian's builds of numpy, pyzmq, PyYAML and Pillow (PyPI has no armv7 wheels).
    missing=$(for p in $DEBIAN_PACKAGES; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
        grep -q '^install ok installed' || echo "$p"; done)
    [ -z "$missing" ] || die "missing Debian packages: $(echo $missing). Install them first (from the
  Debian/Raspberry Pi OS archive, or a local mirror): apt install $(echo $missing)"
fi

# 2. The venv, from the bundled wheels only. pip runs from its own wheel, so neither python3-venv
#    (ensurepip) nor python3-pip is needed on the board.
if [ -d /run/systemd/system ] && systemctl is-active --quiet inferd 2>/dev/null; then
    say "stopping the running inferd for the upgrade"
    systemctl stop inferd
fi
say "creating the venv $PREFIX (Python $pyver${SYSTEM_SITE_PACKAGES:+, with the system site-packages})"
python3 -m venv --clear --without-pip ${SYSTEM_SITE_PACKAGES:+--system-site-packages} "$PREFIX"
PIP=("$PREFIX/bin/python" "$(ls "$HERE"/wheels/pip-*.whl | head -1)/pip" --disable-pip-version-check
    --no-input --no-cache-dir install --no-index --find-links "$HERE/wheels" --no-warn-script-location)
if [ -n "$SYSTEM_SITE_PACKAGES" ]; then
    # Dependencies come partly from Debian: install exactly the bundled wheels, no resolution.
    say "installing $(ls "$HERE"/wheels/*.whl | wc -l) wheels (--no-deps; numpy, pyzmq, PyYAML, Pillow from Debian)"
    PIP_ROOT_USER_ACTION=ignore "${PIP[@]}" -q --no-deps "$HERE"/wheels/*.whl
else
    say "installing $REQUIREMENT and its dependencies from $HERE/wheels"
    PIP_ROOT_USER_ACTION=ignore "${PIP[@]}" -q pip "$REQUIREMENT"
fi
"$PREFIX/bin/python" -c "import $IMPORTS" ||
    die "the venv at $PREFIX cannot import its dependencies ($IMPORTS)"
install -d "$PREFIX/share/doc/inferd"
install -m 0644 "$HERE"/doc/*.md "$PREFIX/share/doc/inferd/"
ln -sfn "$PREFIX/bin/inferd" /usr/local/bin/inferd

# 3. User, folders, unit. Local-admin locations (/etc), so a later .deb (/usr/lib) does not clash.
install -D -m 0644 "$HERE/systemd/inferd.sysusers" /etc/sysusers.d/inferd.conf
install -D -m 0644 "$HERE/systemd/inferd.tmpfiles" /etc/tmpfiles.d/inferd.conf
install -D -m 0644 "$HERE/systemd/inferd.service" /etc/systemd/system/inferd.service
install -D -m 0644 "$HERE/systemd/inferd.service.d-example.conf" "$PREFIX/share/doc/inferd/inferd.service.d-example.conf"
systemd-sysusers /etc/sysusers.d/inferd.conf
systemd-tmpfiles --create /etc/tmpfiles.d/inferd.conf

# 4. Example models (never overwriting a file already there) and a default config (only if none).
for f in "$HERE"/models/*; do
    [ -e "/var/lib/inferd/models/${f##*/}" ] || install -m 0640 -o inferd -g inferd "$f" /var/lib/inferd/models/
done
if [ -e /etc/inferd/inferd.yaml ]; then
    say "keeping the existing /etc/inferd/inferd.yaml (the bundle's default is $HERE/inferd.yaml)"
else
    install -D -m 0644 "$HERE/inferd.yaml" /etc/inferd/inferd.yaml
    say "installed the default /etc/inferd/inferd.yaml"
fi
if [ "$CHECK" = 1 ]; then
    say "inferd check -c /etc/inferd/inferd.yaml"
    "$PREFIX/bin/inferd" check -c /etc/inferd/inferd.yaml ||
        die "the config or a model does not load (fix /etc/inferd/inferd.yaml, then re-run with --no-check or start inferd)"
fi

# 5. Enable, and start when systemd runs (not in a chroot or an image build).
systemctl enable inferd.service 2>&1 | sed 's/^/  /'
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$START" = 1 ]; then
        say "starting inferd (Type=notify: returns when the models are loaded and the sockets bound)"
        systemctl restart inferd || { systemctl --no-pager status inferd >&2 || true; die "inferd did not start: journalctl -u inferd"; }
        systemctl --no-pager --lines=0 status inferd || true
    fi
else
    say "systemd is not running here (chroot/image build): enabled for the next boot"
fi
say "done: inferd $VERSION in $PREFIX; config /etc/inferd/inferd.yaml; models /var/lib/inferd/models"
