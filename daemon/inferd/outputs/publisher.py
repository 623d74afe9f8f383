"""The results socket: an XPUB that publishes `<model>/<source>` and answers subscribers' hellos.

ZeroMQ's slow joiner: a SUB socket that has just connected misses whatever is published before
its subscription reaches the publisher. So a subscriber that must not miss a result subscribes
to its topics and then to a unique `!hello/<nonce>` topic; the IO thread reads the XPUB's
subscription messages and publishes one message on that topic. Subscriptions travel in order on
one connection, so when the hello arrives every topic subscribed before it is in place.
Topics starting with `!` are control messages: no model name can start with one.
"""

from __future__ import annotations

import logging
import threading

import zmq

from inferd.protocol import HELLO, VERSION, encode_header

log = logging.getLogger("inferd.transport")

_HELLO_BODY = encode_header({"v": VERSION, "status": "hello", "server": "inferd"})


def bind_results(ctx: zmq.Context, address: str, sndhwm: int, secure=None) -> zmq.Socket:
    """An XPUB bound to `address`; `secure(sock)` sets CURVE/ZAP options before the bind."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, sndhwm)
    pub.setsockopt(zmq.LINGER, 1000)
    try:
        if secure is not None:
            secure(pub)
        pub.bind(address)
    except (zmq.ZMQError, OSError):
        pub.close(linger=0)
        raise
    return pub


def answer_hellos(pub: zmq.Socket | None, lock: threading.Lock, budget: int = 64) -> int:
    """Read the XPUB's subscription messages; publish a hello for each `!hello/` one."""
    answered = 0
    if pub is None:
        return 0
    with lock:  # the workers publish on this socket under the same lock
        for _ in range(budget):
            try:
                msg = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as e:  # a socket closed under us by a reload
                log.debug("results socket: %s", e)
                break
            if msg[:1] == b"\x01" and msg[1:].startswith(HELLO):
                try:
                    pub.send(msg[1:], zmq.SNDMORE | zmq.NOBLOCK)
                    pub.send(_HELLO_BODY, zmq.NOBLOCK)
                    answered += 1
                except zmq.Again:
                    pass  # that subscriber is full: it asks again or times out
    return answered
