"""What the daemon and its worker processes say to each other (one ROUTER in the daemon, a DEALER
in each worker, over ipc:// in a private folder). Small fixed headers: the pixels are in the slots.

daemon -> worker   [FRAME meta, frame header JSON, inline payloads...]   (inline: no slot fits)
                   [STOP]
worker -> daemon   [RESULT token, topic, header, tensors...]             a streamed frame's result
                   [REPLY token, parts...]                               a router/frigate frame's answer
                   [DROP|REJECT|ERROR token, reason, message]            counted (and answered) by the daemon
                   [METRICS json]                                        a Tally's rows (tally.py)
                   [HELLO]                                               connected, model loaded
"""

from __future__ import annotations

import struct

FRAME, STOP = b"F", b"S"
RESULT, REPLY, DROP, REJECT, ERROR, METRICS, HELLO = b"P", b"R", b"D", b"J", b"E", b"M", b"H"

STREAM, ROUTER, FRIGATE = 0, 1, 2  # how a frame is answered
# token, received (monotonic), received (wall), max_age_ms (<0: none), max_elements (<0: none),
# slot (<0: payloads inline), how answered, part count; then (offset, length) per part
META = struct.Struct("<QddqqiBB")
PART = struct.Struct("<QQ")
TOKEN = struct.Struct("<cQ")  # a worker's answer: kind, token


def pack_meta(token, received, wall, max_age, max_elements, slot, how, spans) -> bytes:
    head = META.pack(token, received, wall, max_age, max_elements, slot, how, len(spans))
    return head + b"".join(PART.pack(o, n) for o, n in spans)


def unpack_meta(data) -> tuple:
    token, received, wall, max_age, max_elements, slot, how, n = META.unpack_from(data)
    spans = [PART.unpack_from(data, META.size + i * PART.size) for i in range(n)]
    return token, received, wall, max_age, max_elements, slot, how, spans
