"""/metrics and /healthz of the processes that serve no API of their own (workers, jobs)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import make_wsgi_app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are counted in metrics, not logged."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_metrics_and_health(port: int, halted: Callable[[], str | None]) -> None:
    """/metrics for Prometheus and /healthz, which answers 503 with the reason while the
    process is halted (a worker whose consumption stopped); served from a daemon thread."""
    metrics_app = make_wsgi_app()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return cast(Iterable[bytes], metrics_app(environ, start_response))
        reason = halted()
        body = {"status": "halted", "reason": reason} if reason else {"status": "ok"}
        status = "503 Service Unavailable" if reason else "200 OK"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    server = make_server("0.0.0.0", port, app, _ThreadingServer, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
