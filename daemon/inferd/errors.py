"""The error hierarchy. Every message is meant for a field engineer: say what, where, and what to do."""

from __future__ import annotations


class InferdError(Exception):
    """Base of every error inferd raises on purpose."""


class ConfigError(InferdError):
    """The config file is missing, unreadable, not YAML, or fails validation."""


class ModelLoadError(InferdError):
    """A model file could not be loaded: missing, corrupt, wrong runtime, bad checksum, unsupported op."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model = model


class FrameError(InferdError):
    """One frame was rejected. `reason` is a stable code for replies and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InferenceError(InferdError):
    """The runtime failed on an input that passed validation."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model = model


class RequestError(InferdError):
    """Client side: the daemon answered a request with an error. `reason` is its code."""

    def __init__(self, reason: str, message: str, header: dict | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message, self.header = reason, message, header or {}


class RequestTimeout(RequestError):
    """Client side: no answer before the timeout."""

    def __init__(self, message: str, reason: str = "timeout") -> None:
        RequestError.__init__(self, reason, message)


class ConnectionRefused(RequestTimeout):
    """Client side: the daemon refused this client at the handshake (allow_ips, CURVE keys), so no
    request can be answered. A RequestTimeout (as it was before inferd told them apart)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "refused")
