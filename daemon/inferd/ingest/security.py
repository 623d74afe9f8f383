"""Access control: CURVE keys and the ZAP authenticator, ipc socket permissions, rate limits."""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from inferd.errors import ConfigError

log = logging.getLogger("inferd.security")


def generate_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A CURVE key pair: NAME.key (public, 0644) and NAME.key_secret (0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret certificate; refuses a secret others can read."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise ConfigError(f"CURVE key {path}: {e.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"CURVE secret key {path} is readable by others: chmod 600 {path}")
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise ConfigError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


class Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP authenticator plus per-endpoint (per ZAP domain) CIDR allowlists."""

    def __init__(self, ctx: zmq.Context, on_denied=None) -> None:
        super().__init__(ctx)
        self.networks: dict[str, list] = {}
        self.on_denied = on_denied

    def allow_networks(self, domain: str, networks: list[str]) -> None:
        self.networks[domain] = [ipaddress.ip_network(n, strict=False) for n in networks]

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """Check the client's address against its endpoint's networks, then the mechanism."""
        if len(msg) >= 6:
            domain, address = msg[2].decode(errors="replace"), msg[3].decode(errors="replace")
            nets = self.networks.get(domain)
            if nets is not None and not _in(address, nets):
                self._send_zap_reply(msg[1], b"400", b"Address not allowed")
                return
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous") -> None:
        if status_code != b"200":
            self._refused("", status_text.decode(errors="replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)

    def _refused(self, domain: str, reason: str) -> None:
        log.warning("refused a connection: %s", reason)
        if self.on_denied is not None:
            self.on_denied(reason)


def _in(address: str, nets: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in nets)


def secure_ipc(address: str, mode: str, group: str | None) -> None:
    """Set the mode and group of an ipc:// socket file after bind."""
    if not address.startswith("ipc://") or address.startswith("ipc://@"):
        return
    path = address[len("ipc://") :]
    os.chmod(path, int(mode, 8))
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.debug("group %s does not exist: %s keeps its group", group, path)
            return
        if os.stat(path).st_gid == gid:
            return  # already (under systemd: Group=inferd)
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            log.warning("cannot give %s to group %s (not a member?)", path, group)


class RateLimiter:
    """Token buckets per source: `rate` frames per second, bursts of up to one second's worth."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, source: str, rate: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(source, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            return False
        self._buckets[source] = (tokens - 1.0, now)
        return True
