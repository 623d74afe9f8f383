"""The `mqtt:` section: results to an MQTT broker and Home Assistant (outputs/mqtt.py, homeassistant.py)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from inferd.config.base import Strict


class PublishPolicy(Strict):
    """How often a model's results (per source) go to the broker."""

    mode: Literal["every", "rate", "change"] = Field(
        "change",
        description="every result; at most `max_per_s`; or only when it changes (top label, the set of "
        "detected labels and their counts, the dominant segment class) plus a heartbeat.",
    )
    max_per_s: float = Field(1.0, gt=0, description="rate: results per second per source, at most.")
    heartbeat_s: float = Field(60.0, gt=0, description="change: publish an unchanged result this often.")


class HomeAssistantConfig(Strict):
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's MQTT discovery prefix.")
    labels: list[str] = Field(
        default_factory=list,
        description="detect models: a binary sensor per source for each of these labels.",
    )
    off_delay_s: int = Field(
        5,
        ge=1,
        description="`every`/`rate` models: binary sensors turn off this many seconds after the last "
        "sighting (at least two publish intervals); `change` models publish the label leaving instead.",
    )
    birth_topic: str | None = Field(
        None,
        description="Home Assistant's birth message topic (default: DISCOVERY_PREFIX/status): when it "
        "says `online`, inferd announces its entities and their latest states again.",
    )

    @field_validator("birth_topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is not None and (not v or re.search(r"[#+]", v)):
            raise ValueError(f"{v!r}: a topic, without MQTT wildcards (# +)")
        return v


class MqttTlsConfig(Strict):
    ca_file: Path | None = Field(
        None, description="CA certificate(s) to verify the broker (default: the system's)."
    )
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client key (mutual TLS).")
    insecure: bool = Field(False, description="Skip verifying the broker's certificate (testing only).")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        # a relative path is checked once load_config has made it absolute (the config's folder)
        problem = v is not None and v.is_absolute() and file_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class MqttConfig(Strict):
    broker: str = Field(
        pattern=r"^mqtts?://[^/:]+(:\d+)?/?$",
        description="mqtt://HOST[:PORT] (1883), mqtts://HOST[:PORT] (8883).",
    )
    topic_prefix: str = Field("inferd", description="Results on PREFIX/DEVICE/MODEL/SOURCE.")
    device_id: str = Field(
        default_factory=lambda: sanitize(socket.gethostname()), description="Default: the hostname."
    )
    client_id: str | None = Field(None, description="MQTT client id (default: inferd-DEVICE).")
    username: str | None = None
    password_file: Path | None = Field(
        None, description="The password, alone in a file readable only by inferd."
    )
    tls: MqttTlsConfig | None = Field(None, description="TLS options (mqtts:// turns TLS on with defaults).")
    qos: Literal[0, 1] = 0
    keepalive_s: int = Field(30, ge=5)
    outbox: int = Field(
        1000, ge=1, description="Unsent messages kept while the broker is slow or away (oldest dropped)."
    )
    publish: PublishPolicy = Field(default_factory=PublishPolicy, description="The default policy.")
    models: dict[str, PublishPolicy] = Field(
        default_factory=dict, description="Per model policies; raw models publish only when listed here."
    )
    home_assistant: HomeAssistantConfig | None = None

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.strip("/") or re.search(r"[#+\s]", v):
            raise ValueError(f"{v!r}: a topic prefix, without MQTT wildcards (# +) or spaces")
        return v.strip("/")

    @field_validator("device_id")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError(f"{v!r}: letters, digits, _ and - only (it is a topic level and an id)")
        return v

    @field_validator("password_file")
    @classmethod
    def _private(cls, v: Path | None) -> Path | None:
        """Refused here, so `inferd check` and a reload say it before a connection fails."""
        problem = v is not None and v.is_absolute() and file_problem(v, private=True)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _user(self) -> MqttConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs a username (MQTT sends no password without one)")
        return self

    @property
    def host_port(self) -> tuple[str, int, bool]:
        m = re.match(r"^(mqtts?)://([^/:]+)(?::(\d+))?", self.broker)
        tls = m.group(1) == "mqtts"
        return m.group(2), int(m.group(3) or (8883 if tls else 1883)), tls


def file_problem(path: Path, private: bool = False) -> str | None:
    """A missing file, or (private) one that group or others may read. Only stat() is used: `inferd
    check` run by another user than the daemon's still sees these two, and nothing else is guessed."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{path}: no such file"
    except OSError:
        return None  # a folder we may not search: the daemon itself will say whether it can read it
    if private and mode & 0o077:
        return f"{path} is readable by others (mode {mode & 0o777:o}): chmod 600 {path}"
    return None


def sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "inferd"
