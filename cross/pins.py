"""The bundle's pinned Python packages (run by the cross/ scripts with the project venv's python).

    pins.py roots ARCH WHEEL            the top-level requirements of ARCH's wheelhouse, one a line
    pins.py roots build                 the build backend's (pyproject.toml's [build-system] requires)
    pins.py lock ARCH DIR OUT REQ...    write OUT (requirements-ARCH.txt): `==` and `--hash=sha256:`
                                        for every wheel in DIR (not inferd's), resolved from REQ...
    pins.py check LOCK DIR              DIR holds exactly the wheels LOCK pins (and inferd's own)
    pins.py build-info ARCH DIR [DPKG SITE]  build-info.json for the bundle/.deb made from the
                                        wheelhouse DIR; for the .deb, DPKG: `dpkg-query -W` output of
                                        its chroot, SITE: its venv's site-packages
    pins.py compare DIR_A DIR_B         sha256 of every file under both folders: exit 1 on a difference

roots: aarch64 is inferd[onnx,tflite,capture,mqtt] with everything it depends on (PyAV's wheel
carries FFmpeg); armv7 is inferd's base dependencies and the capture and mqtt extras without those
Debian provides on the board (numpy, pyzmq, PyYAML, Pillow, PyAV: no armv7l wheels), and
tflite-runtime from the tflite-legacy extra (downloaded --no-deps: its numpy is Debian's). Both
carry pip, which install.sh runs from its wheel.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
# numpy, pyzmq, PyYAML, Pillow and PyAV have no armv7l wheels on PyPI: the armv7 bundle uses Debian's
# (python3-av only for `inferd capture`: install.sh asks for it unless --no-capture).
FROM_DEBIAN = {
    "numpy": "python3-numpy",
    "pyzmq": "python3-zmq",
    "pyyaml": "python3-yaml",
    "pillow": "python3-pil",
    "av": "python3-av",
}
# The extras every bundle and the .deb carry besides a runtime: `inferd capture` and MQTT publishing.
EXTRAS = ("capture", "mqtt")
# The versions build-info.json lists first (the rest follow under "packages").
SHOWN = ("numpy", "pyzmq", "onnxruntime", "ai-edge-litert", "tflite-runtime", "pydantic", "pillow",
         "prometheus-client", "pyyaml", "av", "paho-mqtt")  # fmt: skip
# Debian packages of the .deb's chroot whose versions matter most to the venv.
DEBIAN_SHOWN = ("python3.11", "libpython3.11-stdlib", "libc6", "libstdc++6", "libgcc-s1")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


def roots(arch: str, wheel: Path | None) -> list[str]:
    if arch == "build":
        return tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    assert wheel is not None
    meta = wheel_metadata(wheel)
    if arch == "aarch64":
        return [f"{wheel}[{','.join(('onnx', 'tflite', *EXTRAS))}]", "pip"]
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        marker = str(req.marker or "").replace("'", '"')
        if name in FROM_DEBIAN:
            continue
        if "extra ==" not in marker:
            out.append(str(req))
        elif marker in {f'extra == "{e}"' for e in EXTRAS}:
            req.marker = None
            out.append(str(req))
        elif marker == 'extra == "tflite-legacy"':
            req.marker = None
            out.append(f"--no-deps {req}")
    return [*out, "pip"]


def wheels(folder: Path) -> dict[str, tuple[str, Path]]:
    """{canonical name: (version, path)} of the wheels in folder."""
    out = {}
    for w in sorted(folder.glob("*.whl")):
        name, ver, _, _ = parse_wheel_filename(w.name)
        out[str(name)] = (str(ver), w)
    return out


def lock(arch: str, folder: Path, out: Path, requirements: list[str]) -> None:
    found = {n: v for n, v in wheels(folder).items() if n != "inferd"}
    # The inferd wheel's path is shown as the project: inferd[onnx,tflite].
    shown = " ".join("inferd" + r[r.index(".whl") + 4 :] if ".whl" in r else r for r in requirements)
    if arch == "build":
        head = [
            f"# {out.name}: the inferd wheel's build backend (cross/10-wheel.sh, no build isolation).",
            "# Generated on purpose, never by a build: make -C cross lock-build (review the diff, commit).",
            f"# Generated {datetime.now(UTC):%Y-%m-%d} from [build-system] requires: {shown}",
        ]
    else:
        head = [
            f"# {out.name}: the exact wheels of the {arch} bundle (cross/20-wheelhouse.sh downloads them",
            "# with --require-hashes). Generated on purpose, never by a build:",
            f"#   make -C cross lock ARCH={arch}   (PyPI's newest today; review the diff, commit it)",
            f"# Generated {datetime.now(UTC):%Y-%m-%d} from: {shown}",
        ]
    lines = [f"{name}=={ver} \\\n    --hash=sha256:{sha256(path)}" for name, (ver, path) in found.items()]
    out.write_text("\n".join(head) + "\n" + "\n".join(lines) + "\n")
    print(f"{out}: {len(lines)} pinned: " + ", ".join(f"{n} {v}" for n, (v, _) in found.items()))


def pinned(lock_file: Path) -> dict[str, tuple[str, str]]:
    """{name: (version, sha256)} from a lock file written by `lock`."""
    out, text = {}, lock_file.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            spec, *opts = line.split()
            name, ver = spec.split("==")
            out[str(canonicalize_name(name))] = (
                ver,
                next(o.split(":", 1)[1] for o in opts if "sha256:" in o),
            )
    return out


def check(lock_file: Path, folder: Path) -> int:
    want, have = pinned(lock_file), {n: v for n, v in wheels(folder).items() if n != "inferd"}
    problems = [f"missing {n}=={v}" for n, (v, _) in want.items() if n not in have]
    problems += [f"not pinned: {p.name}" for n, (_, p) in have.items() if n not in want]
    problems += [
        f"{p.name}: sha256 {sha256(p)} is not the pinned {want[n][1]}"
        for n, (_, p) in have.items()
        if n in want and sha256(p) != want[n][1]
    ]
    for p in problems:
        print(f"{folder}: {p}", file=sys.stderr)
    return 1 if problems else 0


def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def git_dirty() -> bool:
    """Uncommitted changes to what goes into the inferd wheel."""
    return bool(git("status", "--porcelain", "-uno", "--", "daemon", "pyproject.toml"))


def build_info(arch: str, folder: Path, dpkg: Path | None, site: Path | None = None) -> dict:
    found = wheels(folder)
    if site is not None:  # the .deb: only what its venv holds (not pip, which install.sh needs)
        installed = {str(canonicalize_name(d.name.split("-")[0])) for d in site.glob("*.dist-info")}
        found = {n: v for n, v in found.items() if n in installed}
    versions: dict[str, str | None] = {"inferd": found["inferd"][0]}
    debian = {}
    if dpkg is not None:
        debian = dict(line.split("\t", 1) for line in dpkg.read_text().splitlines() if "\t" in line)
        versions["python"] = f"{debian.get('python3.11', '?')} (Debian python3.11 in /opt/inferd's venv)"
    else:
        versions["python"] = "3.11 (the board's python3: the wheels are cp311)"
    for name in SHOWN:
        if name in found:
            versions[name] = found[name][0]
        elif arch == "armv7" and name in FROM_DEBIAN:
            versions[name] = f"Debian {FROM_DEBIAN[name]} on the board (bookworm's; not in the bundle)"
            if name == "av":
                versions[name] += ": inferd capture's decoder, required by install.sh unless --no-capture"
        else:
            versions[name] = None
    lock_file = REPO / "cross" / f"requirements-{arch}.txt"
    info = {
        "inferd": found["inferd"][0],
        "arch": arch,
        # repro.sh builds from a snapshot without .git: it passes the repo's state in the environment.
        "git_commit": os.environ.get("INFERD_GIT_COMMIT") or git("rev-parse", "HEAD"),
        "git_dirty": os.environ.get("INFERD_GIT_DIRTY", "1" if git_dirty() else "0") == "1",
        "source_date_epoch": int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
        "lock": f"cross/{lock_file.name}",
        "lock_sha256": sha256(lock_file),
        "versions": versions,
        "packages": {n: v for n, (v, _) in found.items()},
        "wheels": {p.name: sha256(p) for _, p in found.values()},
    }
    if arch == "armv7":
        info["from_debian"] = {n: FROM_DEBIAN[n] for n in sorted(FROM_DEBIAN)}
    if debian:
        info["debian"] = {
            "note": "the .deb's venv was built in this Debian root filesystem (qemu/ step 10, debootstrap "
            "of the mirror's bookworm on the day it was made: not pinnable without snapshot.debian.org)",
            "shown": {n: debian.get(n) for n in DEBIAN_SHOWN},
            "packages": debian,
        }
    return info


def compare(a: Path, b: Path) -> int:
    def sums(d: Path) -> dict[str, str]:
        return {str(p.relative_to(d)): sha256(p) for p in sorted(d.rglob("*")) if p.is_file()}

    sa, sb = sums(a), sums(b)
    diff = sorted(n for n in sa.keys() | sb.keys() if sa.get(n) != sb.get(n))
    for n in sorted(sa):
        print(f"{'same' if n not in diff else 'DIFF'} {sa[n]} {n}")
    for n in diff:
        print(f"DIFFERENT: {n}: {sa.get(n, 'missing')} vs {sb.get(n, 'missing')}", file=sys.stderr)
    print(f"{len(sa)} files in {a}, {len(sb)} in {b}: {'identical' if not diff else f'{len(diff)} differ'}")
    return 1 if diff or not sa else 0


def main(argv: list[str]) -> int:
    cmd, *args = argv
    if cmd == "roots":
        print("\n".join(roots(args[0], Path(args[1]) if len(args) > 1 else None)))
    elif cmd == "lock":
        lock(args[0], Path(args[1]), Path(args[2]), args[3:])
    elif cmd == "check":
        return check(Path(args[0]), Path(args[1]))
    elif cmd == "build-info":
        dpkg, site = (Path(args[2]), Path(args[3])) if len(args) > 3 else (None, None)
        print(json.dumps(build_info(args[0], Path(args[1]), dpkg, site), indent=2))
    elif cmd == "compare":
        return compare(Path(args[0]), Path(args[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
