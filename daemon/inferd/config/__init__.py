"""The config file: YAML validated by pydantic, every key documented, unknown keys are errors."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from inferd.config.base import Size, Strict, section_at, unknown_key
from inferd.config.model import (
    AnchorsConfig,
    BatchingConfig,
    ClassifyPostprocess,
    DetectPostprocess,
    ModelConfig,
    Postprocess,
    PreprocessConfig,
    RawPostprocess,
    Runtime,
    SegmentPostprocess,
    SmoothConfig,
)
from inferd.config.mqtt import MqttConfig
from inferd.config.sections import (
    ZMQ_ADDRESS,
    CurveConfig,
    EndpointConfig,
    HttpSecurityConfig,
    IpcConfig,
    LoggingConfig,
    MetricsConfig,
    ResultsConfig,
    RouteConfig,
    SecurityConfig,
    ServiceConfig,
    SourceConfig,
)
from inferd.engine.zones import ZoneConfig
from inferd.errors import ConfigError

__all__ = [
    "DEFAULT_PATH",
    "ZMQ_ADDRESS",
    "AnchorsConfig",
    "BatchingConfig",
    "ClassifyPostprocess",
    "Config",
    "CurveConfig",
    "DetectPostprocess",
    "EndpointConfig",
    "HttpSecurityConfig",
    "IpcConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "MqttConfig",
    "Postprocess",
    "PreprocessConfig",
    "RawPostprocess",
    "ResultsConfig",
    "RouteConfig",
    "Runtime",
    "SecurityConfig",
    "SegmentPostprocess",
    "ServiceConfig",
    "Size",
    "SmoothConfig",
    "SourceConfig",
    "Strict",
    "check_not_world_writable",
    "format_errors",
    "key_path",
    "load_config",
    "parse_config",
    "resolve_security_paths",
]

DEFAULT_PATH = Path("/etc/inferd/inferd.yaml")


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
    mqtt: MqttConfig | None = Field(None, description="Publish results to an MQTT broker (docs/mqtt.md).")
    zones: list[ZoneConfig] = Field(
        default_factory=list,
        description="Polygons and lines on a source's frames, watched by the tracked detect models: "
        "occupancy and enter/leave/dwell/cross events (docs/zones.md).",
    )

    @model_validator(mode="after")
    def _routes_name_models(self) -> Config:
        for i, ep in enumerate(self.endpoints):
            if ep.curve and self.security.curve is None:
                raise ValueError(f"endpoints[{i}] has curve: true but security.curve gives no keys")
        if self.results.curve and self.security.curve is None:
            raise ValueError("results has curve: true but security.curve gives no keys")
        names = {m.name for m in self.models}
        for i, ep in enumerate(self.endpoints):
            if ep.type == "frigate" and ep.model not in names:
                known = ", ".join(sorted(names))
                raise ValueError(
                    f"endpoints[{i}] (frigate) names unknown model {ep.model!r}; models: {known}"
                )
        for i, route in enumerate(self.routes):
            unknown = [m for m in route.models if m not in names]
            if unknown:
                known = ", ".join(sorted(names))
                raise ValueError(f"routes[{i}] names unknown model(s) {', '.join(unknown)}; models: {known}")
        return self._zones_to_models()

    def _zones_to_models(self) -> Config:
        """Each zone goes to the tracked detect models it names (or all of them), in their
        postprocess.zones: a model's zones are part of it (a reload that changes them reloads it)."""
        tracked = {m.name for m in self.models if m.postprocess.type == "detect" and m.postprocess.track}
        seen: set[tuple[str, str]] = set()
        for i, z in enumerate(self.zones):
            if (z.source, z.name) in seen:
                raise ValueError(f"zones[{i}]: zone {z.name!r} is drawn twice on source {z.source!r}")
            seen.add((z.source, z.name))
            for name in z.models or ():
                if name not in tracked:
                    why = "is not configured" if name not in {m.name for m in self.models} else (
                        "does not track objects (postprocess: detect with track:)")  # fmt: skip
                    raise ValueError(f"zones[{i}] ({z.name}): model {name!r} {why}")
            if not tracked:
                raise ValueError(
                    f"zones[{i}] ({z.name}): no model tracks objects; zones need a detect model with track:"
                )
        for i, m in enumerate(self.models):
            mine = tuple(
                z for z in self.zones if m.name in tracked and (z.models is None or m.name in z.models)
            )
            if m.postprocess.type == "detect" and m.postprocess.zones != mine:
                if m.postprocess.zones:
                    raise ValueError(
                        f"models[{i}].postprocess.zones: write zones in the top-level zones: list"
                    )
                post = m.postprocess.model_copy(update={"zones": mine})
                self.models[i] = m.model_copy(update={"postprocess": post})
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
    config = resolve_security_paths(parse_config(text, path), base)
    return resolve_mqtt_paths(config, base, path), base


def resolve_mqtt_paths(config: Config, base: Path, source: Path) -> Config:
    """The mqtt password and TLS files relative to the config file's folder, then checked."""
    mqtt = config.mqtt
    if mqtt is None:
        return config
    data = mqtt.model_dump(exclude_unset=True)
    if mqtt.password_file is not None:
        data["password_file"] = base / mqtt.password_file
    for key in ("ca_file", "cert_file", "key_file"):
        if mqtt.tls is not None and getattr(mqtt.tls, key) is not None:
            data["tls"][key] = base / getattr(mqtt.tls, key)
    try:
        return config.model_copy(update={"mqtt": MqttConfig.model_validate(data)})
    except ValidationError as e:
        raise ConfigError(format_errors(f"{source} (mqtt)", e, MqttConfig)) from None


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


_UNION_TAGS = {"raw", "classify", "detect", "segment", "onnx", "tflite"}
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


def format_errors(source: str, error: ValidationError, root: type | None = None) -> str:
    by_key: dict[str, list[str]] = {}
    for err in error.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            tags = err.get("ctx", {}).get("expected_tags", "")
            given = err["input"].get("type") if isinstance(err["input"], dict) else err["input"]
            msg = f"unknown type {given!r}; allowed: {tags}"
        elif err["type"] == "extra_forbidden":
            *parent, key = err["loc"]
            msg = unknown_key(section_at(root or Config, tuple(parent)), str(key))
            err = {**err, "loc": tuple(parent)}  # reported at the section holding the key
        elif err["type"] not in ("value_error", "missing"):
            msg += f" (got {err['input']!r})"
        msgs = by_key.setdefault(key_path(err["loc"]), [])
        if msg not in msgs:
            msgs.append(msg)
    lines = [f"{source}: {sum(len(m) for m in by_key.values())} error(s) in the config"]
    lines += [f"  {key}: {'; or: '.join(msgs)}" for key, msgs in by_key.items()]
    return "\n".join(lines)
