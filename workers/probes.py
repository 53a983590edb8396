"""A worker's liveness and readiness checks, for common.health's ``/healthz`` and ``/readyz``.

Liveness: the loop thread runs. Readiness: Redis answers a PING on a client of its own (1 s, no retries,
so a stopped Redis shows at once) and the models are loaded.
"""
from __future__ import annotations

from common.health import Probes


def worker_probes(worker) -> Probes:
    """The probes of a started :class:`workers.service.Worker`."""
    ping = worker.settings.redis.client(socket_timeout=1.0, socket_connect_timeout=1.0, retry=None)
    return Probes(live={"loop": lambda: (worker.alive(), "running" if worker.alive() else "stopped")},
                  ready={"redis": lambda: (bool(ping.ping()), "PONG"),
                         "models": lambda: (bool(worker.served), ", ".join(worker.served))})
