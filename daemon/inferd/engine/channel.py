"""The line between the daemon and one worker process: a Unix stream socketpair, carrying
messages of a few parts each (messages.py says which).

On the wire a message is [size, part count, part lengths..., parts...] (little-endian uint32s; size
counts what follows it). One `sendmsg` per message, the parts gathered by the kernel; the reader
takes whatever has arrived in one `recv_into` and cuts the whole messages out of it. Why not a
ZeroMQ socket: between two processes each message through ZeroMQ wakes a libzmq IO thread on
both sides (four wake-ups a hop); here the writer's system call wakes the reader and nothing else.
A round trip costs a third of the CPU (docs/performance.md, "Worker processes' line").

The daemon's side never blocks: reads and writes are MSG_DONTWAIT, and what the socket cannot take
waits in a backlog sent before anything else. A worker's side blocks on both (it has nothing else
to do). The end of the stream (`read` returns False) is the other side's death or close.
"""

from __future__ import annotations

import math
import select
import socket
import struct
from collections import deque

_U32 = struct.Struct("<I")
_HEADS: dict[int, struct.Struct] = {}
_DONTWAIT = socket.MSG_DONTWAIT
_FIRST = 64 * 1024  # the read buffer's first size; it grows to hold the largest message


def _head(parts: int) -> struct.Struct:
    head = _HEADS.get(parts)
    if head is None:
        head = _HEADS[parts] = struct.Struct(f"<II{parts}I")
    return head


def _view(part) -> memoryview | bytes:
    """A part as bytes the kernel can gather (an array's own memory, not a copy)."""
    if isinstance(part, bytes):
        return part
    view = memoryview(part)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def pair() -> tuple[socket.socket, socket.socket]:
    """(the daemon's end, the worker's end), both close-on-exec until passed to the worker."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


class Channel:
    """One end of a line: whole messages in, whole messages out."""

    def __init__(self, sock: socket.socket, blocking: bool) -> None:
        self.sock, self.blocking = sock, blocking
        self.buf = bytearray(_FIRST)
        self.view = memoryview(self.buf)
        self.start = self.end = 0  # the unread bytes are buf[start:end]
        self.messages: deque[list[bytes]] = deque()
        self.backlog: deque[memoryview] = deque()  # the daemon's side: bytes the socket refused
        self.open = True
        self._poll = None

    def fileno(self) -> int:
        return self.sock.fileno()

    # ---- writing -----------------------------------------------------------------------------

    def send(self, parts: list) -> None:
        """Send one message: the daemon's side queues what the socket cannot take now."""
        views = [_view(p) for p in parts]
        lengths = [len(v) if isinstance(v, bytes) else v.nbytes for v in views]
        n = len(views)
        head = _head(n).pack(4 + 4 * n + sum(lengths), n, *lengths)
        buffers = [head, *views]
        total = len(head) + sum(lengths)
        if self.blocking:
            self._send_all(buffers, total)
            return
        if self.backlog:  # behind what is waiting already
            self.backlog.append(memoryview(b"".join(buffers)))
            self.flush()
            return
        try:
            sent = self.sock.sendmsg(buffers, (), _DONTWAIT)
        except BlockingIOError:
            sent = 0
        if sent < total:
            self.backlog.append(memoryview(b"".join(buffers))[sent:])

    def _send_all(self, buffers: list, total: int) -> None:
        sent = self.sock.sendmsg(buffers)
        while sent < total:  # a large message goes in pieces: drop what went, send the rest
            total -= sent
            while sent:
                first = buffers[0]
                size = len(first) if isinstance(first, bytes) else first.nbytes
                if size <= sent:
                    buffers.pop(0)
                    sent -= size
                else:
                    buffers[0] = memoryview(first)[sent:]
                    sent = 0
            sent = self.sock.sendmsg(buffers)

    def flush(self) -> None:
        """The daemon's side: send what waits in the backlog, as far as the socket takes it."""
        backlog = self.backlog
        while backlog:
            try:
                sent = self.sock.send(backlog[0], _DONTWAIT)
            except BlockingIOError:
                return
            if sent < backlog[0].nbytes:
                backlog[0] = backlog[0][sent:]
                return
            backlog.popleft()

    # ---- reading -----------------------------------------------------------------------------

    def read(self) -> bool:
        """Take in what has arrived (the worker's side: wait for at least one message); False at
        the end of the stream. The whole messages go to `messages`."""
        flags = 0 if self.blocking and not self.messages else _DONTWAIT
        for _ in range(64):  # the daemon's side: a bounded turn (its poll says when more is there)
            if self.end == len(self.buf):
                self._make_room()
            room = len(self.buf) - self.end
            try:
                got = self.sock.recv_into(self.view[self.end :], 0, flags)
            except BlockingIOError:
                return True
            except ConnectionResetError:
                got = 0
            if got == 0:
                self.open = False
                return False
            self.end += got
            self._cut()
            if got < room and (self.messages or not self.blocking):
                return True  # it took all there was: no second call just to hear EAGAIN
            if self.messages:
                flags = _DONTWAIT  # a blocking reader has its message: take the rest only if there
        return True

    def _cut(self) -> None:
        buf, view, start, end = self.buf, self.view, self.start, self.end
        unpack = _U32.unpack_from
        while end - start >= 8:
            size, n = unpack(buf, start)[0], unpack(buf, start + 4)[0]
            if end - start - 4 < size:
                break
            lengths = _head(n).unpack_from(buf, start)[2:]
            at = start + 8 + 4 * n
            parts = []
            for length in lengths:  # one copy out of the buffer, which the next read overwrites
                parts.append(view[at : at + length].tobytes())
                at += length
            self.messages.append(parts)
            start += 4 + size
        self.start = start

    def _make_room(self) -> None:
        """Move the unread bytes to the front; grow the buffer if a message needs more."""
        start, end = self.start, self.end
        need = end - start
        if need >= 4:
            need = max(need, 4 + _U32.unpack_from(self.buf, start)[0])
        if need >= len(self.buf):
            size = len(self.buf)
            while size <= need:
                size *= 2
            buf = bytearray(size)
            buf[: end - start] = self.buf[start:end]
            self.view.release()
            self.buf, self.view = buf, memoryview(buf)
        else:
            self.buf[: end - start] = self.buf[start:end]
        self.start, self.end = 0, end - start

    def wait(self, timeout: float | None) -> bool:
        """The worker's side: whether a message is there within `timeout` seconds (None: forever)."""
        if self.messages:
            return True
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.sock.fileno(), select.POLLIN)
        return bool(self._poll.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))

    def recv(self) -> list[bytes] | None:
        """The worker's side: the next message (waiting for it), or None at the end of the stream."""
        while not self.messages:
            if not self.read():
                return self.messages.popleft() if self.messages else None
        return self.messages.popleft()

    def close(self) -> None:
        self.open = False
        self.view.release()
        self.sock.close()
