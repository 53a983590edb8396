"""Handing messages on to the cloud: XADD batches to Redis streams, retried with back-off.

This is the seam for the on-disk spool of the reliability work: today :meth:`Upstream.send` blocks (with
exponential back-off) until Redis takes the batch, and the caller keeps the batch's MQTT messages
unacknowledged meanwhile, so the broker holds them for us; a spool would make ``send`` append to disk
when Redis is away and replay in order when it returns, without changing the callers.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import redis

from gateway.config import GatewaySettings
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

FIELD = "m"
"""Stream entry field holding the msgpack message (DESIGN.md, Wire contracts)."""


def connect_redis(settings: GatewaySettings) -> redis.Redis:
    """A redis-py client for the gateway (timeouts bounded so a dead server cannot hang a loop forever)."""
    return redis.Redis.from_url(
        settings.redis, password=settings.redis_password or None,
        socket_timeout=max(5.0, settings.results_block_ms / 1000 + 5.0), socket_connect_timeout=2.0,
        health_check_interval=30)


class Upstream:
    """Pipelined XADD of message batches with MAXLEN ~, retried until they are in or the caller gives up."""

    def __init__(self, settings: GatewaySettings, client: redis.Redis, metrics: Metrics,
                 on_available: Callable[[bool], None] = lambda ok: None) -> None:
        """``on_available(False)`` is called when Redis stops taking batches, ``(True)`` when it is back."""
        self.s = settings
        self.redis = client
        self.metrics = metrics
        self._on_available = on_available
        self.available = True

    def send(self, entries: list[tuple[str, bytes]], *, give_up: Callable[[], bool] = lambda: False) -> bool:
        """XADD every ``(stream, message)`` in one pipelined round trip; True once Redis has them all.

        On a Redis error, waits (``retry_initial_s`` doubling to ``retry_max_s``) and resends the whole
        batch (at-least-once: a batch cut in the middle may be added twice; ids make that harmless).
        Returns False, with nothing acknowledged, when ``give_up()`` turns true between tries.
        """
        if not entries:
            return True
        delay = self.s.retry_initial_s
        while True:
            t0 = time.perf_counter()
            try:
                # One round trip; each loop has its own pooled connection, so loops do not wait on each other.
                pipe = self.redis.pipeline(transaction=False)
                for stream, message in entries:
                    pipe.xadd(stream, {FIELD: message}, maxlen=self.s.stream_maxlen, approximate=True)
                pipe.execute()
                self.metrics.observe("publish", time.perf_counter() - t0, len(entries))
                self.metrics.inc("published", len(entries))
                self._set_available(True)
                return True
            except redis.RedisError as e:
                self.metrics.inc("upstream_retries")
                self._set_available(False)
                log.warning("Redis did not take %d messages (%s: %s); retrying in %.2f s",
                            len(entries), type(e).__name__, e, delay)
            if give_up():
                return False
            end = time.monotonic() + delay
            while time.monotonic() < end:
                if give_up():
                    return False
                time.sleep(min(0.05, delay))
            delay = min(max(delay * 2, 0.01), self.s.retry_max_s)

    def _set_available(self, ok: bool) -> None:
        if ok != self.available:
            self.available = ok
            log.log(logging.INFO if ok else logging.ERROR, "Redis %s", "available again" if ok else "unavailable")
            self._on_available(ok)
