"""Writing one batch's outcome: results, dead letters and XACKs, in an order that loses nothing.

On one Redis, everything goes in one MULTI/EXEC round trip: results to their reply streams, dead letters to
their shard's ``{p}:dead:{{task}:{NN}}``, then the XACKs, so a result and its ack go together.

On a Redis Cluster a MULTI/EXEC may touch one hash slot only. The keys are tagged for it (schemas.names):
one task shard's features streams and its dead letters share a slot, so the dead letters and the XACKs of
one shard still go in one MULTI/EXEC, atomically; but a result goes to its home's results stream, in the
home's slot, on whichever master holds it. So the write is in two steps:

1. the results, in one pipeline (redis-py sends each master its part at once); an error of any part raises
   and nothing is acknowledged;
2. only then, one MULTI/EXEC per shard with that shard's dead letters and XACKs.

Killed between the two (a worker's crash, or the master of a shard failing), the entries stay pending: a
worker reclaims them after ``claim_idle_ms`` and analyses them again, and their second results carry the
same ids, which the gateway's results relay drops (gateway/results.py keeps the relayed ids). An entry is
never acknowledged before its result is in Redis, so the split loses nothing; the price is a duplicate
result in Redis, never one on MQTT. The other order (acks first) would lose the results of a crash in
between.

With ``wait_replicas`` the results' pipeline ends with a WAIT on each master it wrote to (common.redis_slots),
so that a result is on a replica (or ``wait_timeout_ms`` passed) before its input is acknowledged: a
master failing right after taking a result then loses it less often (README, "Scaling"). On one Redis the
WAIT is not sent (a MULTI/EXEC cannot hold it).
"""
from __future__ import annotations

import time

from common.redis_slots import by_slot, is_cluster, queue_wait
from schemas.limits import DEFAULT_LIMITS
from schemas.names import FIELD, GROUP, Names
from schemas.results import ErrorReport
from workers.streams import StreamSet

DEAD_LETTER_BYTES = DEFAULT_LIMITS.max_feature_payload
"""Most bytes of an entry's message copied into its dead letter (64 KiB: any valid feature message fits)."""


class BatchWriter:
    """Writes the outcome of a batch read from ``streams`` by consumer ``name``."""

    def __init__(self, client, names: Names, streams: StreamSet, name: str, *, reply_maxlen: int,
                 dead_maxlen: int, wait_replicas: int = 0, wait_timeout_ms: int = 100) -> None:
        self.redis = client
        self.names = names
        self.streams = streams
        self.name = name
        self.reply_maxlen = reply_maxlen
        self.dead_maxlen = dead_maxlen
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms

    def write(self, results: list, dead: list, acks: dict) -> int:
        """``results``: (reply stream, encoded Result); ``dead``: (stream, entry id, fields, Rejected);
        ``acks``: stream -> entry ids. Returns 1 when a WAIT found fewer replicas than asked, else 0."""
        dead_by_stream: dict[str, list] = {}
        for stream, eid, fields, err in dead:
            dead_by_stream.setdefault(stream, []).append((eid, fields, err))
        streams = [*acks, *(s for s in dead_by_stream if s not in acks)]
        if not is_cluster(self.redis):
            pipe = self.redis.pipeline(transaction=True)
            self._queue_results(pipe, results)
            self._queue_acks(pipe, streams, dead_by_stream, acks)
            pipe.execute()
            return 0
        short = 0
        if results:
            pipe = self.redis.pipeline(transaction=False)
            self._queue_results(pipe, results)
            waits = 0
            if self.wait_replicas:
                waits = queue_wait(pipe, self.redis, {reply for reply, _ in results}, self.wait_replicas,
                                   self.wait_timeout_ms)
            replies = pipe.execute()  # raises unless every result is in: then nothing is acknowledged
            short = int(any(int(n) < self.wait_replicas for n in replies[len(replies) - waits:]))
        for group in by_slot(self.redis, streams).values():
            pipe = self.redis.pipeline(transaction=True)
            self._queue_acks(pipe, group, dead_by_stream, acks)
            pipe.execute()
        return short

    def _queue_results(self, pipe, results: list) -> None:
        for reply, encoded in results:
            pipe.xadd(reply, {FIELD: encoded}, maxlen=self.reply_maxlen, approximate=True)

    def _queue_acks(self, pipe, streams: list[str], dead_by_stream: dict, acks: dict) -> None:
        """The dead letters and the XACKs of ``streams`` (one slot on a Cluster), dead letters first."""
        for stream in streams:
            for eid, fields, err in dead_by_stream.get(stream, ()):
                report = ErrorReport(source=self.name, device="", topic=stream[:512], reason=err.reason[:256],
                                     detail=err.detail[:200], ts=time.time())
                pipe.xadd(self.dead_of(stream),
                          {"reason": err.reason, "entry": _id(eid), "error": report.encode(),
                           # bounded: a hostile entry is kept for inspection, not whole
                           FIELD: fields.get(FIELD.encode(), b"")[:DEAD_LETTER_BYTES]},
                          maxlen=self.dead_maxlen, approximate=True)
        for stream in streams:
            if acks.get(stream):
                pipe.xack(stream, GROUP, *acks[stream])

    def dead_of(self, stream: str) -> str:
        """The dead-letter stream of a stream this worker read, ``{p}:dead:{{task}:{NN}}`` of its task and
        shard (its slot): from its key (schemas.names), so that a stream forgotten since the read (NOGROUP
        recovery) still names its own task and never another one's, or none."""
        known = self.streams.streams.get(stream) or self.names.split_stream(stream)
        return self.names.dead(known.task, known.shard)


def _id(eid) -> str:
    return eid.decode() if isinstance(eid, bytes) else str(eid)
