"""The hot paths' multipart send and receive (ingest/parts.py) on real sockets: whole messages in
order, frames or bytes, None (not an exception) when nothing waits, whole-message drops at a
PUB's high-water mark."""

import time

import numpy as np
import pytest
import zmq

from inferd.ingest.parts import NOBLOCK, readable, recv_message, send_message


@pytest.fixture
def pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://parts")
    b.connect("inproc://parts")
    yield a, b
    ctx.destroy(linger=0)


def test_whole_messages_arrive_in_order_as_bytes_or_frames(pair):
    a, b = pair
    tensor = np.arange(12, dtype=np.float32)
    send_message(a, [b"topic", b"head", tensor], copy=False)
    send_message(a, [b"single"])
    send_message(a, [b"x", b"", b"y"], NOBLOCK)
    first = recv_message(b, copy=False)
    assert [type(p) for p in first] == [zmq.Frame] * 3
    assert first[0].bytes == b"topic" and first[1].bytes == b"head"
    assert np.array_equal(np.frombuffer(first[2].buffer, np.float32), tensor)
    assert recv_message(b) == [b"single"]
    assert recv_message(b) == [b"x", b"", b"y"]


def test_nothing_waiting_is_none_not_an_exception(pair):
    a, b = pair
    assert not readable(b)
    assert recv_message(b) is None
    assert recv_message(b, copy=False) is None
    send_message(a, [b"late"])
    assert readable(b)
    assert recv_message(b) == [b"late"]
    assert recv_message(b) is None


def test_a_full_pub_drops_whole_messages_without_blocking():
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        pub.setsockopt(zmq.SNDHWM, 4)
        sub.setsockopt(zmq.RCVHWM, 4)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.connect(f"tcp://127.0.0.1:{port}")
        time.sleep(0.3)  # the subscription reaches the PUB
        # 3,000 x 64 KB: far past both high-water marks and any socket buffers (tens of MB), so
        # some are dropped on any machine; the sends never block and never raise
        payload = bytes(65536)
        for i in range(3000):
            send_message(pub, [b"t", str(i).encode(), payload], NOBLOCK)
        got = []
        while sub.poll(300):
            got.append(sub.recv_multipart())
        assert 0 < len(got) < 3000
        assert all(len(m) == 3 and m[0] == b"t" and m[2] == payload for m in got)  # never a torn one
        seq = [int(m[1]) for m in got]
        assert seq == sorted(seq)
    finally:
        ctx.destroy(linger=0)
