"""Frames from a camera, a stream, a file or a folder, as (RGB array, capture time, media time).

PyAV (FFmpeg) decodes devices, streams and files: resizing and the conversion to RGB happen in
FFmpeg's swscale, not in Python. Images in a folder are decoded with Pillow. A source raises
`SourceError` when it cannot open or stops delivering; the runner reconnects.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np

from inferd.capture.config import CaptureConfig

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
Frame = tuple[np.ndarray, float, float | None]  # RGB HxWx3 uint8, capture time (Unix s), media time (s)


class SourceError(Exception):
    """The source cannot be opened or stopped delivering frames (the message is safe to log)."""


def redact(url: str) -> str:
    """The URL without its password (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def with_credentials(url: str, credentials_file: Path | None) -> str:
    """user:password from a file (mode 0600 or stricter) into the URL for FFmpeg."""
    if credentials_file is None:
        return url
    try:
        if credentials_file.stat().st_mode & 0o077:
            raise SourceError(f"credentials file {credentials_file} is readable by others: chmod 600 it")
        user, _, password = credentials_file.read_text().strip().partition(":")
    except OSError as e:
        raise SourceError(f"credentials file {credentials_file}: {e.strerror}") from None
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}"
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


def frames(cfg: CaptureConfig, on_error=lambda message: None) -> Iterator[Frame]:
    """The configured source's frames (one pass; the runner loops and reconnects). Frames that
    cannot be decoded are skipped and reported to `on_error`."""
    if cfg.kind == "folder":
        return folder_frames(cfg, on_error)
    return av_frames(cfg)


def open_options(cfg: CaptureConfig) -> tuple[str | None, dict[str, str]]:
    """FFmpeg's input format and options for the source: a V4L2 camera is asked for the size,
    rate and pixel format configured; RTSP gets its transport."""
    options: dict[str, str] = {}
    fmt = None
    if cfg.kind == "device":
        fmt = "v4l2"
        if cfg.size:
            options["video_size"] = f"{cfg.size[0]}x{cfg.size[1]}"
        if cfg.fps:
            options["framerate"] = f"{cfg.fps:g}"
        if cfg.input_format:
            options["input_format"] = cfg.input_format
    elif cfg.url.startswith(("rtsp://", "rtsps://")):
        options["rtsp_transport"] = cfg.rtsp_transport
    return fmt, options


def av_frames(cfg: CaptureConfig) -> Iterator[Frame]:
    import av

    fmt, options = open_options(cfg)
    if cfg.kind == "device" and not Path(cfg.url).exists():
        raise SourceError(f"{cfg.url} does not exist (is the camera plugged in? ls /dev/video*)")
    if cfg.kind == "file" and not Path(cfg.url).is_file():
        raise SourceError(f"{cfg.url}: no such file or folder")
    url = with_credentials(cfg.url, cfg.credentials_file) if cfg.live else cfg.url
    timeout = (cfg.stall_timeout_s, cfg.stall_timeout_s) if cfg.live else None
    try:
        container = av.open(url, format=fmt, options=options, timeout=timeout)
    except (av.error.FFmpegError, OSError) as e:
        raise SourceError(f"cannot open {redact(cfg.url)}: {explain_open(cfg, e)}") from None
    try:
        if not container.streams.video:
            raise SourceError(f"{redact(cfg.url)} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = cfg.size if cfg.size and cfg.roi is None else (None, None)
        try:
            for frame in container.decode(stream):
                now = time.time()
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                yield rgb, now, frame.time
        except av.error.FFmpegError as e:
            raise SourceError(f"{redact(cfg.url)}: {e}") from None
    finally:
        container.close()


DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443}


def reach(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to host:port cannot be made, in words a user can act on; None if it can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return f"the host {host!r} did not resolve (check the name, or use the IP address)"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.settimeout(timeout)
        try:
            s.connect(addr)
        except TimeoutError:
            return (
                f"nothing answered at {host}:{port} within {timeout:g} s (off, wrong address, or a firewall)"
            )
        except OSError as e:
            return (
                f"{host}:{port} refused the connection ({e.strerror or e}: wrong port, or its server is off)"
            )
    return None


def explain_open(cfg: CaptureConfig, error: Exception) -> str:
    """FFmpeg's reason for a stream that did not open is often a generic one (EIO, "Invalid data
    found"): for a network source, find out whether its host resolves and answers."""
    parts = urlsplit(cfg.url)
    scheme = parts.scheme.lower()
    if cfg.kind == "stream" and parts.hostname and scheme in DEFAULT_PORTS:
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            return f"the port in {redact(cfg.url)} is not a number"
        why = reach(parts.hostname, port)
        if why is not None:
            return why
    return str(error)


def folder_frames(cfg: CaptureConfig, on_error) -> Iterator[Frame]:
    """Images in name order; with `watch`, then every new file as it appears."""
    from PIL import Image

    folder, seen = Path(cfg.url), set()
    while True:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p not in seen)
        for path in files:
            seen.add(path)
            try:
                with Image.open(path) as img:
                    rgb = np.asarray(img.convert("RGB"))
            except OSError as e:
                on_error(f"{path.name}: {e}")  # half-written or not an image
                continue
            yield rgb, time.time(), None
        if not cfg.watch:
            return
        time.sleep(0.2)
