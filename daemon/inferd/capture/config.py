"""What `inferd capture` reads: flags, or the same keys in a YAML file per camera."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from inferd.config.base import Strict
from inferd.errors import ConfigError

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")  # what FFmpeg opens for us
TO_HINT = (
    "tcp://HOST:PORT or ipc://PATH (inferd's pull or router endpoint, e.g. ipc:///run/inferd/frames.sock)"
)
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".ts", ".mjpeg", ".mjpg", ".h264", ".hevc"}


class CaptureConfig(Strict):
    """One camera: where frames come from, where they go, and what is done to them on the way."""

    url: str = Field(
        description="/dev/videoN, rtsp://, rtmp://, http(s)://, a video file or an image folder."
    )
    to: str = Field(description="inferd's pull (or router) endpoint: tcp://HOST:PORT or ipc://PATH.")
    to_type: Literal["pull", "router"] = Field("pull", description="The kind of endpoint `to` is.")
    source: str = Field("cam0", pattern=r"^[^/]{1,128}$", description="Source name in headers and metrics.")
    model: str | None = Field(None, description="Model to ask for (default: inferd's routes).")
    fps: float | None = Field(
        None, gt=0, description="Send at most this many frames per second (drop at the source)."
    )
    size: tuple[int, int] | None = Field(None, description="Resize to WIDTHxHEIGHT before sending.")
    roi: tuple[int, int, int, int] | None = Field(
        None, description="Crop x, y, width, height first (frame pixels)."
    )
    color: Literal["rgb", "bgr"] = Field("rgb", description="Channel order of the frames sent.")
    encoding: Literal["raw", "jpeg"] = Field("raw", description="raw arrays (ipc), or JPEG for tcp links.")
    jpeg_quality: int = Field(85, ge=10, le=100, description="encoding: jpeg quality.")
    loop: bool = Field(False, description="Files and folders: start again at the end.")
    pace: Literal["realtime", "asap"] = Field(
        "realtime", description="Files and folders: at the recorded rate, or as fast as inferd takes them."
    )
    watch: bool = Field(False, description="Folders: keep sending new files as they appear.")
    input_format: str | None = Field(
        None,
        pattern=r"^[a-z0-9_]{1,32}$",
        description="V4L2: the format to ask the camera for, e.g. mjpeg (most USB cameras reach their "
        "full size and rate only in MJPEG) or yuyv422; default: the driver's choice.",
    )
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    credentials_file: Path | None = Field(
        None, description="A file holding user:password for the stream (kept out of the URL and logs)."
    )
    stall_timeout_s: float = Field(
        10.0, gt=0, description="A live stream that sends nothing this long is reconnected."
    )
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest wait between reconnection attempts.")
    metrics: str | None = Field(None, description="HOST:PORT for this process's Prometheus metrics.")

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        if not re.match(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):\d+|ipc://.+)$", v):
            raise ValueError(f"--to takes {TO_HINT}; got {v!r}")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", v)
        if m and m.group(1).lower() not in STREAM_SCHEMES:
            raise ValueError(
                f"unknown URL scheme {m.group(1)!r} in {v!r}; supported: {', '.join(STREAM_SCHEMES)} "
                "(or /dev/videoN, a video file or an image folder)"
            )
        return v

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = re.fullmatch(r"(\d+)x(\d+)", v.strip().lower())
            if not m:
                raise ValueError(f"size {v!r} is not WIDTHxHEIGHT, e.g. 640x480")
            return int(m.group(1)), int(m.group(2))
        return v

    @cached_property
    def kind(self) -> str:
        """device, stream, folder or file."""
        if self.url.startswith("/dev/video"):
            return "device"
        if re.match(rf"^({'|'.join(STREAM_SCHEMES)})://", self.url, re.I):
            return "stream"
        return "folder" if Path(self.url).is_dir() else "file"

    @property
    def live(self) -> bool:
        return self.kind in ("device", "stream")


def load_capture_config(path: Path | None, overrides: dict) -> CaptureConfig:
    """A camera YAML (if given) with command-line values on top; errors name the key."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a camera config is a mapping (url, to, source, ...)")
    data.update({k: v for k, v in overrides.items() if v is not None})
    where = str(path or "command line")
    missing = {
        "url": "the camera, stream, video file or image folder to read",
        "to": f"where to send the frames, {TO_HINT}",
    }
    for key, what in missing.items():
        if key not in data:
            raise ConfigError(f"{where}: no --{key} ({key}: in a camera YAML): {what}")
    try:
        return CaptureConfig.model_validate(data)
    except ValidationError as e:
        from inferd.config import format_errors

        raise ConfigError(format_errors(where, e, CaptureConfig)) from None
