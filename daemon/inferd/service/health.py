"""The HTTP endpoint: /metrics (Prometheus), /healthz (alive and making progress), /readyz, and
the live view's routes when it is on (outputs/live.py)."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import ssl
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, make_server

log = logging.getLogger("inferd.http")

Probe = Callable[[], tuple[bool, dict]]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (a scrape every few seconds would flood the journal)."""

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def make_app(
    registry, health: Probe, ready: Probe, credentials: tuple[str, str] | None = None, live_app=None
):
    metrics_app = make_wsgi_app(registry)
    expected = None
    if credentials is not None:
        expected = "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()

    def probe(fn: Probe, start_response):
        ok, body = fn()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
        return [json.dumps(body, indent=1).encode()]

    def app(environ, start_response):
        if expected is not None and not hmac.compare_digest(
            environ.get("HTTP_AUTHORIZATION", "").encode(), expected.encode()
        ):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="inferd"')])
            return [b"authentication required\n"]
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"method not allowed\n"]
        if path in ("/metrics", "/"):
            return metrics_app(environ, start_response)
        if path == "/healthz":
            return probe(health, start_response)
        if path == "/readyz":
            return probe(ready, start_response)
        if live_app is not None and (path == "/live" or path.startswith("/live/")):
            return live_app(environ, start_response)  # outputs/live.py
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


def read_password(path) -> str:
    """The basic-auth password from its file, which others must not be able to read."""
    try:
        if path.stat().st_mode & 0o077:
            raise OSError(f"{path} is readable by others: chmod 600 {path}")
        return path.read_text().strip()
    except OSError as e:
        raise OSError(
            f"security.http.basic_auth_password_file: {getattr(e, 'strerror', None) or e}"
        ) from None


class HttpServer:
    """A threaded WSGI server on HOST:PORT in a daemon thread."""

    def __init__(
        self, listen: str, registry, health: Probe, ready: Probe, security=None, live_app=None
    ) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        server_class = ThreadingWSGIServer
        if ":" in host:  # IPv6 literal
            import socket

            server_class = type(
                "ThreadingWSGIServerV6", (ThreadingWSGIServer,), {"address_family": socket.AF_INET6}
            )
        credentials = None
        if security is not None and security.basic_auth_user:
            credentials = (security.basic_auth_user, read_password(security.basic_auth_password_file))
        try:
            self.server = make_server(
                host, int(port), make_app(registry, health, ready, credentials, live_app), server_class,
                handler_class=_QuietHandler,
            )  # fmt: skip
        except OSError as e:
            raise OSError(f"metrics.listen {listen}: {e.strerror or e}") from None
        if security is not None and security.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ctx.load_cert_chain(str(security.tls_cert), str(security.tls_key))
            except (OSError, ssl.SSLError) as e:
                self.server.server_close()
                raise OSError(f"security.http TLS certificate: {e}") from None
            # handshake in the request thread, not in accept(): a silent client cannot block the server
            self.server.socket = ctx.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self.thread.start()

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
