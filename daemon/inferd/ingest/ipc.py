"""ipc:// socket files: claimed before a bind, removed after a close, never another process's."""

from __future__ import annotations

import os
import socket
import stat
import struct


def prepare_ipc(address: str) -> None:
    """Before binding an ipc:// address: create its folder (under systemd, RuntimeDirectory= does),
    and refuse a path that a live process serves. libzmq unlinks whatever file is there and binds
    anew, so a second daemon would silently take the first one's socket; a stale file of a dead
    process (nothing accepts on it) is left for libzmq to replace."""
    if not address.startswith("ipc://") or address.startswith("ipc://@"):
        return  # the abstract namespace: bind itself fails with EADDRINUSE
    path = address[len("ipc://") :]
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        try:
            os.makedirs(folder, mode=0o750, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create its folder {folder}: {e.strerror}") from None
    pid = ipc_listener(path)
    if pid is not None and pid != os.getpid():  # our own (a reload re-binding it) is not in use
        raise OSError(f"in use by another process ({f'pid {pid}' if pid else 'pid unknown'})")


def ipc_listener(path: str) -> int | None:
    """The pid of the process accepting connections on a Unix socket file (0 if it cannot be
    told), or None when nothing accepts there (no file, not a socket, a stale file)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:  # ECONNREFUSED: nobody listens (a dead process's file)
            return None
        try:  # the listener's credentials, as the kernel recorded them when it called listen()
            creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            return struct.unpack("3i", creds)[0]
        except OSError:
            return 0


def unlink_ipc(address: str | None) -> None:
    """Remove the socket file of an ipc:// address we bound (libzmq leaves it when the process exits
    before its I/O thread has torn the listener down)."""
    if not address or not address.startswith("ipc://") or address.startswith("ipc://@"):
        return
    path = address[len("ipc://") :]
    if ipc_listener(path) not in (None, os.getpid()):
        return  # another process serves that path now: its socket, not ours to remove
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
