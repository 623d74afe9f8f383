"""The HTTP endpoint: /metrics (Prometheus), /healthz (alive and making progress), /readyz."""

from __future__ import annotations

import json
import logging
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


def make_app(registry, health: Probe, ready: Probe):
    metrics_app = make_wsgi_app(registry)

    def probe(fn: Probe, start_response):
        ok, body = fn()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
        return [json.dumps(body, indent=1).encode()]

    def app(environ, start_response):
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
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


class HttpServer:
    """A threaded WSGI server on HOST:PORT in a daemon thread."""

    def __init__(self, listen: str, registry, health: Probe, ready: Probe) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        server_class = ThreadingWSGIServer
        if ":" in host:  # IPv6 literal
            import socket

            server_class = type(
                "ThreadingWSGIServerV6", (ThreadingWSGIServer,), {"address_family": socket.AF_INET6}
            )
        try:
            self.server = make_server(
                host, int(port), make_app(registry, health, ready), server_class, handler_class=_QuietHandler
            )
        except OSError as e:
            raise OSError(f"metrics.listen {listen}: {e.strerror or e}") from None
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self.thread.start()

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
