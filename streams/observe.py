"""A service's HTTP endpoint: Prometheus metrics at ``/metrics`` and its health at ``/healthz``.

One small threaded server per process (the standard library's), bound to loopback unless
``SPENDSTREAM_METRICS_HOST`` says otherwise (the Helm chart sets it for the pod). ``/healthz``
answers 200 while the service makes progress and 503 with the reason when it does not, so
that a liveness probe restarts a stalled process.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

#: (healthy, details): what ``/healthz`` reports
Health = Callable[[], tuple[bool, dict[str, Any]]]


def serve(
    registry: CollectorRegistry, host: str, port: int, health: Health | None = None
) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; returns the server (``shutdown()`` stops it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                ok, details = health() if health is not None else (True, {})
                body = json.dumps({"ok": ok, **details}, sort_keys=True, default=str)
                self._send(200 if ok else 503, body.encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics and health on http://%s:%d/metrics, /healthz", host, server.server_port)
    return server
