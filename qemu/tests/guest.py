"""Boot the arm64 test image under qemu-system (TCG) and talk to it over ssh.

Used by qemu/tests/conftest.py, and runnable by hand (`make -C qemu boot`): boots, prints the ssh
command and the forwarded ports, and powers the guest off on Ctrl-C.

The guest gets user-mode networking with `restrict=on` (no route out: a board without network)
and host ports forwarded from 127.0.0.1 only: ssh, the inferd router port and the metrics port.
Every qemu writes a pid file in qemu/build/run/ (`make -C qemu clean-procs` kills exactly those);
`Guest.stop()` and an atexit hook make sure none outlives its Python process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

QEMU_DIR = Path(__file__).resolve().parents[1]
BUILD = QEMU_DIR / "build"
ARM64 = BUILD / "arm64"
IMAGE = ARM64 / "arm64.raw"
KERNEL = ARM64 / "vmlinuz"
INITRD = ARM64 / "initrd.img"
KEY = BUILD / "ssh" / "id_ed25519"
RUN = BUILD / "run"
ARTIFACTS = BUILD / "artifacts"

# Guest ports forwarded to free host ports on 127.0.0.1.
GUEST_PORTS = {"ssh": 22, "router": 5555, "metrics": 9464}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> list[str]:
    """What the guest needs that is not built (empty when it can boot)."""
    need = [IMAGE, KERNEL, INITRD, KEY]
    out = [str(p) for p in need if not p.exists()]
    import shutil

    if not shutil.which("qemu-system-aarch64"):
        out.append("qemu-system-aarch64 (apt-get install qemu-system-arm)")
    return out


class GuestError(RuntimeError):
    pass


class Guest:
    def __init__(
        self, console: Path | None = None, memory: int = 2048, cpus: int = 2, cpu: str = "cortex-a72"
    ):
        self.console = console or ARTIFACTS / "console.log"
        self.memory, self.cpus, self.cpu = memory, cpus, cpu
        self.ports = {name: free_port() for name in GUEST_PORTS}
        self.proc: subprocess.Popen | None = None
        self.pidfile = RUN / f"qemu-{self.ports['ssh']}.pid"
        self.boot_seconds: float | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def command(self) -> list[str]:
        fwd = ",".join(
            f"hostfwd=tcp:127.0.0.1:{self.ports[name]}-:{port}" for name, port in GUEST_PORTS.items()
        )
        return [
            "qemu-system-aarch64", "-M", "virt", "-cpu", self.cpu, "-smp", str(self.cpus),
            "-m", str(self.memory), "-display", "none", "-monitor", "none",
            "-serial", f"file:{self.console}", "-snapshot", "-pidfile", str(self.pidfile),
            "-kernel", str(KERNEL), "-initrd", str(INITRD),
            "-append", "root=/dev/vda rw console=ttyAMA0 systemd.show_status=1",
            "-drive", f"if=none,file={IMAGE},format=raw,id=hd0", "-device", "virtio-blk-device,drive=hd0",
            "-netdev", f"user,id=net0,restrict=on,{fwd}", "-device", "virtio-net-device,netdev=net0",
        ]  # fmt: skip

    def start(self) -> Guest:
        if lack := missing():
            raise GuestError("cannot boot, missing: " + ", ".join(lack) + " (make -C qemu image)")
        RUN.mkdir(parents=True, exist_ok=True)
        self.console.parent.mkdir(parents=True, exist_ok=True)
        self.console.write_text("")
        cmd = self.command()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        atexit.register(self.stop)
        self.t0 = time.monotonic()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _dead(self, what: str) -> GuestError:
        out = self.proc.stdout.read().decode(errors="replace") if self.proc and self.proc.stdout else ""
        return GuestError(
            f"qemu exited ({self.proc.returncode}) while {what}: {out.strip()}\n"
            f"--- console ({self.console}) ---\n{self.console_tail()}"
        )

    def wait_ssh(self, timeout: float = 300.0, progress=None) -> float:
        """Until `ssh true` works; returns the seconds since qemu started."""
        deadline, last = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            if not self.alive():
                raise self._dead("booting")
            if self.ssh("true", check=False, timeout=15, connect_timeout=5).returncode == 0:
                self.boot_seconds = time.monotonic() - self.t0
                return self.boot_seconds
            if progress and time.monotonic() - last > 10:
                last = time.monotonic()
                tail = self.console_tail(1).strip()
                progress(f"booting ({time.monotonic() - self.t0:.0f} s): {tail[:100]}")
            time.sleep(2)
        raise GuestError(f"no ssh after {timeout:.0f} s\n--- console ---\n{self.console_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """`systemctl poweroff` over ssh (qemu then exits by itself), else kill qemu. Idempotent."""
        if self.proc is None:
            return
        if self.alive():
            with contextlib.suppress(Exception):
                self.ssh("systemctl poweroff", check=False, timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.pidfile.unlink(missing_ok=True)
        self.proc = None

    # --- commands --------------------------------------------------------------------------------
    def ssh_args(self, connect_timeout: int = 10) -> list[str]:
        return [
            "ssh", "-i", str(KEY), "-p", str(self.ports["ssh"]), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={connect_timeout}", "-o", "ServerAliveInterval=10", "root@127.0.0.1",
        ]  # fmt: skip

    def ssh(
        self, command: str, check: bool = True, timeout: float = 120, connect_timeout: int = 10, input=None
    ) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(
                [*self.ssh_args(connect_timeout), command], capture_output=True, text=True,
                timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            if check:
                raise GuestError(f"ssh {command!r}: no answer in {timeout} s") from e
            return subprocess.CompletedProcess(command, 255, "", "timeout")
        if check and proc.returncode != 0:
            raise GuestError(f"ssh {command!r} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def put(self, local: Path, remote: str, timeout: float = 300) -> None:
        """Copy a file in (over the ssh channel: the guest needs no scp/sftp server set-up)."""
        with open(local, "rb") as f:
            cmd = [*self.ssh_args(), f"cat > {shlex.quote(remote)}"]
            proc = subprocess.run(cmd, stdin=f, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise GuestError(f"copying {local} to {remote} failed: {proc.stderr.decode(errors='replace')}")

    def write(self, remote: str, text: str) -> None:
        self.ssh(
            f"mkdir -p {shlex.quote(str(Path(remote).parent))} && cat > {shlex.quote(remote)}", input=text
        )


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM/SIGHUP too (and SIGINT even when started in the background, where it is ignored).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    guest = Guest(console=BUILD / "boot-console.log").start()
    print(f"qemu started; console: {guest.console}", flush=True)
    try:
        secs = guest.wait_ssh(progress=lambda s: print(s, flush=True))
        print(f"ssh up after {secs:.0f} s. Forwarded (127.0.0.1): {guest.ports}")
        print("ssh: " + " ".join(shlex.quote(a) for a in guest.ssh_args()))
        print("Ctrl-C powers the guest off.", flush=True)
        while guest.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        print("\npowering off", flush=True)
    finally:
        guest.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
