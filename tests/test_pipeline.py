import threading
import time

from inferd.config import SourceConfig
from inferd.engine.pipeline import Frame, ModelQueue, SourcePolicies
from inferd.protocol import FrameHeader


def frame(source: str, seq: int) -> Frame:
    return Frame(FrameHeader(source, seq), [], time.monotonic(), time.time())


def queue(*sources: SourceConfig):
    drops = []
    q = ModelQueue(
        "m", SourcePolicies(list(sources)), lambda f, reason: drops.append((f.source, f.header.seq, reason))
    )
    return q, drops


def drain(q: ModelQueue) -> list[tuple[str, int]]:
    out = []
    while (f := q.take(0.01)) is not None:
        out.append((f.source, f.header.seq))
    return out


def test_latest_keeps_the_newest_frames_and_counts_the_drops():
    q, drops = queue(SourceConfig(match="cam*", policy="latest", queue_size=2))
    for i in range(5):
        assert q.put(frame("cam0", i))
    assert drops == [("cam0", 0, "queue_full"), ("cam0", 1, "queue_full"), ("cam0", 2, "queue_full")]
    assert drain(q) == [("cam0", 3), ("cam0", 4)]


def test_a_full_latest_queue_of_one_is_listed_once_for_serving():
    q, _drops = queue(SourceConfig(policy="latest", queue_size=1))
    for i in range(3):
        q.put(frame("cam0", i))
    q.put(frame("cam1", 0))
    assert drain(q) == [("cam0", 2), ("cam1", 0)]
    assert q.take(0.01) is None and q.size == 0


def test_fifo_never_drops_and_refuses_when_full():
    q, drops = queue(SourceConfig(match="imu", policy="fifo", queue_size=3))
    assert all(q.put(frame("imu", i)) for i in range(3))
    assert q.put(frame("imu", 3)) is False and not q.has_room("imu")
    assert drops == []
    assert q.take(0.01).header.seq == 0 and q.has_room("imu")
    assert q.put(frame("imu", 3))
    assert [s for _, s in drain(q)] == [1, 2, 3]


def test_a_take_after_a_refused_put_wakes_the_io_thread():
    woken = []
    q = ModelQueue(
        "m", SourcePolicies([SourceConfig(policy="fifo", queue_size=1)]), None, lambda: woken.append(1)
    )
    assert q.put(frame("s", 0))
    assert q.take(0.01).header.seq == 0 and woken == []  # nobody was refused: no wake-up
    assert q.put(frame("s", 1)) and not q.put(frame("s", 2))
    assert q.take(0.01).header.seq == 1 and woken == [1]  # room for the refused frame: wake once
    assert q.put(frame("s", 2)) and not q.put(frame("s", 3))
    assert [f.header.seq for f in q.take_batch(4, 0.0, 0.01)] == [2] and woken == [1, 1]


def test_greedy_batch_takes_only_what_is_queued():
    q, _ = queue(SourceConfig(policy="fifo", queue_size=8))
    for i in range(3):
        q.put(frame("a", i))
    q.put(frame("b", 0))
    # max_delay 0: the frames already there, fairly across sources, and no waiting for the rest
    assert [(f.source, f.header.seq) for f in q.take_batch(8, 0.0, 0.01)] == [
        ("a", 0),
        ("b", 0),
        ("a", 1),
        ("a", 2),
    ]
    assert q.take_batch(8, 0.0, 0.01) == []


def test_sources_are_served_round_robin():
    q, _ = queue(SourceConfig(policy="fifo", queue_size=100))
    for i in range(6):
        q.put(frame("flood", i))
    q.put(frame("quiet", 0))
    q.put(frame("other", 0))
    order = [s for s, _ in drain(q)]
    assert order[:3] == ["flood", "quiet", "other"]
    assert order[3:] == ["flood"] * 5


def test_first_matching_policy_wins_and_default_applies():
    p = SourcePolicies([SourceConfig(match="cam1", queue_size=9), SourceConfig(match="cam*", queue_size=4)])
    assert p("cam1").queue_size == 9 and p("cam7").queue_size == 4
    assert p("imu").policy == "latest" and p("imu").queue_size == 2


def test_remove_if_and_close():
    q, _ = queue(SourceConfig(policy="fifo", queue_size=10))
    for i in range(4):
        q.put(frame("a", i))
    removed = q.remove_if(lambda f: "deadline" if f.header.seq % 2 else None)
    assert [(f.header.seq, r) for f, r in removed] == [(1, "deadline"), (3, "deadline")]
    assert q.size == 2
    got = []
    # a taker that would wait a minute on an empty queue: only close() ends it, whether it is
    # already waiting when close() comes or gets there after (queued frames are taken first)
    t = threading.Thread(target=lambda: got.extend(iter(lambda: q.take(60.0), None)), daemon=True)
    t.start()
    q.close()
    t.join(30)
    assert not t.is_alive(), "close() did not end a take() waiting on the empty queue"
    assert [f.header.seq for f in got] == [0, 2]
    _, drops = queue()
    q2 = ModelQueue("m", SourcePolicies([]), lambda f, r: drops.append(r))
    q2.close()
    q2.put(frame("a", 0))
    assert drops == ["shutdown"]
