"""The daemon sections: endpoints, results, metrics, routes, sources, logging, security, service."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from inferd.config.base import Strict

# Histogram buckets (service/metrics.py, and a worker process's tally without prometheus_client).
# Edge latencies: 100 us to 10 s.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="inferd's log level.")
    runtime_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="Lowest level of the runtimes' own messages (onnxruntime, LiteRT) to keep."
    )


ZMQ_ADDRESS = r"^(tcp|ipc|inproc)://.+"


class EndpointConfig(Strict):
    """A ZeroMQ socket frames come in on."""

    type: Literal["pull", "sub", "router", "frigate"] = Field(
        description="pull: inferd binds, cameras PUSH; sub: inferd connects to a camera's PUB; "
        "router: request/reply, every request gets exactly one reply; frigate: Frigate's `zmq` "
        "detector protocol (docs/frigate.md)."
    )
    model: str | None = Field(None, description="frigate: the model that serves the requests (required).")
    source: str = Field(
        "frigate", pattern=r"^[^/]{1,128}$", description="frigate: the source name in metrics."
    )
    timeout_ms: float = Field(
        200,
        gt=0,
        description="frigate: Frigate's request_timeout_ms; a request still queued after it is dropped.",
    )
    bind: str | None = Field(None, pattern=ZMQ_ADDRESS, description="Address to bind (pull, router).")
    connect: list[str] | str | None = Field(
        None, description="Address(es) to connect to (sub; also allowed for pull and router)."
    )
    topics: list[str] = Field(
        default_factory=lambda: [""], description="sub: topic prefixes to subscribe to (default: all)."
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="Largest message accepted; larger ones are refused too_large (libzmq's "
        "ZMQ_MAXMSGSIZE is 4x this: a part over that is cut off unanswered).",
    )
    max_elements: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest frame in array elements (decoded images included)."
    )
    rcvhwm: int = Field(16, ge=0, description="ZeroMQ receive high-water mark, in messages.")
    sndhwm: int = Field(1000, ge=0, description="router: send high-water mark for replies, in messages.")
    curve: bool = Field(
        False, description="Require CURVE encryption and a client key from security.curve.clients_dir (tcp)."
    )
    allow_ips: list[str] | None = Field(
        None, description="tcp: only these client addresses or networks (CIDR) may connect."
    )

    @model_validator(mode="after")
    def _address(self) -> EndpointConfig:
        if isinstance(self.connect, str):
            object.__setattr__(self, "connect", [self.connect])
        if not self.bind and not self.connect:
            raise ValueError("needs bind (pull, router) or connect (sub)")
        if self.type == "sub" and self.bind:
            raise ValueError("a sub endpoint connects to publishers: use connect, not bind")
        if self.type == "frigate" and not self.model:
            raise ValueError("a frigate endpoint needs model: (the detector that serves Frigate)")
        if self.allow_ips is not None:
            import ipaddress

            for net in self.allow_ips:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ValueError(f"allow_ips: {net!r} is not an IP address or network") from None
        return self


class ResultsConfig(Strict):
    bind: str | None = Field(
        None, pattern=ZMQ_ADDRESS, description="PUB socket for results (topic model/source)."
    )
    sndhwm: int = Field(1000, ge=0, description="High-water mark of the results socket, in messages.")
    curve: bool = Field(False, description="Require CURVE and a known client key to subscribe (tcp).")
    allow_ips: list[str] | None = Field(
        None, description="tcp: only these addresses or networks may subscribe."
    )


class MetricsConfig(Strict):
    listen: str | None = Field(
        "127.0.0.1:9464",
        pattern=r"^(\[[0-9a-fA-F:.]+\]|[^:\s]*):[0-9]{1,5}$",
        description="HOST:PORT of the /metrics, /healthz, /readyz HTTP server; null disables it.",
    )
    latency_buckets: list[float] | None = Field(
        None, min_length=1, description="Histogram buckets in seconds (default: 100 us to 10 s)."
    )
    sysfs: str = Field("/sys", description="Where to read temperatures and CPU frequencies from.")
    live_view: bool = Field(
        False,
        description="Serve /live, /live/MODEL/SOURCE.jpg and .mjpg on this server: camera frames with "
        "the model's results drawn on them (docs/live-view.md). Off by default: it shows what cameras see.",
    )
    live_fps: float = Field(5.0, gt=0, le=30, description="The most pictures per second a live view sends.")

    @field_validator("latency_buckets")
    @classmethod
    def _increasing(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (any(b <= 0 for b in v) or any(b >= c for b, c in itertools.pairwise(v))):
            raise ValueError("buckets must be positive and strictly increasing")
        return v


class RouteConfig(Strict):
    sources: list[str] = Field(description="Source names or glob patterns (cam*, *).")
    models: list[str] = Field(min_length=1, description="Models every matching frame is sent to.")


class SourceConfig(Strict):
    match: str = Field("*", description="Source name or glob pattern; the first matching entry wins.")
    policy: Literal["latest", "fifo"] = Field(
        "latest",
        description="latest: keep the newest frames, drop older (cameras); fifo: never drop, "
        "push back on the sender through ZeroMQ high-water marks (sensors).",
    )
    queue_size: int = Field(2, ge=1, description="Frames queued per source and model.")
    max_age_ms: float | None = Field(
        None, gt=0, description="Drop frames older than this (from their capture time) before inference."
    )
    rate_limit_fps: float | None = Field(
        None, gt=0, description="Refuse frames beyond this rate (reason rate_limited); bursts up to 1 s."
    )


class CurveConfig(Strict):
    server_key: Path = Field(description="The daemon's secret certificate (inferd keys generate writes it).")
    clients_dir: Path = Field(description="Folder of allowed clients' public certificates (*.key).")


class IpcConfig(Strict):
    mode: str = Field("0660", pattern=r"^0?[0-7]{3}$", description="Permissions of ipc:// socket files.")
    group: str | None = Field(
        "inferd", description="Group of ipc:// socket files (skipped when this group does not exist)."
    )


class HttpSecurityConfig(Strict):
    tls_cert: Path | None = Field(None, description="PEM certificate: serve the metrics endpoint over HTTPS.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    basic_auth_user: str | None = Field(None, description="Require HTTP basic auth with this user name...")
    basic_auth_password_file: Path | None = Field(
        None, description="...and the password in this file (mode 0600)."
    )

    @model_validator(mode="after")
    def _pairs(self) -> HttpSecurityConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if (self.basic_auth_user is None) != (self.basic_auth_password_file is None):
            raise ValueError("basic_auth_user and basic_auth_password_file go together")
        return self


class SecurityConfig(Strict):
    curve: CurveConfig | None = Field(None, description="Keys for endpoints marked curve: true.")
    ipc: IpcConfig = Field(default_factory=IpcConfig)
    http: HttpSecurityConfig = Field(default_factory=HttpSecurityConfig)


class ServiceConfig(Strict):
    drain_timeout_s: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM, how long queued frames may still be served before they are answered "
        "with `shutdown`.",
    )
    hang_after_s: float = Field(
        30.0,
        gt=0,
        description="A worker inside one inference longer than this is hung: /healthz fails and "
        "the systemd watchdog is no longer pinged.",
    )
