"""`inferd capture` end to end: media made here -> capture -> a real inferd -> a real subscriber,
with results that depend on the frames' content (their colour)."""

import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from inferd.client import ResultSubscriber
from inferd.errors import RequestTimeout
from tests.capture.media import COLOURS, colour_config, colour_model, encode_video, solid
from tests.daemon_harness import DaemonProcess

pytest.importorskip("av")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capture")
    d = DaemonProcess(tmp, colour_config(colour_model(tmp / "colour.onnx")))
    yield d
    assert d.stop() == 0, d.logs()


def capture(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inferd", "--log-level", "info", "capture", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def labels_of(sub: ResultSubscriber, n: int, timeout: float = 20) -> list[str]:
    out, end = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        try:
            r = sub.recv(1.0)
        except RequestTimeout:
            continue
        assert r.ok, r.header
        out.append((r.seq, r.classes[0]["label"]))
    return [label for _, label in sorted(out)]


@pytest.mark.parametrize("codec, suffix", [("libx264", "mp4"), ("mjpeg", "mkv")])
def test_a_video_file_is_decoded_and_every_frame_classified_by_its_colour(daemon, tmp_path, codec, suffix):
    video = encode_video(tmp_path / f"clip.{suffix}", ["red", "green", "blue"], per_colour=10, codec=codec)
    source = f"file-{codec}"
    with ResultSubscriber(daemon.results, f"colour/{source}") as sub:
        proc = capture("--url", str(video), "--to", daemon.pull, "--source", source, "--pace", "asap")
        assert proc.returncode == 0, proc.stderr
        got = labels_of(sub, 30)
    assert got == ["red"] * 10 + ["green"] * 10 + ["blue"] * 10, got
    assert "first frame sent" in proc.stderr and "30 frames decoded, 30 sent" in proc.stderr


def test_an_image_folder_in_name_order_resized_at_the_source(daemon, tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    order = ["blue", "red", "green", "red"]
    for i, name in enumerate(order):
        Image.fromarray(solid(name, 640, 480)).save(folder / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    with ResultSubscriber(daemon.results, "colour/folder") as sub:
        proc = capture("--url", str(folder), "--to", daemon.pull, "--source", "folder", "--size", "64x48",
                       "--pace", "asap")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        got = labels_of(sub, 4)
    assert got == order


def test_the_fps_cap_drops_at_the_source(daemon, tmp_path):
    video = encode_video(tmp_path / "fast.mp4", ["green"], per_colour=60, fps=30)  # 2 s of video
    with ResultSubscriber(daemon.results, "colour/capped") as sub:
        start = time.monotonic()
        proc = capture("--url", str(video), "--to", daemon.pull, "--source", "capped", "--fps", "5")
        wall = time.monotonic() - start  # the whole run: more than the cap's own time, never less
        assert proc.returncode == 0, proc.stderr
        decoded, sent = map(int, re.search(r"(\d+) frames decoded, (\d+) sent", proc.stderr).groups())
        got = labels_of(sub, sent, timeout=60)
    assert decoded == 60 and got == ["green"] * sent
    # 5 a second of wall-clock time at most (the video plays in real time: ~10 of its 60 frames)
    assert 1 <= sent <= 5 * wall + 1, (sent, wall)
    assert sent < 60, f"precondition not met: the run took {wall:.1f} s, the cap dropped nothing"


def test_mistakes_get_clear_answers(tmp_path):
    proc = capture("--url", "/dev/video99", "--to", "ipc:///tmp/x.sock")
    assert proc.returncode == 1 and "/dev/video99 does not exist" in proc.stderr
    proc = capture("--url", str(tmp_path / "nope.mp4"), "--to", "ipc:///tmp/x.sock")
    assert proc.returncode == 1 and "no such file or folder" in proc.stderr
    proc = capture("--url", "x.mp4", "--to", "ipc:///tmp/x.sock", "--size", "big")
    assert proc.returncode == 1 and "size 'big' is not WIDTHxHEIGHT" in proc.stderr
    proc = capture("--url", "x.mp4")
    assert proc.returncode == 1 and "no --to (to: in a camera YAML): where to send the frames" in proc.stderr
    proc = capture("--url", "x.mp4", "--to", "/tmp/x.sock")
    assert proc.returncode == 1 and "--to takes tcp://HOST:PORT or ipc://PATH" in proc.stderr
    assert "got '/tmp/x.sock'" in proc.stderr and "String should match" not in proc.stderr
    proc = capture("--url", "nosuch://foo", "--to", "ipc:///tmp/x.sock")
    assert proc.returncode == 1 and "unknown URL scheme 'nosuch'" in proc.stderr
    assert "supported: rtsp, rtsps, rtmp, http, https" in proc.stderr
    from inferd.capture.config import load_capture_config

    assert load_capture_config(None, {"url": "x.mp4", "to": "tcp://[::1]:5556"}).to == "tcp://[::1]:5556"
    proc = capture("--to", "ipc:///tmp/x.sock")
    assert proc.returncode == 1 and "no --url" in proc.stderr
    cfg = tmp_path / "cam.yaml"
    cfg.write_text("url: x.mp4\nto: ipc:///tmp/x.sock\nfsp: 5\n")
    proc = capture("-c", str(cfg))
    assert proc.returncode == 1 and "unknown key 'fsp' (did you mean 'fps'?)" in proc.stderr


def test_a_v4l2_camera_is_asked_for_the_configured_size_rate_and_format():
    """What FFmpeg's v4l2 input gets (no device here to open: the options are what can be tested)."""
    from inferd.capture.config import load_capture_config
    from inferd.capture.sources import open_options

    cfg = load_capture_config(
        None,
        {
            "url": "/dev/video0",
            "to": "ipc:///tmp/x.sock",
            "size": "1280x720",
            "fps": 30,
            "input_format": "mjpeg",
        },
    )
    assert cfg.kind == "device" and cfg.live
    assert open_options(cfg) == (
        "v4l2", {"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}
    )  # fmt: skip
    cfg = load_capture_config(None, {"url": "rtsp://cam/stream", "to": "ipc:///tmp/x.sock"})
    assert open_options(cfg) == (None, {"rtsp_transport": "tcp"})


def test_frame_memory_stays_on_the_heap_on_glibc():
    """mallopt accepted (benchmarks/capture.py measured page faults per frame without it); 16 MB
    is within glibc's ceiling even on 32-bit boards."""
    from inferd.capture.command import keep_frame_memory

    assert keep_frame_memory() is True


def test_colours_are_what_the_model_says():
    for name, rgb in COLOURS.items():
        assert int(np.argmax(rgb)) == ["red", "green", "blue"].index(name)
