"""Multipart send and receive for the hot paths, without pyzmq's per-part Python layer.

pyzmq's `send_multipart` goes through its Python `Socket.send` for every part and combines enum
flags (`SNDMORE | flags`) each time: ~6 us for a three-part message where the libzmq calls
themselves take ~1.3 us. Its `recv_multipart(NOBLOCK)` raises `zmq.Again` when nothing waits (~5
us: an exception object a read). These helpers call the compiled socket methods with int flags
and ask ZMQ_EVENTS before a non-blocking read (no exception).
"""

from __future__ import annotations

import zmq

try:  # the compiled socket under pyzmq's Python one (every pyzmq since 17; Debian's included)
    from zmq.backend import Socket as _Compiled
except ImportError:  # pragma: no cover - a pyzmq without it: the Python layer, as before
    _Compiled = zmq.Socket

MORE, NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)
_RCVMORE, _EVENTS, _POLLIN = int(zmq.RCVMORE), int(zmq.EVENTS), int(zmq.POLLIN)
_send, _recv, _get = _Compiled.send, _Compiled.recv, _Compiled.get
_FRAME_KNOWS_MORE = hasattr(zmq.Frame, "more")  # pyzmq's compiled Frame; else ask the socket


def send_message(sock: zmq.Socket, parts: list, flags: int = 0, copy: bool = True) -> None:
    """`sock.send_multipart(parts, flags, copy=copy)`, cheaper (`flags`: an int, e.g. NOBLOCK).
    A ROUTER or PUB takes or drops the whole message at its first part, as with send_multipart."""
    more = MORE | flags
    for part in parts[:-1]:
        _send(sock, part, more, copy)
    _send(sock, parts[-1], flags, copy)


def recv_message(sock: zmq.Socket, copy: bool = True) -> list | None:
    """The next whole message without blocking, or None when none is waiting (no exception)."""
    if not _get(sock, _EVENTS) & _POLLIN:
        return None
    try:
        parts = [_recv(sock, NOBLOCK, copy)]
    except zmq.Again:  # EVENTS said a message waits; a socket shared with another reader may differ
        return None
    if copy or not _FRAME_KNOWS_MORE:
        while _get(sock, _RCVMORE):
            parts.append(_recv(sock, NOBLOCK, copy))
    else:  # a Frame knows whether more follow: no socket option to ask (each costs ~1 us)
        while parts[-1].more:
            parts.append(_recv(sock, NOBLOCK, False))
    return parts


def readable(sock: zmq.Socket) -> bool:
    """Whether a message waits (ZMQ_EVENTS; also takes in the socket's pending commands)."""
    return bool(_get(sock, _EVENTS) & _POLLIN)
