"""Handing messages on to the cloud: pipelined XADD batches to Redis streams, spooled to disk when it is away.

With a spool (``spool_dir`` set), :meth:`Upstream.send` never waits for Redis: a batch goes straight to
Redis when the spool is empty and Redis takes it, else it is appended (fsync'd) to the on-disk spool, and
either way the caller may acknowledge its MQTT messages on return. A replay thread hands the spool on to
Redis in order, with back-off, once Redis answers again. Ordering per extraction loop is kept: while the
spool holds anything, new batches go behind it, and the spool is only empty once all of it is in Redis.

Without a spool, ``send`` blocks (with exponential back-off) until Redis takes the batch, and the caller
keeps the batch's MQTT messages unacknowledged meanwhile, so the broker holds them for us.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import redis

from gateway.config import GatewaySettings
from gateway.metrics import Metrics
from gateway.spool import Spool

log = logging.getLogger(__name__)

FIELD = "m"
"""Stream entry field holding the msgpack message (DESIGN.md, Wire contracts)."""


class UpstreamRefused(RuntimeError):
    """Redis answered but refused us (wrong user or password): a settings problem, not an outage."""


def connect_redis(settings: GatewaySettings) -> redis.Redis:
    """A redis-py client for the gateway (timeouts bounded so a dead server cannot hang a loop forever).

    User and password come from the URL (``redis://USER:PASSWORD@HOST:PORT``) or, for the password,
    from ``redis_password`` (environment or file); the URL's wins.
    """
    return redis.Redis.from_url(
        settings.redis, password=settings.redis_password or None,
        socket_timeout=max(5.0, settings.results_block_ms / 1000 + 5.0), socket_connect_timeout=2.0,
        health_check_interval=30)


def open_spool(settings: GatewaySettings) -> Spool | None:
    """The gateway's spool under ``spool_dir/{id}``, or None when no spool_dir is set."""
    if not settings.spool_dir:
        return None
    from pathlib import Path

    return Spool(Path(settings.spool_dir) / settings.id, settings.spool_max_bytes, fsync=settings.spool_fsync)


class Upstream:
    """Pipelined XADD of message batches with MAXLEN ~; spooled to disk (or retried) while Redis is away."""

    def __init__(self, settings: GatewaySettings, client: redis.Redis, metrics: Metrics,
                 on_available: Callable[[bool], None] = lambda ok: None, spool: Spool | None = None) -> None:
        """``on_available(False)`` is called when Redis stops taking batches, ``(True)`` when it is back."""
        self.s = settings
        self.redis = client
        self.metrics = metrics
        self.spool = spool
        self._on_available = on_available
        self.available = True
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run_replay, name="gateway-replay", daemon=True)
        self.error: BaseException | None = None

    # lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Check that Redis accepts our credentials (an outage is fine), then start replaying the spool."""
        try:
            self.redis.ping()
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as e:
            raise UpstreamRefused(f"Redis {safe_url(self.s.redis)} refused us: {e}") from e
        except redis.RedisError as e:
            log.warning("Redis %s unreachable at start (%s); %s", safe_url(self.s.redis), e,
                        "spooling to disk" if self.spool else "holding inputs until it answers")
            self._set_available(False)
        if self.spool is not None:
            self._gauges()
            self.thread.start()

    def close(self) -> None:
        """Stop the replay thread; what the spool still holds stays on disk for the next start."""
        self._stop.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(10)
        if self.spool is not None:
            if self.spool.pending:
                log.info("stopping with %d spooled messages on disk; they are handed on at the next start",
                         self.spool.pending)
            self.spool.close()

    # sending -----------------------------------------------------------------------------------------
    def send(self, entries: list[tuple[str, bytes]], *, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Hand every ``(stream, message)`` on; True once each is in Redis or safely in the spool.

        Without a spool: on a Redis error, waits (``retry_initial_s`` doubling to ``retry_max_s``) and
        resends the whole batch (at-least-once: a batch cut in the middle may be added twice; ids make that
        harmless). Returns False, with nothing handed on, when ``give_up()`` turns true between tries.
        """
        if not entries:
            return True
        if self.spool is None:
            return self._send_retrying(entries, give_up)
        if self.spool.pending == 0 and self._xadd(entries):
            return True
        try:
            dropped = self.spool.append(entries)
        except OSError as e:  # the spool took the batch back whole (gateway/spool.py)
            self.metrics.inc("spool_write_errors")
            log.error("cannot write the spool (%s): holding %d messages until Redis takes them", e, len(entries))
            return self._send_retrying(entries, give_up)
        self.metrics.inc("spooled", len(entries))
        if dropped:
            self.metrics.inc("spool_dropped", dropped)
        self._gauges()
        self._wake.set()
        return True

    def _xadd(self, entries: list[tuple[str, bytes]]) -> bool:
        """One pipelined round trip of XADDs; False (counted, logged) when Redis did not take them."""
        t0 = time.perf_counter()
        try:
            # Each loop has its own pooled connection, so loops do not wait on each other.
            pipe = self.redis.pipeline(transaction=False)
            for stream, message in entries:
                pipe.xadd(stream, {FIELD: message}, maxlen=self.s.stream_maxlen, approximate=True)
            pipe.execute()
        except redis.RedisError as e:
            self.metrics.inc("upstream_retries")
            self._set_available(False)
            log.warning("Redis did not take %d messages (%s: %s)", len(entries), type(e).__name__, e)
            return False
        self.metrics.observe("publish", time.perf_counter() - t0, len(entries))
        self.metrics.inc("published", len(entries))
        self._set_available(True)
        return True

    def _send_retrying(self, entries: list[tuple[str, bytes]], give_up: Callable[[], bool]) -> bool:
        delay = self.s.retry_initial_s
        while not self._xadd(entries):
            log.info("retrying %d messages in %.2f s", len(entries), delay)
            if give_up() or self._sleep(delay, give_up):
                return False
            delay = min(max(delay * 2, 0.01), self.s.retry_max_s)
        return True

    @staticmethod
    def _sleep(seconds: float, give_up: Callable[[], bool]) -> bool:
        """Sleep ``seconds``; True as soon as ``give_up()`` turns true."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if give_up():
                return True
            time.sleep(min(0.05, seconds))
        return False

    # replay ------------------------------------------------------------------------------------------
    def _run_replay(self) -> None:
        try:
            self._replay()
        except BaseException as e:  # a bug (or a broken disk): make it visible to the service
            self.error = e
            log.exception("spool replay failed")
            raise

    def _replay(self) -> None:
        delay = self.s.retry_initial_s
        while not self._stop.is_set():
            self._wake.clear()
            records, pos = self.spool.read(self.s.spool_replay_batch)
            if not records:
                self._wake.wait(0.5)
                continue
            if self._xadd(records):
                self.spool.commit(pos)
                self.metrics.inc("replayed", len(records))
                self._gauges()
                delay = self.s.retry_initial_s
                continue
            self._stop.wait(delay)
            delay = min(max(delay * 2, 0.01), self.s.retry_max_s)

    def _gauges(self) -> None:
        self.metrics.set_gauge("spool_pending", self.spool.pending)
        self.metrics.set_gauge("spool_bytes", self.spool.size_bytes)

    def _set_available(self, ok: bool) -> None:
        if ok != self.available:
            self.available = ok
            log.log(logging.INFO if ok else logging.ERROR, "Redis %s", "available again" if ok else "unavailable")
            self._on_available(ok)


def safe_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
