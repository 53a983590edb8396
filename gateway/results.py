"""The results loop: results stream -> MQTT result topics, each inference id published once.

It blocks on XREAD of ``{p}:results:{gateway}`` from the last relayed entry id, which it keeps in Redis
(``{p}:results:{gateway}:cursor``, a string) so that a restarted gateway goes on where it stopped. Results
whose id was already relayed (a worker that redid a reclaimed message) are dropped, using a bounded window
of ids (``dedupe_size``). Once a batch is published to MQTT (QoS 1, PUBACK received) the cursor advances
and the stream is trimmed below it (XTRIM MINID), so the stream stays bounded by what is not yet relayed.

The dedup window persists with the cursor, so a restarted gateway still drops what it relayed before:
in Redis, ``{p}:results:{gateway}:seen`` is a sorted set of the relayed ids scored by their stream entry
id (newest kept, trimmed to ``dedupe_size`` by rank), written in the same pipeline as the cursor and
before it; with a spool directory, the ids are also appended to ``results.seen`` there (compacted once it
holds twice the window) before the local cursor is written. Both are loaded at start. The order (ids,
then cursor) means a crash between the two can only make the relay read entries again and drop them, never
skip one. A crash after the broker acknowledged a batch and before the pipeline ran (milliseconds)
publishes that batch once more: QoS 1 is at-least-once, and an app sees the same ``id`` twice.

A face's result (id ``...#{face}``) gets its box and its frame's summary from the face stage's ledger
(gateway/faces.py) as it is published: the cloud never had them.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import paho.mqtt.client as mqtt
import redis

from common.backoff import Backoff
from gateway.config import GatewaySettings
from gateway.faces import FaceLedger
from gateway.home_results import HomeResults
from gateway.intake import Intake
from gateway.metrics import Metrics
from gateway.pseudonyms import Pseudonyms
from schemas import Names, Result, SchemaError, make_id
from schemas.features import face_of, split_id
from schemas.names import FIELD

log = logging.getLogger(__name__)

PUBACK_WAIT_S = 0.05
"""Longest single wait for a PUBACK before the relay looks at its stop event again (seconds)."""
STOP_GRACE_S = 5.0
"""On stop, how long the relay still waits for the broker's PUBACKs of a batch it has published (seconds)."""


class RecentIds:
    """A bounded set of ids, forgetting the least recently added past ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)

    def newest(self) -> list[str]:
        """The ids, oldest first."""
        return list(self._ids)


class ResultsRelay:
    """Reads this gateway's results stream and publishes each new result to ``{p}/{device}/result``."""

    def __init__(self, settings: GatewaySettings, names: Names, client: redis.Redis, intake: Intake,
                 metrics: Metrics, faces: FaceLedger | None = None, home: HomeResults | None = None,
                 pseudonyms: Pseudonyms | None = None) -> None:
        self.s = settings
        self.names = names
        self.redis = client
        self.intake = intake
        self.metrics = metrics
        self.faces = faces
        self.pseudonyms = pseudonyms  # results come back under the names the cloud saw (gateway/pseudonyms.py)
        # the event, the retained state and Home Assistant's entity (gateway/home_results.py)
        self.home = home or HomeResults(lambda t, p, q, r: intake.publish(t, p, qos=q, retain=r), names, {})
        self.stream = names.results(settings.id)
        self.cursor_key = names.results_cursor(settings.id)
        # With a spool directory the cursor is also kept on local disk, written before Redis: a gateway
        # killed while Redis is away (the SET fails) does not publish its last relayed batch again.
        self.local_cursor = Path(settings.spool_dir) / settings.id / "results.cursor" if settings.spool_dir else None
        self.seen_key = names.results_seen(settings.id)
        self.local_seen = self.local_cursor.with_name("results.seen") if self.local_cursor is not None else None
        self._local_seen_lines = 0
        self._unsaved: list[tuple[str, str]] = []  # relayed ids not yet in Redis (a failed pipeline)
        self.seen = RecentIds(settings.dedupe_size)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gateway-results", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a bug: make it visible to the service
            self.error = e
            log.exception("results loop failed")
            raise

    def _loop(self) -> None:
        last: str | None = None
        backoff = Backoff(self.s.retry_initial_s, self.s.retry_max_s)
        while not self.stop_event.is_set():
            try:
                if last is None:
                    stored = self.redis.get(self.cursor_key)
                    cursor = max(stored.decode() if stored else "0-0", self._read_local_cursor(), key=_entry_key)
                    self._load_seen()  # before the cursor is taken: a failure here is retried whole
                    last = cursor
                    log.info("relaying results from %s after entry %s (%d ids in the dedup window)",
                             self.stream, last, len(self.seen))
                resp = self.redis.xread({self.stream: last}, count=self.s.results_batch,
                                        block=self.s.results_block_ms)
                backoff.reset()
            except redis.RedisError as e:
                self.metrics.inc("results_errors")
                delay = backoff.next()
                log.warning("reading %s failed (%s: %s); retrying in %.2f s", self.stream, type(e).__name__,
                            e, delay)
                self.stop_event.wait(delay)
                continue
            if not resp:
                continue
            entries = resp[0][1]
            relayed = []
            if self._relay(entries, relayed):
                last = entries[-1][0].decode()
                self._advance(last, relayed)

    def _reveal(self, result: Result) -> Result | None:
        """The result under its input's real id, or None (counted) for a pseudonym this gateway never issued."""
        gateway, device, seq, boot = split_id(result.id)
        real = self.pseudonyms.reveal(device, boot, seq)
        if real is None:
            self.metrics.inc_label("rejected", "unknown pseudonym")
            log.error("result %s names a pseudonym this gateway did not issue (or forgot): dropped", result.id)
            return None
        return dataclasses.replace(result, id=make_id(gateway, real[0], real[2], real[1], face_of(result.id)))

    def _relay(self, entries: list, relayed: list[tuple[str, str]]) -> bool:
        """Publish the new results among ``entries``; True once the broker has acknowledged them all.
        ``relayed`` receives ``(result id, entry id)`` of each one published."""
        t0 = time.perf_counter()
        infos = []
        latest: dict[tuple[str, str], tuple[Result, bytes]] = {}  # the batch's last result per (device, task)
        for entry_id, fields in entries:
            try:
                result = Result.decode(fields.get(FIELD.encode(), b""))
                if self.pseudonyms is not None:
                    result = self._reveal(result)
                    if result is None:
                        continue
                device = result.device
            except SchemaError as e:
                self.metrics.inc_label("rejected", f"bad result: {e.reason}")
                log.error("dropping results entry %s of %s: %s", entry_id.decode(), self.stream, e)
                continue
            if result.id in self.seen:
                self.metrics.inc("duplicates_dropped")
                log.debug("duplicate result %s dropped", result.id)
                continue
            self.seen.add(result.id)
            if self.faces is not None:
                result = self.faces.annotate(result)
            relayed.append((result.id, entry_id.decode()))
            info, body = self.home.publish_event(result, device)
            infos.append(_queued(info))
            latest[(device, result.task)] = (result, body)
            log.debug("relayed result %s (%s %.3f)", result.id, result.label, result.score)
        for (device, _), (result, body) in latest.items():  # one retained state per (device, task) a batch
            self.home.publish_state(result, device, body)
        give_up_at = None
        while not all(i.is_published() for i in infos):
            if not self.stop_event.is_set():
                # Woken by the PUBACK itself (paho notifies the info's condition), not by polling: a batch's
                # results are recorded, and the next batch read, as soon as the broker has them.
                next(i for i in infos if not i.is_published()).wait_for_publish(PUBACK_WAIT_S)
                continue
            # Stopping: the broker still answers, so wait a little for the PUBACKs of what was sent
            # (returning at once left published results unrecorded: the next gateway sent them again).
            give_up_at = give_up_at or time.monotonic() + STOP_GRACE_S
            if time.monotonic() > give_up_at:
                log.warning("stopping with %d results not yet acknowledged by the broker; they are read "
                            "again at the next start", sum(not i.is_published() for i in infos))
                return False
            time.sleep(0.005)
        self.metrics.inc("results_relayed", len(infos))
        self.metrics.observe("relay", time.perf_counter() - t0, len(entries))
        return True

    def _read_local_cursor(self) -> str:
        try:
            text = self.local_cursor.read_text().strip() if self.local_cursor is not None else ""
            _entry_key(text)
            return text
        except (OSError, ValueError):
            return "0-0"

    def _load_seen(self) -> None:
        """Fill the dedup window from the spool directory's file, then from Redis (raises RedisError)."""
        ids: list[str] = []
        if self.local_seen is not None:
            try:
                ids = self.local_seen.read_text().split()
            except FileNotFoundError:
                pass
            except (OSError, UnicodeDecodeError) as e:
                log.warning("cannot read the dedup window %s (%s); using Redis's only", self.local_seen, e)
            self._local_seen_lines = len(ids)
        size = self.s.dedupe_size
        ids += [i.decode() for i in self.redis.zrange(self.seen_key, -size, -1)] if size else []
        for i in ids[-2 * size:]:
            self.seen.add(i)

    def _store_seen_locally(self, relayed: list[tuple[str, str]]) -> None:
        text = "".join(f"{rid}\n" for rid, _ in relayed)
        if self._local_seen_lines + len(relayed) > 2 * self.s.dedupe_size:
            # Compact: rewrite the window (whole) instead of growing the file without end.
            tmp = self.local_seen.with_suffix(".tmp")
            tmp.write_text("".join(f"{rid}\n" for rid in self.seen.newest()))
            os.replace(tmp, self.local_seen)
            self._local_seen_lines = len(self.seen)
            return
        with open(self.local_seen, "a") as f:
            f.write(text)
        self._local_seen_lines += len(relayed)

    def _advance(self, last: str, relayed: list[tuple[str, str]]) -> None:
        """Persist the dedup window and then the cursor, trim what is relayed; retried on the next batch
        if Redis fails now."""
        if self.local_cursor is not None:
            try:
                if relayed:
                    self._store_seen_locally(relayed)
                tmp = self.local_cursor.with_suffix(".tmp")
                tmp.write_text(last)
                os.replace(tmp, self.local_cursor)
            except OSError as e:
                log.warning("could not store results cursor %s in %s: %s", last, self.local_cursor, e)
        self._unsaved = (self._unsaved + relayed)[-self.s.dedupe_size:] if self.s.dedupe_size else []
        try:
            pipe = self.redis.pipeline(transaction=False)
            if self._unsaved:
                pipe.zadd(self.seen_key, {rid: _entry_score(eid) for rid, eid in self._unsaved})
                pipe.zremrangebyrank(self.seen_key, 0, -self.s.dedupe_size - 1)
            pipe.set(self.cursor_key, last)
            pipe.xtrim(self.stream, minid=last, approximate=False)
            pipe.execute()
            self._unsaved = []
        except redis.RedisError as e:
            self.metrics.inc("results_errors")
            log.warning("could not store results cursor %s (%s); kept in memory", last, e)


def _queued(info: mqtt.MQTTMessageInfo) -> mqtt.MQTTMessageInfo:
    """paho keeps a QoS 1 message published while the broker is away and sends it after the reconnect,
    but its info keeps rc NO_CONN, so is_published() would raise (and end the loop) instead of turning
    true once the broker has it: mark it queued."""
    if info.rc == mqtt.MQTT_ERR_NO_CONN:
        info.rc = mqtt.MQTT_ERR_SUCCESS
    return info


def _entry_score(entry_id: str) -> float:
    """A stream entry id as a sorted-set score that keeps entry order (ms, then up to 1000 per ms; a
    double holds it exactly up to 2**53, i.e. for ms timestamps until the year 2255)."""
    ms, seq = _entry_key(entry_id)
    return ms * 1000.0 + min(seq, 999)


def _entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``MS-SEQ`` as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
