"""The config file: YAML validated by pydantic, every key documented, unknown keys are errors."""

from __future__ import annotations

import difflib
import itertools
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inferd.backends import EXTENSIONS
from inferd.backends.onnx import OnnxConfig
from inferd.backends.tflite import TfliteConfig
from inferd.errors import ConfigError

DEFAULT_PATH = Path("/etc/inferd/inferd.yaml")


class Strict(BaseModel):
    """A config section: unknown keys are errors that list the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = set(cls.model_fields)
            unknown = [k for k in data if k not in allowed]
            if unknown:
                key = str(unknown[0])
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown key {key!r}{hint}; allowed keys: {', '.join(sorted(allowed))}")
        return data


Size = Annotated[int, Field(gt=0)]


class PreprocessConfig(Strict):
    """How a frame becomes the model's input. Steps run in the order of the fields below."""

    frame_color: Literal["rgb", "bgr"] = Field(
        "rgb", description="Channel order of raw colour frames sent by sources (JPEG/PNG decode to rgb)."
    )
    color: Literal["rgb", "bgr"] = Field("rgb", description="Channel order the model expects.")
    resize: Size | tuple[Size, Size] | None = Field(
        None, description="An int resizes the shorter side to it (keeps aspect); [height, width] is exact."
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "area"] = Field(
        "bilinear", description="Resampling filter for resize (Pillow)."
    )
    center_crop: Size | tuple[Size, Size] | None = Field(
        None, description="Crop the centre: an int for a square, or [height, width]."
    )
    scale: float | None = Field(
        None, description="Multiply pixel values by this first, e.g. 1/255 (a fraction string is accepted)."
    )
    mean: list[float] | None = Field(None, description="Per-channel mean subtracted after scale.")
    std: list[float] | None = Field(None, description="Per-channel std divided by after mean.")
    layout: Literal["auto", "nchw", "nhwc"] = Field(
        "auto", description="The model's input layout; auto reads it from the input shape."
    )

    @field_validator("scale", mode="before")
    @classmethod
    def _fraction(cls, v: Any) -> Any:
        if isinstance(v, str) and "/" in v:
            num, _, den = v.partition("/")
            try:
                return float(num) / float(den)
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"scale {v!r} is not a number or a fraction like 1/255") from None
        return v

    @field_validator("mean", "std")
    @classmethod
    def _channels(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and len(v) not in (1, 3, 4):
            raise ValueError(f"needs 1, 3 or 4 values (one per channel), got {len(v)}")
        return v

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v

    @property
    def normalizes(self) -> bool:
        return self.scale is not None or self.mean is not None or self.std is not None


class RawPostprocess(Strict):
    type: Literal["raw"] = Field("raw", description="Return the output tensors as the runtime gives them.")


class SmoothConfig(Strict):
    ema: float = Field(
        gt=0, lt=1, description="Decay of the per-source moving average: ema = decay*ema + (1-decay)*new."
    )
    reset_after_s: float = Field(
        2.0, gt=0, description="Start the average afresh when a source sent nothing for this long."
    )


class ClassifyPostprocess(Strict):
    type: Literal["classify"]
    output: int | str = Field(0, description="Which output holds the class scores (index or name).")
    softmax: bool = Field(False, description="Apply softmax to the scores (for models that output logits).")
    top_k: int = Field(5, ge=1, description="How many classes to report, best first.")
    min_score: float | None = Field(None, description="Drop classes scoring below this.")
    smooth: SmoothConfig | None = Field(None, description="Per-source temporal smoothing of the scores.")


class DetectPostprocess(Strict):
    type: Literal["detect"]
    format: Literal["ssd", "yolo"] = Field(
        description="ssd: already-decoded boxes/classes/scores/count outputs (TFLite detection "
        "postprocess); yolo: one [N, 4+C] (or [4+C, N]) output decoded here with threshold and NMS."
    )
    outputs: list[int | str] | None = Field(
        None,
        description="ssd: the boxes, classes, scores, count outputs (default: outputs 0-3 in that "
        "order); yolo: the one output (default 0).",
    )
    box_format: Literal["cxcywh", "xyxy"] = Field("cxcywh", description="yolo: how boxes are encoded.")
    score_threshold: float = Field(0.25, ge=0, le=1, description="Drop detections scoring below this.")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="yolo: NMS overlap threshold.")
    max_detections: int = Field(100, ge=1, description="Keep at most this many, best first.")
    class_agnostic_nms: bool = Field(False, description="yolo: suppress overlaps across classes too.")


Postprocess = Annotated[RawPostprocess | ClassifyPostprocess | DetectPostprocess, Field(discriminator="type")]
Runtime = Annotated[OnnxConfig | TfliteConfig, Field(discriminator="type")]


class BatchingConfig(Strict):
    max_batch: int = Field(1, ge=1, description="Frames run in one runtime call (1: no batching).")
    max_delay_ms: float = Field(
        2.0, ge=0, description="How long the first frame of a batch waits for more to arrive."
    )


class ModelConfig(Strict):
    """One model: where it is, which runtime runs it, how frames are prepared and results decoded."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Unique; used in topics and metrics.")
    path: Path = Field(
        description="Model file; relative paths are resolved against the config file's folder."
    )
    runtime: Runtime = Field(
        description="onnx or tflite (default: from the file extension), or a mapping with runtime options."
    )
    threads: int | None = Field(None, ge=1, description="Intra-op threads (default: the cores available).")
    instances: int = Field(
        1,
        ge=1,
        description="Worker threads running this model in parallel (TFLite: one interpreter each).",
    )
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="Refuse to load the file unless it has this digest."
    )
    warmup: int = Field(3, ge=0, description="Inferences on a zero frame before the model is ready.")
    required: bool = Field(
        True,
        description="A required model that fails to load stops start-up; others leave the daemon degraded.",
    )
    labels: Path | None = Field(None, description="Text file with one class name per line.")
    dequantize_outputs: bool = Field(
        True, description="Turn quantized (int8/uint8) outputs into floats with their scale and zero point."
    )
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    postprocess: Postprocess = Field(default_factory=RawPostprocess)
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="Dynamic batching across sources (models with a batch dimension).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        runtime = data.get("runtime")
        if runtime is None and isinstance(data.get("path"), str):
            ext = os.path.splitext(data["path"])[1].lower()
            if ext not in EXTENSIONS:
                raise ValueError(
                    f"cannot tell the runtime from the extension {ext or '(none)'!r} of {data['path']!r}; "
                    f"set runtime: onnx or runtime: tflite"
                )
            runtime = EXTENSIONS[ext]
        if isinstance(runtime, str):
            runtime = {"type": runtime}
        if runtime is not None:
            data["runtime"] = runtime
        if isinstance(data.get("postprocess"), str):
            data["postprocess"] = {"type": data["postprocess"]}
        return data


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="inferd's log level.")
    runtime_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="Lowest level of the runtimes' own messages (onnxruntime, LiteRT) to keep."
    )


ZMQ_ADDRESS = r"^(tcp|ipc|inproc)://.+"


class EndpointConfig(Strict):
    """A ZeroMQ socket frames come in on."""

    type: Literal["pull", "sub", "router"] = Field(
        description="pull: inferd binds, cameras PUSH; sub: inferd connects to a camera's PUB; "
        "router: request/reply, every request gets exactly one reply."
    )
    bind: str | None = Field(None, pattern=ZMQ_ADDRESS, description="Address to bind (pull, router).")
    connect: list[str] | str | None = Field(
        None, description="Address(es) to connect to (sub; also allowed for pull and router)."
    )
    topics: list[str] = Field(
        default_factory=lambda: [""], description="sub: topic prefixes to subscribe to (default: all)."
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest frame accepted (ZMQ_MAXMSGSIZE per part, and the sum)."
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


class Config(Strict):
    """The whole file."""

    models: list[ModelConfig] = Field(min_length=1, description="The models to load.")
    endpoints: list[EndpointConfig] = Field(default_factory=list, description="Where frames come in.")
    results: ResultsConfig = Field(default_factory=ResultsConfig)
    routes: list[RouteConfig] = Field(
        default_factory=list,
        description="Which models a frame goes to when its header names none (default: every model).",
    )
    sources: list[SourceConfig] = Field(default_factory=list, description="Queue policy per source.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @model_validator(mode="after")
    def _routes_name_models(self) -> Config:
        for i, ep in enumerate(self.endpoints):
            if ep.curve and self.security.curve is None:
                raise ValueError(f"endpoints[{i}] has curve: true but security.curve gives no keys")
        if self.results.curve and self.security.curve is None:
            raise ValueError("results has curve: true but security.curve gives no keys")
        names = {m.name for m in self.models}
        for i, route in enumerate(self.routes):
            unknown = [m for m in route.models if m not in names]
            if unknown:
                known = ", ".join(sorted(names))
                raise ValueError(f"routes[{i}] names unknown model(s) {', '.join(unknown)}; models: {known}")
        return self

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for m in models:
            if m.name in seen:
                raise ValueError(f"model name {m.name!r} is used twice; names must be unique")
            seen.add(m.name)
        return models


def check_not_world_writable(path: Path, what: str) -> str | None:
    """Like ssh with its keys: a file others may rewrite is not trusted. Returns the problem or None."""
    try:
        st = path.stat()
        parent = path.resolve().parent.stat()
    except OSError:
        return None  # missing files get their own, clearer error
    if st.st_mode & 0o002:
        return f"{what} {path} is world-writable: refusing to use it (chmod o-w {path})"
    if parent.st_mode & 0o002 and not parent.st_mode & 0o1000:
        return f"{what} {path} is in a world-writable folder: refusing to use it (chmod o-w {path.parent})"
    return None


def load_config(path: str | os.PathLike[str]) -> tuple[Config, Path]:
    """Read and validate a config file. Returns the config and the folder relative paths start from."""
    path = Path(path)
    problem = check_not_world_writable(path, "config file")
    if problem:
        raise ConfigError(problem)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (use -c PATH to point at another)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    base = path.resolve().parent
    return resolve_security_paths(parse_config(text, path), base), base


def resolve_security_paths(config: Config, base: Path) -> Config:
    """Key, certificate and password files relative to the config file's folder."""
    sec = config.security

    def fix(section, *keys):
        updates = {k: base / getattr(section, k) for k in keys if getattr(section, k) is not None}
        return section.model_copy(
            update={k: v for k, v in updates.items() if not getattr(section, k).is_absolute()}
        )

    curve = fix(sec.curve, "server_key", "clients_dir") if sec.curve else None
    http = fix(sec.http, "tls_cert", "tls_key", "basic_auth_password_file")
    return config.model_copy(update={"security": sec.model_copy(update={"curve": curve, "http": http})})


def parse_config(text: str, source: str | os.PathLike[str] = "<config>") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping with a 'models' list")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(str(source), e)) from None


_UNION_TAGS = {"raw", "classify", "detect", "onnx", "tflite"}
_TYPE_NAMES = {"int", "float", "str", "bool", "list", "dict", "tuple", "none", "path"}


def key_path(loc: tuple[int | str, ...]) -> str:
    """('models', 1, 'preprocess', 'mean') -> 'models[1].preprocess.mean' (union tags dropped)."""
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif prev in ("postprocess", "runtime") and part in _UNION_TAGS:
            pass  # the discriminated union's tag, not a key the user wrote
        elif "[" in part or "-" in part or part in _TYPE_NAMES:
            pass  # a member of a union type (e.g. int | tuple[int, int]), not a key
        else:
            out += f".{part}" if out else part
        prev = part
    return out or "(top level)"


def format_errors(source: str, error: ValidationError) -> str:
    by_key: dict[str, list[str]] = {}
    for err in error.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            tags = err.get("ctx", {}).get("expected_tags", "")
            given = err["input"].get("type") if isinstance(err["input"], dict) else err["input"]
            msg = f"unknown type {given!r}; allowed: {tags}"
        elif err["type"] not in ("value_error", "missing", "extra_forbidden"):
            msg += f" (got {err['input']!r})"
        msgs = by_key.setdefault(key_path(err["loc"]), [])
        if msg not in msgs:
            msgs.append(msg)
    lines = [f"{source}: {sum(len(m) for m in by_key.values())} error(s) in the config"]
    lines += [f"  {key}: {'; or: '.join(msgs)}" for key, msgs in by_key.items()]
    return "\n".join(lines)
