"""The streams a worker consumes: found by SCAN, each with the ``analyzers`` group, trimmed below the acks.

Every gateway writes streams of its own, ``{p}:features:{{task}:{NN}}:{gateway}`` (schemas.names; the
benchmark's cloud-only baseline reads ``{p}:media:...`` streams through the same class), one per shard NN
of each task, so the set of streams grows as homes join. :meth:`StreamSet.discover` runs
``SCAN MATCH {p}:features:{{task}:*}:* TYPE stream`` every few seconds (not per batch; on a Cluster
redis-py scans every master), keeps only keys that :meth:`Names.split_stream` accepts (and, for a worker
pinned to some shards, only theirs), stops at ``max_streams``, and creates the group (from id 0, so a new
home's first entries are read too) on each stream it has not seen. The worker then reads them in one
XREADGROUP per group of :meth:`StreamSet.read_groups`: all of them on one Redis, one shard's (one hash
slot's) on a Cluster.

Trimming (:func:`trim_point`) is the workers' job, never the gateway's: a gateway's XADD carries no
MAXLEN, so nothing is trimmed that no worker has read. Every entry at or below a group's
``last-delivered-id`` has been delivered, and every delivered entry is either pending (in the group's
PEL, not yet acknowledged) or acknowledged. So the entries below ``min(smallest pending id,
last-delivered-id + 1)`` are all acknowledged; ``XTRIM MINID`` that id removes exactly entries with a
smaller id. With several groups on a stream the smallest such id over all groups is used, and a stream
whose group cannot be read is left alone. Acknowledged entries younger than ``retention_s`` (by the
Redis server's clock: an entry id starts with its time in milliseconds) are kept too, so that an
operator, or a test, can still read what a home sent in the last half minute; the gateway's backlog bound
(gateway ``stream_max_backlog``, 100,000 entries) counts them, which leaves room for a home sending
1,800 inputs/s (the image extractor's ceiling) before retained entries alone reach it.

The origin check (:func:`check_origin`) is here too, since it ties an entry to the stream it came from:
the entry's ``gateway``, the gateway of its ``id``, the stream's gateway and its ``reply`` stream must
all name the same home, and the ``id``'s device the entry's ``device``.
"""
from __future__ import annotations

import logging

import redis

from schemas.errors import BadName
from schemas.features import split_id
from common.redis_slots import by_slot
from schemas.names import GROUP, Names, StreamKey
from workers.analysis import Rejected

log = logging.getLogger(__name__)

SCAN_COUNT = 1000
"""Keys examined per SCAN call (Redis's COUNT hint): a few calls cover a keyspace of thousands of keys."""


class StreamSet:
    """The streams of one ``kind`` (``features``, or ``media`` for the benchmark's cloud-only baseline) of
    ``tasks`` (of the ``shards`` given, or of every shard): ``streams`` maps each key to its StreamKey."""

    def __init__(self, client: redis.Redis, names: Names, kind: str, tasks: set[str], max_streams: int,
                 retention_s: float = 0.0, shards: tuple[int, ...] = ()) -> None:
        self.redis = client
        self.names = names
        patterns = {"features": names.features_pattern, "media": names.media_pattern}
        if kind not in patterns:
            raise ValueError(f"stream kind must be one of {sorted(patterns)}, got {kind!r}")
        self.pattern_of = patterns[kind]
        self.kind = kind
        self.tasks = set(tasks)
        self.max_streams = max_streams
        self.retention_s = retention_s
        self.shards = tuple(sorted(set(shards)))
        self.streams: dict[str, StreamKey] = {}
        self._warned_full = False
        self._groups: list[list[str]] | None = None

    def read_groups(self) -> list[list[str]]:
        """The streams split into groups that one XREADGROUP may read: one group on one Redis, one per hash
        slot (task shard) on a Cluster (common.redis_slots)."""
        if self._groups is None:
            self._groups = list(by_slot(self.redis, self.streams).values())
        return self._groups

    def read(self, consumer: str, count: int, block_ms: int) -> list:
        """New entries for ``consumer`` as (stream, entry id, fields): one XREADGROUP COUNT ``count`` per
        read group. One group (one Redis, or one shard) blocks up to ``block_ms``. Several (a Cluster) go
        in one pipeline without BLOCK (redis-py sends each master its part at once); only when that round
        brings nothing does a second one block, each read for ``block_ms`` divided by the number of groups,
        so that idle shards hold the others up by at most ``block_ms`` in all (a master runs one
        connection's commands in turn)."""
        groups = self.read_groups()
        if len(groups) == 1:
            replies = [self.redis.xreadgroup(GROUP, consumer, {s: ">" for s in groups[0]}, count=count,
                                             block=block_ms)]
        else:
            replies = self._read_round(groups, consumer, count, None)
            if not any(replies):
                replies = self._read_round(groups, consumer, count, max(1, block_ms // len(groups)))
        entries = []
        for reply in replies:
            for stream, items in reply or []:
                stream = stream.decode() if isinstance(stream, bytes) else stream
                entries += [(stream, eid, fields) for eid, fields in items]
        return entries

    def _read_round(self, groups: list[list[str]], consumer: str, count: int, block: int | None) -> list:
        pipe = self.redis.pipeline(transaction=False)
        for streams in groups:
            pipe.xreadgroup(GROUP, consumer, {s: ">" for s in streams}, count=count, block=block)
        return pipe.execute()

    def discover(self) -> list[str]:
        """SCAN for streams of our tasks (and shards); create the group on each new one; returns the new keys."""
        new = []
        patterns = [(task, self.pattern_of(task, shard)) for task in sorted(self.tasks)
                    for shard in (self.shards or (None,))]
        for task, pattern in patterns:
            for key in self.redis.scan_iter(match=pattern, count=SCAN_COUNT, _type="stream"):
                key = key.decode() if isinstance(key, bytes) else key
                if key in self.streams:
                    continue
                try:
                    found = self.names.split_stream(key)
                except BadName:
                    log.warning("ignoring stream %s: not %s", key, pattern)
                    continue
                if found.kind != self.kind or found.task != task or (self.shards and found.shard not in self.shards):
                    continue
                if len(self.streams) >= self.max_streams:
                    if not self._warned_full:
                        log.error("more than max_streams=%d streams: %s and later ones are not read",
                                  self.max_streams, key)
                        self._warned_full = True
                    return new
                if self._create_group(key):
                    self.streams[key] = found
                    self._groups = None
                    new.append(key)
        if new:
            log.info("consuming %d new streams (%d in all): %s", len(new), len(self.streams), ", ".join(new[:8]))
        return new

    def _create_group(self, key: str) -> bool:
        try:
            self.redis.xgroup_create(key, GROUP, id="0")
        except redis.ResponseError as e:
            if "BUSYGROUP" in str(e):
                return True
            if "requires the key to exist" in str(e):  # deleted between SCAN and here
                return False
            raise
        return True

    def forget_missing(self) -> None:
        """Drop streams that no longer exist (after a NOGROUP error), so that the next read works."""
        pipe = self.redis.pipeline(transaction=False)
        keys = list(self.streams)
        for key in keys:
            pipe.exists(key)
        for key, there in zip(keys, pipe.execute()):
            if not there:
                self.streams.pop(key, None)
                self._groups = None

    def trim(self) -> int:
        """XTRIM MINID each stream below what every group has acknowledged; returns entries removed."""
        keys = list(self.streams)
        if not keys:
            return 0
        # The server's clock, asked on its own: a Cluster pipeline refuses keyless commands (its nodes'
        # clocks agree to well under the retention).
        sec, usec = self.redis.time()
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.xinfo_groups(key)
            pipe.xpending(key, GROUP)
        replies = pipe.execute(raise_on_error=False)
        refused = [e for e in replies if isinstance(e, redis.exceptions.NoPermissionError)]
        if refused:  # a settings problem, not a missing stream: let the loop log and count it
            raise refused[0]
        # Entries of the last retention_s are kept; the millisecond Redis is in counts as past (an entry
        # added in it is not younger than 0 s), so retention_s=0 keeps nothing by age.
        oldest_kept = (int(sec * 1000 + usec // 1000 - self.retention_s * 1000) + 1, 0)
        removed = 0
        trims = []
        for i, key in enumerate(keys):
            groups, pending = replies[2 * i], replies[2 * i + 1]
            if isinstance(groups, Exception) or isinstance(pending, Exception):
                continue  # gone, or no group yet: nothing is trimmed that we cannot vouch for
            point = trim_point(groups, pending if len(groups) == 1 else None)
            if point is not None:
                ms, seq = min(_parse_id(point), oldest_kept)
                trims.append((key, f"{ms}-{seq}"))
        if trims:
            pipe = self.redis.pipeline(transaction=False)
            for key, point in trims:
                pipe.xtrim(key, minid=point, approximate=False)
            removed = sum(n for n in pipe.execute(raise_on_error=False) if isinstance(n, int))
        return removed


def _parse_id(eid) -> tuple[int, int]:
    s = eid.decode() if isinstance(eid, bytes) else str(eid)
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


def trim_point(groups: list[dict], pending: dict | None = None) -> str | None:
    """The stream id below which every entry is acknowledged by every group (see module docstring), or
    None when nothing may be trimmed. ``groups`` is XINFO GROUPS, ``pending`` the XPENDING summary of
    the only group (None: each group's smallest pending id is unknown, so only groups with nothing
    pending may be vouched for and any other group blocks trimming)."""
    if not groups:
        return None
    points = []
    for g in groups:
        ms, seq = _parse_id(g["last-delivered-id"])
        if (ms, seq) == (0, 0):
            return None  # this group has read nothing yet
        point = (ms, seq + 1)
        if g.get("pending", 0):
            if pending is None or not pending.get("pending") or pending.get("min") is None:
                return None
            point = min(point, _parse_id(pending["min"]))
        points.append(point)
    ms, seq = min(points)
    return f"{ms}-{seq}"


def check_origin(msg, stream_gateway: str, names: Names) -> None:
    """Raise Rejected("gateway mismatch") unless ``msg`` (FeatureMessage or MediaMessage) names the home
    whose stream it came from everywhere: ``gateway``, the ``id``'s gateway and device, and ``reply``."""
    try:
        id_gateway, id_device = split_id(msg.id)[:2]
    except BadName as e:
        raise Rejected("gateway mismatch", f"id {msg.id!r} does not parse: {e}") from e
    want_reply = names.results(stream_gateway)
    if (msg.gateway, id_gateway, msg.reply) != (stream_gateway, stream_gateway, want_reply) \
            or id_device != msg.device:
        raise Rejected("gateway mismatch", f"stream of {stream_gateway!r} carries gateway {msg.gateway!r}, "
                                           f"id {msg.id!r}, device {msg.device!r}, reply {msg.reply!r}")
