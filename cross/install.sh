#!/usr/bin/env bash
# Install or upgrade inferd from this bundle, offline, without ever leaving the board without a
# working daemon. usage (as root, from the unpacked bundle):
#   sudo ./install.sh [--no-start] [--no-check] [--no-capture] [--force]
#                                                            install, or upgrade the installed version
#   sudo ./install.sh --rollback [--no-start] [--no-check]   back to the version before the last switch
#   ./install.sh --verify                                    only check the bundle against SHA256SUMS
# In order: every file of the bundle is checked against SHA256SUMS (nothing is touched before);
# the new version is built beside the running one, as /opt/inferd-releases/VERSION-STAMP (a venv
# from the bundled wheels); `inferd check` runs on it with /etc/inferd/inferd.yaml; then the symlink
# /opt/inferd -> inferd-releases/VERSION-STAMP is swapped in one rename and the service restarted.
# If the new version does not install, fails the check, or the service is not active after the
# restart, the previous tree is switched back and restarted, and install.sh exits 1. The previous
# tree is kept for --rollback (which also works from /opt/inferd/share/inferd/install.sh, without
# the bundle); older ones are removed. Config (/etc/inferd) and models (/var/lib/inferd) are kept.
# Installed with inferd: `inferd capture` (PyAV: the aarch64 bundle's wheel, FFmpeg inside; on armv7
# Debian's python3-av, required unless --no-capture) with its template unit inferd-capture@.service
# (no instance enabled; an example camera in /etc/inferd/capture/example.yaml.sample), and MQTT
# publishing (paho-mqtt, pure Python: always).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd -P)
LINK=/opt/inferd                 # what the unit runs: /opt/inferd/bin/inferd
RELEASES=/opt/inferd-releases    # VERSION-STAMP trees, "previous" -> the one to roll back to
CONFIG=/etc/inferd/inferd.yaml
SETTLE=5                         # seconds inferd must stay active (same PID) after a restart

MODE=install START=1 CHECK=1 FORCE=0 CAPTURE=1
usage() {
    sed -n '2,/^set -e/{/^#/s/^# \{0,1\}//p}' "$0"
    cat <<EOF
Options: --no-start    switch and enable, but do not restart inferd now (it keeps running the old
                       version until the next restart; no service check then)
         --no-check    skip 'inferd check' of the config and models on the new version
         --no-capture  leave out PyAV, which \`inferd capture\` decodes with (aarch64: its ~33 MB
                       wheel, FFmpeg inside; armv7: Debian's python3-av is then not required);
                       give it again at every upgrade. MQTT (paho-mqtt) is always installed
         --force       install even if this machine is not the bundle's architecture
EOF
}
while [ $# -gt 0 ]; do
    case $1 in
    --rollback) MODE=rollback ;;
    --verify) MODE=verify ;;
    --no-start) START=0 ;;
    --no-check) CHECK=0 ;;
    --no-capture) CAPTURE=0 ;;
    --force) FORCE=1 ;;
    -h | --help | help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
    shift
done
say() { echo "inferd install: $*"; }
die() { echo "inferd install: error: $*" >&2; exit 1; }

# --- the bundle: every file as SHA256SUMS says, and no other file -----------------------------------
verify_bundle() {
    local sums=$HERE/SHA256SUMS out bad extra
    [ -f "$sums" ] || die "refusing the bundle in $HERE: SHA256SUMS is missing (every bundle has one:
  an incomplete or altered copy; fetch the bundle again). Nothing was changed."
    if ! out=$(cd "$HERE" && LC_ALL=C sha256sum --check --strict SHA256SUMS 2>&1); then
        bad=$(printf '%s\n' "$out" | sed -n 's|^\./\(.*\): FAILED.*|\1|p' | tr '\n' ' ')
        [ -n "$bad" ] || bad=$(printf '%s\n' "$out" | grep -v ': OK$' | head -3 | tr '\n' ' ')
        die "refusing the bundle in $HERE: ${bad% } does not match SHA256SUMS (a corrupt or altered copy:
  fetch the bundle again). Nothing was changed."
    fi
    # A file SHA256SUMS does not list would still be used (pip --find-links takes any wheel there).
    extra=$(cd "$HERE" && LC_ALL=C comm -23 <(find . ! -type d ! -name SHA256SUMS | LC_ALL=C sort) \
        <(sed -E 's/^[0-9a-f]{64} [ *]//' SHA256SUMS | LC_ALL=C sort) | sed 's|^\./||' | tr '\n' ' ')
    [ -z "$extra" ] || die "refusing the bundle in $HERE: ${extra% } not listed in SHA256SUMS (an altered copy:
  fetch the bundle again). Nothing was changed."
    say "bundle verified: $(grep -c . "$sums") files match SHA256SUMS (sha256 of SHA256SUMS: $(sha256sum "$sums" | cut -c1-16))"
}

# --- releases: /opt/inferd is a symlink to one of them ---------------------------------------------
current() { [ -L "$LINK" ] && readlink "$LINK" | sed 's|.*/||' || true; }
previous() { [ -L "$RELEASES/previous" ] && readlink "$RELEASES/previous" || true; }
version_of() { "$RELEASES/$1/bin/python" -c 'import inferd; print(inferd.__version__)' 2>/dev/null || echo '?'; }
set_link() {  # set_link LINK TARGET: a symlink replaced in one rename(2), never missing
    ln -sfn "$2" "$1.new" && mv -T "$1.new" "$1"
}
# A tree from before releases (install.sh of inferd <= 0.1.0 built the venv at /opt/inferd itself):
# moved into $RELEASES once, so that /opt/inferd can become the symlink. Its scripts run
# #!/opt/inferd/bin/python, which is right again whenever /opt/inferd points back at it.
adopt_old_tree() {
    [ -d "$LINK" ] && [ ! -L "$LINK" ] || return 0
    local name
    name=$("$LINK/bin/python" -c 'import inferd; print(inferd.__version__)' 2>/dev/null || echo unknown)-preinstall
    say "moving the existing $LINK (a plain folder) to $RELEASES/$name; $LINK becomes a symlink"
    mv -T "$LINK" "$RELEASES/$name"
    ln -sfn "inferd-releases/$name" "$LINK"
}
# The units, sysusers and tmpfiles of a release (kept in its share/inferd/systemd), installed in the
# local-admin locations (/etc: a later .deb in /usr/lib does not clash).
system_files() {  # system_files RELEASE
    local s=$RELEASES/$1/share/inferd/systemd
    [ -f "$s/inferd.service" ] || { say "$1 has no unit of its own: keeping the installed one"; return 0; }
    install -D -m 0644 "$s/inferd.service" /etc/systemd/system/inferd.service
    # The capture template: installed, never enabled here (an instance per camera is the admin's).
    [ ! -f "$s/inferd-capture@.service" ] ||
        install -D -m 0644 "$s/inferd-capture@.service" "/etc/systemd/system/inferd-capture@.service"
    install -D -m 0644 "$s/inferd.sysusers" /etc/sysusers.d/inferd.conf
    install -D -m 0644 "$s/inferd.tmpfiles" /etc/tmpfiles.d/inferd.conf
    systemd-sysusers /etc/sysusers.d/inferd.conf
    systemd-tmpfiles --create /etc/tmpfiles.d/inferd.conf
}
systemd_runs() { [ -d /run/systemd/system ]; }
# Camera processes that run (inferd-capture@NAME, enabled by the admin) restarted on the code
# /opt/inferd now points at; stopped ones stay stopped.
restart_captures() {
    local running
    running=$(systemctl list-units --state=active,activating --plain --no-legend 'inferd-capture@*.service' 2>/dev/null |
        awk '{ print $1 }' | tr '\n' ' ')
    [ -n "${running// /}" ] || return 0
    say "restarting the running camera processes: $running"
    systemctl try-restart 'inferd-capture@*.service' || say "a camera process did not restart: journalctl -u 'inferd-capture@*'"
}
# Restart and watch: active, and still the same process SETTLE seconds later (not restart-looping).
restart_and_watch() {
    local pid
    systemctl daemon-reload
    systemctl reset-failed inferd >/dev/null 2>&1 || true
    systemctl restart inferd || return 1
    pid=$(systemctl show -p MainPID --value inferd)
    sleep "$SETTLE"
    systemctl is-active --quiet inferd && [ "$(systemctl show -p MainPID --value inferd)" = "$pid" ]
}
# The tree's own `inferd check` of the config and models (not for pre-release trees: their scripts
# run whatever /opt/inferd points at).
check_tree() {  # check_tree RELEASE
    local bin=$RELEASES/$1/bin/inferd
    [ "$CHECK" = 1 ] || { say "--no-check: not running inferd check"; return 0; }
    [ -f "$CONFIG" ] || { say "no $CONFIG: nothing to check"; return 0; }
    head -1 "$bin" | grep -qx "#!$RELEASES/$1/bin/python" || { say "$1 predates releases: not checked"; return 0; }
    say "inferd check -c $CONFIG with $1"
    "$bin" check -c "$CONFIG"
}
# Switch /opt/inferd to TO (remembering FROM as previous) and restart; when the restart fails, switch
# back to FROM and restart that. Returns 1 after such a switch back.
switch_to() {  # switch_to TO FROM
    local to=$1 from=$2 before
    before=$(previous)
    system_files "$to"
    set_link "$LINK" "inferd-releases/$to"
    [ -z "$from" ] || set_link "$RELEASES/previous" "$from"
    ln -sfn "$LINK/bin/inferd" /usr/local/bin/inferd
    say "switched: $LINK -> inferd-releases/$to (inferd $(version_of "$to"))${from:+; previous: $from}"
    systemctl enable inferd.service 2>&1 | sed 's/^/  /'
    if ! systemd_runs; then
        say "systemd is not running here (chroot/image build): enabled for the next boot"
        return 0
    fi
    if [ "$START" = 0 ]; then
        systemctl daemon-reload
        say "--no-start: the running inferd keeps its old code until: systemctl restart inferd"
        return 0
    fi
    say "restarting inferd (Type=notify: returns once the models are loaded and the sockets bound)"
    if restart_and_watch; then
        systemctl --no-pager --lines=0 status inferd || true
        restart_captures
        return 0
    fi
    systemctl --no-pager --lines=20 status inferd >&2 || true
    [ -n "$from" ] || die "inferd $(version_of "$to") did not stay active and there is no previous version to
  go back to: journalctl -u inferd"
    say "inferd $(version_of "$to") did not stay active: switching back to $from"
    system_files "$from"
    set_link "$LINK" "inferd-releases/$from"
    if [ -n "$before" ]; then set_link "$RELEASES/previous" "$before"; else rm -f "$RELEASES/previous"; fi
    if restart_and_watch; then
        say "back on $from (inferd $(version_of "$from")), active"
        restart_captures
    else
        systemctl --no-pager --lines=20 status inferd >&2 || true
        say "$from did not stay active either: journalctl -u inferd"
    fi
    return 1
}
# Keep the current and the previous release; remove the rest (and trees of interrupted runs).
prune() {
    local d cur prev
    cur=$(current) prev=$(previous)
    for d in "$RELEASES"/*/; do
        d=${d%/} && d=${d##*/}
        [ ! -L "$RELEASES/$d" ] || continue  # "previous"
        [ "$d" = "$cur" ] || [ "$d" = "$prev" ] || [ "$d" = "*" ] || { say "removing $RELEASES/$d"; rm -rf "${RELEASES:?}/$d"; }
    done
}
take_lock() {
    mkdir -p "$RELEASES"
    exec 9>"$RELEASES/.lock"
    flock -n 9 || die "another install.sh is running (lock: $RELEASES/.lock)"
}

# --- modes ------------------------------------------------------------------------------------------
if [ "$MODE" = verify ]; then verify_bundle; exit 0; fi
[ "$(id -u)" = 0 ] || die "run as root (sudo $0)"

if [ "$MODE" = rollback ]; then
    take_lock
    cur=$(current) prev=$(previous)
    [ -n "$prev" ] && [ -x "$RELEASES/$prev/bin/python" ] ||
        die "no previous version to roll back to (nothing in $RELEASES/previous)"
    say "rolling back: $cur (inferd $(version_of "$cur")) -> $prev (inferd $(version_of "$prev"))"
    check_tree "$prev" || die "inferd check fails on $prev: not rolling back (--no-check to force it)"
    switch_to "$prev" "$cur" || die "$prev did not stay active: back on $cur"
    say "done: inferd $(version_of "$prev") in $LINK (-> inferd-releases/$prev); roll forward: $0 --rollback"
    exit 0
fi

# 1. The bundle, before anything else: its files, then its settings.
verify_bundle
source "$HERE/bundle.env"  # ARCH, UNAME_M, VERSION, REQUIREMENT, SYSTEM_SITE_PACKAGES, DEBIAN_PACKAGES, IMPORTS
# ... and REQUIREMENT_CAPTURE, DEBIAN_PACKAGES_CAPTURE, IMPORTS_CAPTURE: what `inferd capture` adds.
if [ "$CAPTURE" = 1 ]; then
    REQUIREMENT=${REQUIREMENT_CAPTURE:-$REQUIREMENT}
    DEBIAN_PACKAGES="$DEBIAN_PACKAGES${DEBIAN_PACKAGES_CAPTURE:+ $DEBIAN_PACKAGES_CAPTURE}"
    IMPORTS="$IMPORTS${IMPORTS_CAPTURE:+, $IMPORTS_CAPTURE}"
fi

# 2. Preconditions: the right architecture, Python 3.11, systemd's tools, Debian packages, no .deb.
m=$(uname -m)
[ "$m" = "$UNAME_M" ] || [ "$FORCE" = 1 ] || die "this bundle is for $UNAME_M, this machine is $m"
command -v python3 >/dev/null || die "python3 is missing (apt install python3)"
pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The wheels are cp311: Debian bookworm's and Raspberry Pi OS bookworm's python3.
[ "$pyver" = 3.11 ] || die "python3 is $pyver; this bundle's wheels are built for Python 3.11 (Debian 12 bookworm)"
for tool in systemd-sysusers systemd-tmpfiles systemctl flock; do
    command -v $tool >/dev/null || die "$tool is missing: inferd runs as a systemd service"
done
if dpkg-query -W -f='${Status}\n' inferd 2>/dev/null | grep -q '^install ok installed'; then
    die "inferd is installed from its .deb here (dpkg owns $LINK): upgrade with apt install ./inferd_*.deb,
  or apt remove inferd before using the bundle"
fi
if [ -n "$DEBIAN_PACKAGES" ]; then
    # The armv7 bundle uses Debian's builds of numpy, pyzmq, PyYAML, Pillow and PyAV (PyPI has no
    # armv7 wheels).
    missing=$(for p in $DEBIAN_PACKAGES; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
        grep -q '^install ok installed' || echo "$p"; done)
    hint=""
    case " $(echo $missing) " in *" python3-av "*) hint="
  (python3-av is what \`inferd capture\` decodes with; a board without cameras: ./install.sh --no-capture)" ;; esac
    [ -z "$missing" ] || die "missing Debian packages: $(echo $missing). Install them first (from the
  Debian/Raspberry Pi OS archive, or a local mirror): apt install $(echo $missing)$hint. Nothing was changed."
fi
take_lock
prune

# 3. The new tree beside the running one, at its final path (a venv's scripts name their python).
#    pip runs from its own wheel: neither python3-venv (ensurepip) nor python3-pip is needed.
NEW=$VERSION-$(date -u +%Y%m%dT%H%M%SZ)
while [ -e "$RELEASES/$NEW" ]; do sleep 1; NEW=$VERSION-$(date -u +%Y%m%dT%H%M%SZ); done
DONE=0
trap '[ "$DONE" = 1 ] || { rm -rf "${RELEASES:?}/$NEW"; echo "inferd install: removed the unfinished $RELEASES/$NEW; inferd was not switched" >&2; }' EXIT
T=$RELEASES/$NEW
say "building $T (Python $pyver${SYSTEM_SITE_PACKAGES:+, with the system site-packages}; capture: $([ "$CAPTURE" = 1 ] && echo yes || echo 'no (--no-capture)')); the running inferd is not touched"
python3 -m venv --without-pip ${SYSTEM_SITE_PACKAGES:+--system-site-packages} "$T"
PIP=("$T/bin/python" "$(ls "$HERE"/wheels/pip-*.whl | head -1)/pip" --disable-pip-version-check
    --no-input --no-cache-dir install --no-index --find-links "$HERE/wheels" --no-warn-script-location)
if [ -n "$SYSTEM_SITE_PACKAGES" ]; then
    # Dependencies come partly from Debian: install exactly the bundled wheels, no resolution.
    say "installing $(ls "$HERE"/wheels/*.whl | wc -l) wheels (--no-deps; from Debian: $DEBIAN_PACKAGES)"
    PIP_ROOT_USER_ACTION=ignore "${PIP[@]}" -q --no-deps "$HERE"/wheels/*.whl || die "pip could not install the bundle's wheels"
else
    say "installing $REQUIREMENT and its dependencies from $HERE/wheels"
    PIP_ROOT_USER_ACTION=ignore "${PIP[@]}" -q pip "$REQUIREMENT" || die "pip could not install the bundle's wheels"
fi
"$T/bin/python" -c "import $IMPORTS" || die "the new tree $T cannot import its dependencies ($IMPORTS)"
install -d "$T/share/doc/inferd" "$T/share/inferd/systemd"
install -m 0644 "$HERE"/doc/*.md "$HERE/build-info.json" "$HERE/systemd/inferd.service.d-example.conf" "$T/share/doc/inferd/"
install -m 0644 "$HERE"/systemd/inferd.{service,sysusers,tmpfiles} "$T/share/inferd/systemd/"
[ ! -f "$HERE/systemd/inferd-capture@.service" ] || install -m 0644 "$HERE/systemd/inferd-capture@.service" "$T/share/inferd/systemd/"
[ ! -f "$HERE/capture-example.yaml" ] || install -m 0644 "$HERE/capture-example.yaml" "$T/share/inferd/"
install -m 0644 "$HERE/bundle.env" "$T/share/inferd/"
install -m 0755 "$HERE/install.sh" "$T/share/inferd/"  # --rollback without the bundle

# 4. The inferd user and folders, example models (never over a file already there), a default
#    config (only when there is none), the example camera config: additions the running version is
#    not disturbed by.
install -D -m 0644 "$HERE/systemd/inferd.sysusers" /etc/sysusers.d/inferd.conf
install -D -m 0644 "$HERE/systemd/inferd.tmpfiles" /etc/tmpfiles.d/inferd.conf
systemd-sysusers /etc/sysusers.d/inferd.conf
systemd-tmpfiles --create /etc/tmpfiles.d/inferd.conf
for f in "$HERE"/models/*; do
    [ -e "/var/lib/inferd/models/${f##*/}" ] || install -m 0640 -o inferd -g inferd "$f" /var/lib/inferd/models/
done
if [ -e "$CONFIG" ]; then
    say "keeping the existing $CONFIG (the bundle's default is $HERE/inferd.yaml)"
else
    install -D -m 0644 "$HERE/inferd.yaml" "$CONFIG"
    say "installed the default $CONFIG"
fi
# Camera configs: /etc/inferd/capture/NAME.yaml for inferd-capture@NAME. The sample is ours (refreshed
# every time; its name never matches an instance's), the folder's other files the admin's.
install -d -m 0755 /etc/inferd/capture
install -m 0644 "$HERE/capture-example.yaml" /etc/inferd/capture/example.yaml.sample

# 5. The new version checks the config and models before it is switched to.
check_tree "$NEW" || die "inferd $VERSION fails 'inferd check' on $CONFIG: not switching (the running
  version is untouched; fix the config or models, or re-run with --no-check)"

# 6. Switch (one rename), restart, watch; back to the previous tree if the service does not stay up.
adopt_old_tree
PREV=$(current)
[ "$PREV" != "$NEW" ] || PREV=""
DONE=1  # from here on the new tree is either /opt/inferd's or removed below
if ! switch_to "$NEW" "$PREV"; then
    rm -rf "${RELEASES:?}/$NEW"
    die "inferd $VERSION did not stay active after the switch; back on $PREV (inferd $(version_of "$PREV")),
  $RELEASES/$NEW removed: journalctl -u inferd"
fi
prune
say "done: inferd $VERSION in $LINK (-> inferd-releases/$NEW)${PREV:+; previous kept for --rollback: $PREV}"
say "config $CONFIG; models /var/lib/inferd/models; build info $LINK/share/doc/inferd/build-info.json"
