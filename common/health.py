"""Health and metrics over HTTP for both services: ``/healthz``, ``/readyz`` and ``/metrics`` on one port.

- ``/healthz`` (liveness): 200 while the process's loop threads run, 503 once one has died (the service
  then exits non-zero on its own; an orchestrator restarts it).
- ``/readyz`` (readiness): 200 when the service can do its work now (broker and Redis reachable, models
  loaded), 503 with the reasons otherwise. Each check is run at request time, bounded by its own timeout,
  so a stopped Redis shows as unready within seconds.
- ``/metrics``: the service's prometheus_client registry in the text exposition format.

Every answer is JSON ``{"ok": bool, "checks": {name: {"ok": bool, "detail": str}}}`` (metrics aside).
``check(url)`` is what ``privedge gateway --check`` / ``privedge worker --check`` run: exit status 0 when the
running service answers ready, 1 otherwise (as arq's ``--check`` does).

The server is the standard library's ``ThreadingHTTPServer``: three fixed GET routes do not earn a web
framework, and prometheus_client's own ``start_http_server`` serves metrics only.
"""
from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger(__name__)

Check = Callable[[], "tuple[bool, str]"]
"""A probe: () -> (ok, detail). It must return within a second or two; exceptions count as not ok."""


@dataclass
class Probes:
    """The named liveness and readiness checks of one service."""

    live: dict[str, Check]
    ready: dict[str, Check]


def run_checks(checks: dict[str, Check]) -> dict:
    out = {}
    for name, probe in checks.items():
        try:
            ok, detail = probe()
        except Exception as e:  # noqa: BLE001 - a probe that raises is a failed probe, with its reason
            ok, detail = False, f"{type(e).__name__}: {e}"
        out[name] = {"ok": bool(ok), "detail": str(detail)[:200]}
    return {"ok": all(c["ok"] for c in out.values()), "checks": out}


class HealthServer:
    """Serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port`` (port 0: any free one)."""

    def __init__(self, probes: Probes, registry=None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.probes = probes
        self.registry = registry
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and server.registry is not None:
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    result = run_checks(server.probes.live if path == "/healthz" else
                                        {**server.probes.live, **server.probes.ready})
                    self._send(200 if result["ok"] else 503, json.dumps(result).encode(), "application/json")
                else:
                    self._send(404, b'{"ok": false, "error": "not found"}', "application/json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args) -> None:  # probes every few seconds: keep them out of the log
                log.debug("health %s", fmt % args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> "HealthServer":
        self._thread.start()
        log.info("health and metrics on %s (/healthz, /readyz, /metrics)", self.url)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def check(url: str, timeout_s: float = 5.0) -> int:
    """0 when ``url``/readyz answers 200, else 1 (and the reasons on stderr): the ``--check`` exit status."""
    import sys

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=timeout_s) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    except OSError as e:
        print(f"not reachable: {url}: {e}", file=sys.stderr)
        return 1
    if status == 200:
        return 0
    try:
        failed = {k: v["detail"] for k, v in json.loads(body)["checks"].items() if not v["ok"]}
    except (ValueError, KeyError, TypeError):
        failed = body[:200]
    print(f"not ready: {failed}", file=sys.stderr)
    return 1
