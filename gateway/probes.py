"""The gateway's liveness and readiness checks, for common.health's ``/healthz`` and ``/readyz``.

Liveness: the extraction loops' and the results relay's threads run (a thread that has not started yet
does not count against it), and none ended on an error. Readiness: the broker connected, Redis answering a
PING on a client of its own (1 s, no retries, so a stopped Redis shows at once), the models loaded.
"""
from __future__ import annotations

import threading

from common.health import Probes
from common.redis_connection import RedisSettings


def gateway_probes(gateway) -> Probes:
    """The probes of a :class:`gateway.service.Gateway` (read when an endpoint is asked, never before)."""
    s = gateway.s
    ping = RedisSettings.from_dsn(s.redis, s.redis_password or None).client(
        socket_timeout=1.0, socket_connect_timeout=1.0, retry=None) if gateway.serving.uses_cloud else None

    def threads() -> tuple[bool, str]:
        dead = [name for name, t in _threads(gateway) if t.ident is not None and not t.is_alive()]
        return not dead and gateway.failed() is None, f"stopped: {dead}" if dead else "running"

    def redis_ok() -> tuple[bool, str]:
        return bool(ping.ping()), "PONG"

    ready = {"mqtt": lambda: (gateway.intake is not None and gateway.intake.connected.is_set(), s.broker),
             "models": lambda: (bool(gateway.loops), ", ".join(loop.model_id for loop in gateway.loops))}
    if ping is not None:
        ready["redis"] = redis_ok
    return Probes(live={"threads": threads}, ready=ready)


def _threads(gateway) -> list[tuple[str, threading.Thread]]:
    out = [(f"{loop.kind} loop", loop.thread) for loop in gateway.loops]
    if gateway.relay is not None:
        out.append(("results relay", gateway.relay.thread))
    return out
