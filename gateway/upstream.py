"""Handing messages on to the cloud: pipelined XADD batches to Redis streams, spooled to disk when it is away.

With a spool (``spool_dir`` set), :meth:`Upstream.send` never waits for Redis: a batch goes straight to
Redis when the spool is empty and Redis takes it, else it is appended (fsync'd) to the on-disk spool, and
either way the caller may acknowledge its MQTT messages on return. A replay thread hands the spool on to
Redis in order, with back-off, once Redis answers again. Ordering per extraction loop is kept: while the
spool holds anything, new batches go behind it, and the spool is only empty once all of it is in Redis.

Without a spool, ``send`` blocks (with exponential back-off) until Redis takes the batch, and the caller
keeps the batch's MQTT messages unacknowledged meanwhile, so the broker holds them for us.

With ``redis_wait_replicas`` set, the round trip also holds a ``WAIT`` (per master written to, on a
Redis Cluster: common.redis_slots) after the XADDs, so that a batch counts as in only once that many
replicas have it: a shortfall within ``redis_wait_timeout_ms`` is counted (``wait_short``) and handled as
a round trip Redis did not take (resent or spooled; the copies carry their ids, which the results relay
drops). That is what protects the batch from a master that took it and then lost it at a failover (a
master paused past the node timeout answers its queued clients before it learns it was replaced). The
price is availability: while a master holding one of the home's shards has no replica (after a
failover, until the old master or a new replica joins it), the home's inputs wait in its spool or at the
broker.

On a Redis Cluster the pipeline's XADDs go to every master that holds one of the home's shards at once
(redis-py splits the pipeline by node); a master that fails mid-batch fails the round trip, which is
retried or spooled as a whole (duplicates carry their ids, which the results relay drops).

The XADDs carry no MAXLEN: a stream is trimmed only by the workers, below what they have acknowledged
(workers/streams.py), so an entry no worker has read is never lost to trimming. Instead the gateway
watches its own backlog: every XADD round trip also asks XLEN and XINFO GROUPS of the streams it wrote
(the same pipeline, two more replies per stream), and a stream's backlog is what no worker has finished,
the group's lag plus its pending entries (acknowledged entries the workers still keep do not count). When
one holds more than ``stream_max_backlog`` entries the cloud is behind, and the gateway acts as if Redis were away: it spools (or holds: the inputs behind wait unacknowledged at
the broker), tells ``on_available(False)``, counts ``cloud_behind_events`` and shows the ``cloud_behind``
gauge. While behind, each try first re-checks the backlog (no XADD, with the usual back-off) and sends
again once every stream is below three quarters of the bound; the gap keeps the gateway from switching at
every batch the workers finish. A watcher thread re-checks too
(every ``retry_max_s``) while behind, so that status and metrics clear when nothing is being sent.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import redis

from common.backoff import Backoff
from common.redis_connection import RedisSettings
from common.redis_slots import queue_wait
from common.tls import certificate_refused
from gateway.config import GatewaySettings
from gateway.metrics import Metrics
from gateway.spool import Spool, SpoolFull
from schemas.names import FIELD

log = logging.getLogger(__name__)



class UpstreamRefused(RuntimeError):
    """Redis answered but refused us (wrong user or password), or its certificate is not the one our CA
    signed: a settings problem, not an outage."""


def connect_redis(settings: GatewaySettings) -> redis.Redis:
    """A redis-py client for the gateway, built as the worker's is (common.redis_connection), with a reply
    timeout a little above the results loop's BLOCK.

    User and password come from the URL (``redis://USER:PASSWORD@HOST:PORT``) or, for the password,
    from ``redis_password`` (environment or file); the URL's wins. ``rediss://``: TLS with the
    ``redis_*_file`` settings.
    """
    tls = settings.redis_tls
    return RedisSettings.from_dsn(settings.redis, settings.redis_password or None, ca_file=tls.ca_file,
                                  cert_file=tls.cert_file, key_file=tls.key_file).client(
        socket_timeout=max(5.0, settings.results_block_ms / 1000 + 5.0))


def open_spool(settings: GatewaySettings) -> Spool | None:
    """The gateway's spool under ``spool_dir/{id}``, or None when no spool_dir is set."""
    if not settings.spool_dir:
        return None
    from pathlib import Path

    return Spool(Path(settings.spool_dir) / settings.id, settings.spool_max_bytes, fsync=settings.spool_fsync)


class Upstream:
    """Pipelined XADD of message batches; spooled to disk (or retried) while Redis is away or behind."""

    def __init__(self, settings: GatewaySettings, client: redis.Redis, metrics: Metrics,
                 on_available: Callable[[bool], None] = lambda ok: None, spool: Spool | None = None) -> None:
        """``on_available(False)`` is called when Redis stops taking batches, ``(True)`` when it is back."""
        self.s = settings
        self.redis = client
        self.metrics = metrics
        self.spool = spool
        self._on_available = on_available
        self.available = True          # Redis answers
        self.behind = False            # a stream's backlog is over stream_max_backlog
        self._reported = True          # what on_available was last told (available and not behind)
        self._lengths: dict[str, int] = {}  # our streams -> backlog at the last round trip (_backlogs)
        self._state = threading.Lock()      # behind, _lengths and _reported: loops, replay and watcher
        self._watcher: threading.Thread | None = None
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
            if certificate_refused(e):  # a settings problem: retrying would never succeed
                raise UpstreamRefused(f"Redis {safe_url(self.s.redis)}: its certificate is not trusted "
                                      f"(redis_ca_file, the URL's host): {e}") from e
            log.warning("Redis %s unreachable at start (%s); %s", safe_url(self.s.redis), e,
                        "spooling to disk" if self.spool else "holding inputs until it answers")
            self._set_available(False)
        self.metrics.set_gauge("cloud_behind", 0)
        if self.spool is not None:
            self._gauges()
            self.thread.start()

    def close(self) -> None:
        """Stop the replay thread; what the spool still holds stays on disk for the next start."""
        self._stop.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(10)
        if self._watcher is not None:
            self._watcher.join(10)
        if self.spool is not None:
            if self.spool.pending:
                log.info("stopping with %d spooled messages on disk; they are handed on at the next start",
                         self.spool.pending)
            self.spool.close()

    # sending -----------------------------------------------------------------------------------------
    def send(self, entries: list[tuple[str, bytes]], *, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Hand every ``(stream, message)`` on; True once each is in Redis or safely in the spool.

        Without a spool: on a Redis error, waits (``retry_initial_s`` doubling to ``retry_max_s``, with
        jitter: common.backoff) and
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
            self.spool.append(entries)
        except SpoolFull as e:
            self.metrics.inc("spool_full")
            if not e.fits_ever:  # larger than the whole spool: straight to Redis, retrying
                return self._send_retrying(entries, give_up)
            log.warning("%s: holding %d messages until the replay makes room", e, len(entries))
            if not self._wait_for_room(entries, give_up):
                return False
        except OSError as e:  # the spool took the batch back whole (gateway/spool.py)
            self.metrics.inc("spool_write_errors")
            log.error("cannot write the spool (%s): holding %d messages until Redis takes them", e, len(entries))
            return self._send_retrying(entries, give_up)
        self.metrics.inc("spooled", len(entries))
        self._gauges()
        self._wake.set()
        return True

    def _xadd(self, entries: list[tuple[str, bytes]]) -> bool:
        """One pipelined round trip of XADDs and the backlog of each stream written; False (counted, logged)
        when Redis did not take them, or when the cloud is behind and still is (nothing sent then)."""
        t0 = time.perf_counter()
        try:
            if self.behind and not self._caught_up():
                return False
            # Each loop has its own pooled connection, so loops do not wait on each other.
            pipe = self.redis.pipeline(transaction=False)
            for stream, message in entries:
                pipe.xadd(stream, {FIELD: message})
            streams = sorted({stream for stream, _ in entries})
            waits = 0
            if self.s.redis_wait_replicas:
                waits = queue_wait(pipe, self.redis, streams, self.s.redis_wait_replicas, self.s.redis_wait_timeout_ms)
            _ask_backlog(pipe, streams)
            replies = pipe.execute()
            lengths = _backlogs(replies[len(entries) + waits:])
            if any(int(n) < self.s.redis_wait_replicas for n in replies[len(entries):len(entries) + waits]):
                # Not on a replica in time: as if Redis had not taken the batch (module docstring).
                self.metrics.inc("wait_short")
                raise redis.RedisError(f"fewer than {self.s.redis_wait_replicas} replicas took the batch "
                                       f"within {self.s.redis_wait_timeout_ms} ms")
        except redis.RedisError as e:
            self.metrics.inc("upstream_retries")
            self._set_available(False)
            log.warning("Redis did not take %d messages (%s: %s)", len(entries), type(e).__name__, e)
            return False
        self.metrics.observe("publish", time.perf_counter() - t0, len(entries))
        self.metrics.inc("published", len(entries))
        self._set_available(True)
        with self._state:
            self._lengths.update(zip(streams, lengths))
        self._backlog()
        return True

    def _caught_up(self) -> bool:
        """While behind: the backlog of our streams again; True once all are below 3/4 of the bound."""
        streams = list(self._lengths)
        pipe = self.redis.pipeline(transaction=False)
        _ask_backlog(pipe, streams)
        lengths = _backlogs(pipe.execute())
        with self._state:
            self._lengths.update(zip(streams, lengths))
        self._set_available(True)
        return not self._backlog(resume_below=self.s.stream_max_backlog * 3 // 4)

    def _backlog(self, resume_below: int | None = None) -> bool:
        """Update ``behind`` from the last lengths (over the bound: behind; below ``resume_below``, when
        given: caught up); returns it."""
        with self._state:
            longest = max(self._lengths.values(), default=0)
            self.metrics.set_gauge("stream_backlog", longest)
            if not self.behind and longest > self.s.stream_max_backlog:
                self.behind = True
                self.metrics.inc("cloud_behind_events")
                log.error("the cloud is behind: %d entries wait in %s (> stream_max_backlog %d); %s", longest,
                          max(self._lengths, key=self._lengths.get), self.s.stream_max_backlog,
                          "spooling" if self.spool else "holding inputs")
                if self._watcher is None or not self._watcher.is_alive():
                    self._watcher = threading.Thread(target=self._watch, name="gateway-backlog", daemon=True)
                    self._watcher.start()
            elif self.behind and resume_below is not None and longest < resume_below:
                self.behind = False
                log.warning("the cloud caught up (%d entries wait at most); sending again", longest)
            self.metrics.set_gauge("cloud_behind", int(self.behind))
            behind = self.behind
        self._report()
        return behind

    def _watch(self) -> None:
        """Re-check the backlog every retry_max_s while behind (errors: Redis away, handled as such)."""
        while self.behind and not self._stop.wait(self.s.retry_max_s):
            try:
                self._caught_up()
            except redis.RedisError as e:
                self._set_available(False)
                log.warning("backlog check failed (%s: %s)", type(e).__name__, e)

    def _wait_for_room(self, entries: list[tuple[str, bytes]], give_up: Callable[[], bool]) -> bool:
        """Append ``entries`` once the replay has made room (the caller's inputs stay unacknowledged at
        the broker meanwhile, and the spool's order is kept); False when ``give_up()`` turns true."""
        backoff = self._backoff()
        while not (give_up() or self._sleep(backoff.next(), give_up)):
            try:
                self.spool.append(entries)
                return True
            except SpoolFull:
                pass
        return False

    def _send_retrying(self, entries: list[tuple[str, bytes]], give_up: Callable[[], bool]) -> bool:
        backoff = self._backoff()
        while not self._xadd(entries):
            delay = backoff.next()
            log.info("retrying %d messages in %.2f s", len(entries), delay)
            if give_up() or self._sleep(delay, give_up):
                return False
        return True

    def _backoff(self) -> Backoff:
        """The pause between tries: retry_initial_s doubling to retry_max_s, with jitter."""
        return Backoff(self.s.retry_initial_s, self.s.retry_max_s)

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
        backoff = self._backoff()
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
                backoff.reset()
                continue
            self._stop.wait(backoff.next())

    def _gauges(self) -> None:
        self.metrics.set_gauge("spool_pending", self.spool.pending)
        self.metrics.set_gauge("spool_bytes", self.spool.size_bytes)

    def _set_available(self, ok: bool) -> None:
        if ok != self.available:
            self.available = ok
            log.log(logging.INFO if ok else logging.ERROR, "Redis %s", "available again" if ok else "unavailable")
        self._report()

    def _report(self) -> None:
        """Tell on_available when "Redis takes our batches" (available and not behind) changes."""
        with self._state:
            ok = self.available and not self.behind
            changed, self._reported = ok != self._reported, ok
        if changed:
            self._on_available(ok)


def _ask_backlog(pipe, streams: list[str]) -> None:
    """Queue, per stream, the XLEN and XINFO GROUPS that :func:`_backlogs` reads."""
    for stream in streams:
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)


def _backlogs(replies: list) -> list[int]:
    """Per stream, the entries no worker has finished: the group's lag (not yet delivered) plus its
    pending entries (delivered, not acknowledged); the whole XLEN when no group reads the stream yet or
    Redis cannot say the lag. Acknowledged entries the workers keep for a while do not count: a stream
    holding only those is not behind."""
    out = []
    for length, groups in zip(replies[::2], replies[1::2]):
        known = [g["lag"] + g["pending"] for g in groups if g.get("lag") is not None]
        out.append(max(known) if known and len(known) == len(groups) else int(length))
    return out


def safe_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
