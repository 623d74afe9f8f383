"""What the daemon and its worker processes say to each other, on two lines per worker (Unix
socketpairs, channel.py). Small fixed headers: the pixels are in the slots.

daemon -> worker   [FRAME meta + frame header JSON, inline payloads...]  (one part; inline: no slot)
worker -> daemon   [RESULT token, topic, header, tensors...]             a streamed frame's result
                   [REPLY token, parts...]                               a router/frigate frame's answer
                   [DROP|REJECT|ERROR token, reason, message]            counted (and answered) by the daemon
                   [EVENTS token, topic, event JSON...]                  zone events to publish (before the
                                                                         frame's answer; the token stays open)
                   [HELLO]                                               model loaded, frames welcome
daemon -> tally    [SYNC id]                                             a scrape wants the counts now
tally -> daemon    [METRICS id, json]                                    a Tally's rows (tally.py); id 0:
                                                                         the every-second heartbeat
The tally line is served by its own thread in the worker, so it answers while the worker is
inside an inference. The daemon closing the frame line tells the worker to stop."""

from __future__ import annotations

import struct

FRAME = b"F"
RESULT, REPLY, DROP, REJECT, ERROR, METRICS, HELLO, EVENTS = b"P", b"R", b"D", b"J", b"E", b"M", b"H", b"V"
SYNC = b"Y"
SYNC_ID = struct.Struct("<cQ")  # SYNC or METRICS, sync id

STREAM, ROUTER, FRIGATE = 0, 1, 2  # how a frame is answered
# token, received (monotonic), received (wall), max_age_ms (<0: none), max_elements (<0: none),
# slot (<0: payloads inline), how answered, part count; then (offset, length) per part
META = struct.Struct("<QddqqiBB")
PART = struct.Struct("<QQ")
TOKEN = struct.Struct("<cQ")  # a worker's answer: kind, token


def pack_frame(token, received, wall, max_age, max_elements, slot, how, spans, header) -> bytes:
    """FRAME, its meta, its spans and the frame's header in one part."""
    head = META.pack(token, received, wall, max_age, max_elements, slot, how, len(spans))
    return b"".join((FRAME, head, *(PART.pack(o, n) for o, n in spans), header))


def unpack_frame(data) -> tuple:
    """(token, received, wall, max_age, max_elements, slot, how, spans, header bytes)."""
    token, received, wall, max_age, max_elements, slot, how, n = META.unpack_from(data, 1)
    at = 1 + META.size
    spans = [PART.unpack_from(data, at + i * PART.size) for i in range(n)]
    return token, received, wall, max_age, max_elements, slot, how, spans, data[at + n * PART.size :]
