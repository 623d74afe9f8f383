"""The line between the daemon and a worker process (engine/channel.py): whole messages both ways,
whatever their size, the daemon's side never blocking, the end of the stream seen."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from inferd.engine.channel import Channel, pair


@pytest.fixture
def ends():
    ours, theirs = pair()
    daemon, worker = Channel(ours, blocking=False), Channel(theirs, blocking=True)
    yield daemon, worker
    for end in (daemon, worker):
        if end.open:
            end.close()


def drain(channel: Channel, want: int) -> list[list[bytes]]:
    """The daemon's way: read when there is something (here: poll), until `want` messages came."""
    import select

    out: list[list[bytes]] = []
    poll = select.poll()
    poll.register(channel.fileno(), select.POLLIN)
    while len(out) < want:
        assert poll.poll(5000), f"only {len(out)} of {want} messages arrived"
        assert channel.read()
        while channel.messages:
            out.append(channel.messages.popleft())
    return out


def test_parts_arrive_whole_and_in_order(ends):
    daemon, worker = ends
    tensor = np.arange(12, dtype=np.float32).reshape(3, 4)
    worker.send([b"P", b"topic", b"", tensor])
    worker.send([b"H"])
    (first, second) = drain(daemon, 2)
    assert first[:3] == [b"P", b"topic", b""]
    assert np.array_equal(np.frombuffer(first[3], np.float32).reshape(3, 4), tensor)
    assert second == [b"H"]


def test_many_small_messages_arrive_whole_and_in_order(ends):
    daemon, worker = ends

    def answers() -> None:
        for i in range(2000):
            worker.send([i.to_bytes(4, "little"), b"x" * (i % 7)])

    sender = threading.Thread(target=answers)
    sender.start()
    got = drain(daemon, 2000)
    sender.join(10)
    assert [int.from_bytes(m[0], "little") for m in got] == list(range(2000))
    assert all(m[1] == b"x" * (i % 7) for i, m in enumerate(got))


def test_a_message_larger_than_the_buffer_and_the_socket_arrives_whole(ends):
    daemon, worker = ends
    big = np.random.default_rng(1).integers(0, 255, 8 << 20, dtype=np.uint8)  # 8 MiB
    sender = threading.Thread(target=worker.send, args=([b"R", big, b"tail"],))
    sender.start()  # a blocking writer: it waits while the reader takes the pieces
    (msg,) = drain(daemon, 1)
    sender.join(10)
    assert msg[0] == b"R" and msg[2] == b"tail"
    assert np.array_equal(np.frombuffer(msg[1], np.uint8), big)


def test_the_daemons_side_never_blocks_and_keeps_the_order(ends):
    daemon, worker = ends
    daemon.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # whatever the sysctls
    chunk = b"y" * 50_000
    for i in range(100):  # 5 MB: far more than a socket buffer holds, the worker reads nothing yet
        daemon.send([i.to_bytes(2, "little"), chunk])
    assert daemon.backlog, "the socket took 5 MB without a reader: the test proves nothing"
    got = []
    while len(got) < 100:
        msg = worker.recv()
        assert msg is not None and msg[1] == chunk
        got.append(int.from_bytes(msg[0], "little"))
        daemon.flush()
    assert got == list(range(100))
    assert not daemon.backlog


def test_the_end_of_the_stream_comes_after_what_was_sent(ends):
    daemon, worker = ends
    worker.send([b"D", b"stale", b""])
    worker.close()  # the worker process died right after its last answer
    assert any(daemon.read() is False for _ in range(3)), "the end of the stream was not seen"
    assert list(daemon.messages) == [[b"D", b"stale", b""]]
    assert not daemon.open


def test_a_worker_sees_the_daemon_close_its_line(ends):
    daemon, worker = ends
    daemon.send([b"F", b"frame"])
    daemon.close()
    assert worker.recv() == [b"F", b"frame"]
    assert worker.recv() is None
    assert worker.wait(0) is True  # the end is readable: the next recv says None at once


def test_a_worker_waits_for_a_message_with_a_timeout(ends):
    daemon, worker = ends
    assert worker.wait(0.01) is False
    daemon.send([b"Y"])
    assert worker.wait(5) is True
    assert worker.recv() == [b"Y"]
