"""cross/install.sh on an ARM root filesystem under qemu-user: verify, switch atomically, roll back.

`make -C qemu test-user ARCH=armv7` (and ARCH=aarch64, which deselects the last two tests: their
shell paths do not depend on the architecture, and every emulated aarch64 pip run costs ~1 min)
runs this file with QEMU_BOARD_ARCH, QEMU_BOARD_ROOTFS and QEMU_BOARD_BUNDLE set. It works on a
copy of the root filesystem (build/DEB_ARCH/board) and runs in file order, each test starting from
the board the one before left:

1. an altered bundle (a changed wheel, no SHA256SUMS, an unlisted file) is refused, nothing changed;
   (armv7) so is a board without Debian's python3-av, which `inferd capture` needs, naming
   `apt install python3-av` and `--no-capture`;
2. the real bundle installs (armv7: over a plain /opt/inferd folder as install.sh of 0.1.0 left it,
   which is kept as the previous version; aarch64: a clean board), with paho-mqtt and PyAV, the
   capture template unit and the example camera config, no capture instance enabled;
3. an upgrade to a new version ("+next", the inferd wheel rewritten) with --no-capture keeps the
   old tree (aarch64: no PyAV in the new one; armv7: installs on a board without python3-av);
4. `install.sh --rollback` from the installed copy (no bundle) brings the old version back;
5. a truncated inferd wheel (SHA256SUMS regenerated: it passes verification) fails in pip and
   leaves the running version as it was;
6. a version whose `inferd check` fails on the board's config is never switched to;
7. a version the service does not stay active with is switched back. A chroot has no systemd, so
   a stand-in systemctl plays the service: it "starts" whatever /opt/inferd points at unless that
   version is "+nostart" (the real unit and systemd are exercised by test_system.py).
After each failure: the previous version's files are there, `inferd --version` and `inferd check`
work. Artifacts (install.sh's output of each run) in build/artifacts-install-ARCH/.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(1800)]

QEMU_DIR = Path(__file__).resolve().parents[1]
ROOT = QEMU_DIR.parent
ARCH = os.environ.get("QEMU_BOARD_ARCH", "armv7")
DEB_ARCH = {"armv7": "armhf", "aarch64": "arm64"}[ARCH]
ROOTFS = Path(os.environ.get("QEMU_BOARD_ROOTFS", QEMU_DIR / "build" / DEB_ARCH / "rootfs"))
BOARD = QEMU_DIR / "build" / DEB_ARCH / "board"
ARTIFACTS = QEMU_DIR / "build" / f"artifacts-install-{ARCH}"
BUNDLES = "/root/bundles"  # in the board


def version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version = "(.+)"', text, re.M).group(1)


BUNDLE = Path(os.environ.get("QEMU_BOARD_BUNDLE", ROOT / "dist" / f"inferd-{version()}-{ARCH}.tar.gz"))
VERSION = version()


def chroot(*command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(QEMU_DIR / "run-in-chroot.sh"), ARCH, str(BOARD), "--", *command],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def install(bundle: str, *args: str, name: str | None = None) -> subprocess.CompletedProcess:
    """install.sh of the bundle BUNDLES/bundle in the board; its output saved as an artifact."""
    proc = chroot("sh", "-c", f"cd {BUNDLES}/{bundle} && ./install.sh {' '.join(args)} 2>&1")
    (ARTIFACTS / f"{name or bundle}.log").write_text(proc.stdout + proc.stderr)
    return proc


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- bundles made from the real one --------------------------------------------------------------------
def write_sums(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    lines = [f"{sha256(p.read_bytes())}  ./{p.relative_to(folder)}" for p in files]
    (folder / "SHA256SUMS").write_text("\n".join(sorted(lines, key=lambda x: x[66:])) + "\n")


def rewrite_wheel(folder: Path, new_version: str, edits: dict[str, str] | None = None) -> Path:
    """The bundle's inferd wheel as version new_version (metadata, __version__, dist-info, RECORD),
    with `edits` ({path in the wheel: text appended}); bundle.env follows."""
    (old,) = (folder / "wheels").glob("inferd-*.whl")
    src = zipfile.ZipFile(old)
    files: dict[str, bytes] = {}
    for info in src.infolist():
        data = src.read(info)
        name = info.filename.replace(f"inferd-{VERSION}.dist-info/", f"inferd-{new_version}.dist-info/")
        if name.endswith(".dist-info/METADATA"):
            data = data.replace(f"\nVersion: {VERSION}\n".encode(), f"\nVersion: {new_version}\n".encode())
        if name == "inferd/__init__.py":
            data = data.replace(f'"{VERSION}"'.encode(), f'"{new_version}"'.encode())
        if edits and name in edits:
            data += edits[name].encode()
        files[name] = data
    record = next(n for n in files if n.endswith(".dist-info/RECORD"))
    rows = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{name},,\n" if name == record else f"{name},sha256={digest},{len(data)}\n")
    files[record] = "".join(rows).encode()
    new = folder / "wheels" / f"inferd-{new_version}-py3-none-any.whl"
    with zipfile.ZipFile(new, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    old.unlink()
    env = (folder / "bundle.env").read_text()
    (folder / "bundle.env").write_text(env.replace(f"VERSION={VERSION}", f"VERSION={new_version}").replace(
        f"=={VERSION}", f"=={new_version}"))  # fmt: skip
    assert f"VERSION={new_version}" in (folder / "bundle.env").read_text()
    return new


# The load of every model fails in this build: `inferd check` must catch it before the switch.
BROKEN_LOAD = """

def load_model(cfg, base_dir, runtime_level="warning"):  # qemu/tests/test_install.py
    raise ModelLoadError(cfg.name, "broken on purpose by qemu/tests/test_install.py")
"""


def make_bundles(dest: Path) -> None:
    """good (the real bundle), altered/nosums/unlisted (refused), next, truncated, checkfail, nostart."""
    with tarfile.open(BUNDLE) as tar:
        tar.extractall(dest / "unpacked", filter="tar")
    (real,) = (dest / "unpacked").iterdir()
    for name in ("good", "altered", "nosums", "unlisted", "next", "truncated", "checkfail", "nostart"):
        shutil.copytree(real, dest / name, symlinks=True)
    pip_wheel = next((dest / "altered" / "wheels").glob("pip-*.whl"))
    data = bytearray(pip_wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of one wheel
    pip_wheel.write_bytes(bytes(data))
    (dest / "nosums" / "SHA256SUMS").unlink()
    (dest / "unlisted" / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + bytes(18))
    rewrite_wheel(dest / "next", f"{VERSION}+next")
    wheel = rewrite_wheel(dest / "truncated", f"{VERSION}+truncated")
    wheel.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])
    rewrite_wheel(dest / "checkfail", f"{VERSION}+checkfail", {"inferd/engine/models.py": BROKEN_LOAD})
    rewrite_wheel(dest / "nostart", f"{VERSION}+nostart")
    for name in ("next", "truncated", "checkfail", "nostart"):
        write_sums(dest / name)
    shutil.rmtree(dest / "unpacked")


# What install.sh of inferd 0.1.0 did (before releases): the venv built at /opt/inferd itself.
PRE_RELEASE_INSTALL = r"""
set -eu
cd {bundles}/good
. ./bundle.env
python3 -m venv --without-pip ${{SYSTEM_SITE_PACKAGES:+--system-site-packages}} /opt/inferd
PIP_ROOT_USER_ACTION=ignore /opt/inferd/bin/python "$(ls wheels/pip-*.whl)/pip" install -q --no-index \
    --no-deps --no-cache-dir --disable-pip-version-check wheels/*.whl
install -D -m 0644 systemd/inferd.sysusers /etc/sysusers.d/inferd.conf
install -D -m 0644 systemd/inferd.tmpfiles /etc/tmpfiles.d/inferd.conf
install -D -m 0644 systemd/inferd.service /etc/systemd/system/inferd.service
systemd-sysusers /etc/sysusers.d/inferd.conf
systemd-tmpfiles --create /etc/tmpfiles.d/inferd.conf
install -m 0640 -o inferd -g inferd models/* /var/lib/inferd/models/
install -D -m 0644 inferd.yaml /etc/inferd/inferd.yaml
ln -sfn /opt/inferd/bin/inferd /usr/local/bin/inferd
systemctl enable inferd.service
"""


@pytest.fixture(scope="module")
def board() -> Path:
    """A copy of the root filesystem without any inferd, with the test bundles in /root/bundles."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    if not (ROOTFS / "usr/bin/python3").exists() or not BUNDLE.exists():
        pytest.skip(f"{ROOTFS} or {BUNDLE} is not built (make -C qemu test-user ARCH={ARCH})")
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    assert not [m for m in mounts if m.startswith(f"{ROOTFS}/") or m.startswith(f"{BOARD}/")], "mounts left"
    if BOARD.exists():
        shutil.rmtree(BOARD)
    subprocess.run(["cp", "-a", "--reflink=auto", str(ROOTFS), str(BOARD)], check=True)
    for p in ("opt/inferd", "opt/inferd-releases", "opt/inferd-test", "opt/inferd-src",
              "usr/local/bin/inferd", "etc/inferd", "var/lib/inferd", "etc/systemd/system/inferd.service",
              "etc/systemd/system/inferd-capture@.service",
              "etc/systemd/system/multi-user.target.wants/inferd.service"):  # fmt: skip
        target = BOARD / p
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
    make_bundles(BOARD / BUNDLES.lstrip("/"))
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    if ARCH == "armv7":
        proc = chroot("sh", "-c", PRE_RELEASE_INSTALL.format(bundles=BUNDLES))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return BOARD


# --- what the board looks like --------------------------------------------------------------------------
def state(board: Path) -> dict[str, str]:
    """Every entry under the places install.sh writes: type, link target or content hash, mode, mtime."""
    out = {}
    places = ("opt", "etc/systemd/system", "etc/sysusers.d", "etc/tmpfiles.d", "etc/inferd", "usr/local/bin",
              "var/lib/inferd")  # fmt: skip
    for top in places:
        paths = [Path(d) / n for d, dirs, names in os.walk(board / top) for n in ["", *dirs, *names]]
        for p in paths:
            st = p.lstat()
            if p.is_symlink():
                what = "-> " + os.readlink(p)
            elif p.is_file():
                what = sha256(p.read_bytes())
            else:
                what = "dir"
            out[str(p.relative_to(board))] = f"{what} {st.st_mode:o} {st.st_mtime_ns}"
    return out


def current(board: Path) -> str:
    return os.readlink(board / "opt/inferd")


def previous(board: Path) -> str | None:
    link = board / "opt/inferd-releases/previous"
    return os.readlink(link) if link.is_symlink() else None


def releases(board: Path) -> list[str]:
    folder = board / "opt/inferd-releases"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def assert_works(expected_version: str) -> None:
    """/opt/inferd/bin/inferd (the unit's ExecStart) and /usr/local/bin/inferd run that version, and
    its `inferd check` passes on the board's config and models."""
    for exe in ("/opt/inferd/bin/inferd", "/usr/local/bin/inferd"):
        proc = chroot(exe, "--version")
        assert proc.returncode == 0 and proc.stdout.strip() == f"inferd {expected_version}", (exe, proc)
    proc = chroot("/opt/inferd/bin/inferd", "check", "-c", "/etc/inferd/inferd.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the tests, in order ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bundle", "named"),
    [("altered", r"wheels/pip-[^ ]+\.whl does not match SHA256SUMS"), ("nosums", "SHA256SUMS is missing"),
     ("unlisted", r"wheels/extra-1\.0-py3-none-any\.whl not listed in SHA256SUMS")],
)  # fmt: skip
def test_an_altered_bundle_is_refused_before_anything_changes(board, bundle, named):
    before = state(board)
    proc = install(bundle)
    assert proc.returncode == 1, proc.stdout
    assert re.search(f"refusing the bundle in {BUNDLES}/{bundle}: {named}", proc.stdout), proc.stdout
    assert "Nothing was changed" in proc.stdout
    assert state(board) == before


# A board without python3-av: a stand-in dpkg-query (first on the chroot's PATH) that does not know
# it and passes every other question to the real one.
NO_PYTHON3_AV = """#!/bin/sh
for last; do :; done
if [ "$last" = python3-av ]; then echo "dpkg-query: no packages found matching python3-av" >&2; exit 1; fi
exec /usr/bin/dpkg-query "$@"
"""


@contextlib.contextmanager
def without_python3_av(board: Path):
    fake = board / "usr/local/bin/dpkg-query"
    fake.write_text(NO_PYTHON3_AV)
    fake.chmod(0o755)
    try:
        yield
    finally:
        fake.unlink()


def test_armv7_without_python3_av_is_refused_before_anything_changes(board):
    """armv7: `inferd capture` decodes with Debian's python3-av; install.sh asks for it (and names
    --no-capture) before touching anything. aarch64 deselects this (PyAV is a wheel there)."""
    assert ARCH == "armv7"
    with without_python3_av(board):
        before = state(board)
        proc = install("good", name="good-without-python3-av")
        after = state(board)
    assert proc.returncode == 1, proc.stdout
    assert "missing Debian packages: python3-av" in proc.stdout and "apt install python3-av" in proc.stdout
    assert "--no-capture" in proc.stdout and "Nothing was changed" in proc.stdout, proc.stdout
    assert after == before


def test_the_bundle_installs_beside_the_old_tree_and_switches_to_it(board):
    pre_release = (board / "opt/inferd").is_dir() and not (board / "opt/inferd").is_symlink()
    assert pre_release == (ARCH == "armv7")  # armv7: as install.sh of 0.1.0 left it
    proc = install("good")
    assert proc.returncode == 0, proc.stdout
    assert "bundle verified" in proc.stdout
    assert (board / "opt/inferd").is_symlink()
    name = current(board).removeprefix("inferd-releases/")
    assert re.fullmatch(rf"{re.escape(VERSION)}-\d{{8}}T\d{{6}}Z", name), name
    tree = board / "opt/inferd-releases" / name
    assert (tree / "share/doc/inferd/build-info.json").exists()
    assert (tree / "share/inferd/install.sh").exists()  # --rollback without the bundle
    assert (tree / "share/inferd/systemd/inferd.service").exists()
    assert (board / "etc/systemd/system/multi-user.target.wants/inferd.service").is_symlink()  # enabled
    assert "capture: yes" in proc.stdout  # install.sh imported av and paho.mqtt.client from the tree
    assert (tree / "share/inferd/systemd/inferd-capture@.service").exists()
    assert (board / "etc/systemd/system/inferd-capture@.service").exists()  # the template unit
    assert sorted(os.listdir(board / "etc/inferd/capture")) == ["example.yaml.sample"]
    assert not list((board / "etc/systemd/system").glob("*.wants/inferd-capture@*"))  # nothing enabled
    assert_works(VERSION)
    if pre_release:  # the old folder is kept as the version to roll back to, and still complete
        assert previous(board) == f"{VERSION}-preinstall"
        assert (board / f"opt/inferd-releases/{VERSION}-preinstall/bin/inferd").exists()
    else:
        assert previous(board) is None


def test_an_upgrade_keeps_the_previous_version_for_rollback(board):
    """With --no-capture: aarch64 leaves PyAV's wheel out; armv7 no longer needs python3-av (this
    board pretends not to have it)."""
    old = current(board)
    with without_python3_av(board):
        proc = install("next", "--no-capture")
    assert proc.returncode == 0, proc.stdout
    assert "capture: no (--no-capture)" in proc.stdout
    assert current(board).startswith(f"inferd-releases/{VERSION}+next-")
    assert previous(board) == old.removeprefix("inferd-releases/")
    site = (
        board
        / current(board).replace("inferd-releases", "opt/inferd-releases")
        / "lib/python3.11/site-packages"
    )
    assert list(site.glob("paho_mqtt-*.dist-info")), "paho-mqtt is always installed"
    assert list(site.glob("av-*.dist-info")) == []  # aarch64: not installed; armv7: never in the venv
    assert_works(f"{VERSION}+next")
    # Only the current and the previous tree are kept.
    assert releases(board) == sorted([current(board).split("/")[1], previous(board), "previous"])


def test_rollback_restores_the_previous_version_without_the_bundle(board):
    new, old = current(board), previous(board)
    proc = chroot("sh", "-c", "/opt/inferd/share/inferd/install.sh --rollback 2>&1")
    (ARTIFACTS / "rollback.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout
    assert current(board) == f"inferd-releases/{old}"
    assert previous(board) == new.removeprefix("inferd-releases/")  # rolling back again rolls forward
    assert_works(VERSION)


def test_a_wheel_that_does_not_install_leaves_the_running_version(board):
    before = (current(board), previous(board), releases(board))
    proc = install("truncated")
    assert proc.returncode == 1, proc.stdout
    assert "bundle verified" in proc.stdout  # SHA256SUMS matches: pip is what fails
    assert "pip could not install the bundle's wheels" in proc.stdout, proc.stdout
    assert "removed the unfinished" in proc.stdout
    assert (current(board), previous(board), releases(board)) == before
    assert_works(VERSION)


def test_a_version_that_fails_inferd_check_is_not_switched_to(board):
    before = (current(board), previous(board), releases(board))
    proc = install("checkfail")
    assert proc.returncode == 1, proc.stdout
    assert "broken on purpose" in proc.stdout and "fails 'inferd check'" in proc.stdout, proc.stdout
    assert (current(board), previous(board), releases(board)) == before
    assert_works(VERSION)


# A stand-in for systemctl in a chroot without systemd: "inferd.service" comes up unless the version
# /opt/inferd points at is a +nostart one (as a version whose `inferd run` dies after `inferd check`
# passed would). Every call is logged.
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >>/root/systemctl.log
up() { ! /opt/inferd/bin/inferd --version | grep -q nostart; }
case "$1" in
restart|start) up ;;
is-active) up ;;
show) echo 4242 ;;
*) exit 0 ;;
esac
"""


def test_a_version_the_service_does_not_stay_active_with_is_switched_back(board):
    before = (current(board), previous(board), releases(board))
    fake = board / "usr/local/sbin/systemctl"
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(0o755)
    (board / "run/systemd/system").mkdir(parents=True, exist_ok=True)
    try:
        proc = install("nostart")
        calls = (board / "root/systemctl.log").read_text().splitlines()
    finally:
        fake.unlink()
        shutil.rmtree(board / "run/systemd/system")
    (ARTIFACTS / "systemctl-calls.log").write_text("\n".join(calls))
    assert proc.returncode == 1, proc.stdout
    assert "did not stay active: switching back to" in proc.stdout, proc.stdout
    assert [c for c in calls if c.startswith("restart")] == ["restart inferd", "restart inferd"], calls
    assert (current(board), previous(board), releases(board)) == before  # the failed tree is gone
    assert_works(VERSION)
