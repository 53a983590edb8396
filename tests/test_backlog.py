"""No silent loss by trimming, against a real redis-server: the gateway's XADD trims nothing, workers trim
only what their group has acknowledged, and a gateway whose streams hold more than ``stream_max_backlog``
entries treats the cloud as behind (spools or holds, says so) and resumes without losing anything."""
from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pytest

from gateway.config import GatewaySettings
from gateway.metrics import Metrics
from gateway.upstream import Upstream, connect_redis, open_spool
from models.bundle import make_untrained_bundle, read_manifest
from schemas.features import FeatureMessage
from schemas.names import GROUP, Names
from tests.gateway_fixtures import wait_until
from workers.config import RedisSettings, WorkerSettings
from workers.service import Worker
from workers.streams import StreamSet

pytestmark = pytest.mark.integration
STREAM = "privedge:features:{glasses:00}:gw"  # gateway gw's features stream of shard 0 (schemas.names)
OLD_MAXLEN = 100_000  # the MAXLEN ~ the gateway's XADD used to carry


_wait = functools.partial(wait_until, timeout=30.0)
"""Wait for a condition, 30 s at most (trimming and discovery run every few seconds)."""


def test_without_a_worker_the_gateway_keeps_every_entry_past_the_old_maxlen(tmp_path, redis_server):
    """105,000 entries and no worker: every one is in Redis or in the spool, in order, none trimmed. The
    gateway has a spool here because without one it holds its inputs once the backlog bound is reached
    (the next test), and this test would wait for a worker forever."""
    s = GatewaySettings(redis=redis_server.url, id="gw", spool_dir=str(tmp_path / "spool"), spool_fsync=False)
    metrics = Metrics()
    spool = open_spool(s)
    up = Upstream(s, connect_redis(s), metrics, spool=spool)
    up.start()
    n, batch = OLD_MAXLEN + 5_000, 1_000
    try:
        for i in range(0, n, batch):
            assert up.send([(STREAM, b"%d" % j) for j in range(i, i + batch)])
        r = connect_redis(s)
        in_redis = r.xlen(STREAM)
        assert in_redis + spool.pending == n
        first, last = r.xrange(STREAM, count=1), r.xrevrange(STREAM, count=1)
        assert first[0][1][b"m"] == b"0" and int(last[0][1][b"m"]) == in_redis - 1  # nothing cut from the front
        assert metrics.snapshot()["gauges"]["cloud_behind"] == 1 and metrics.count("cloud_behind_events") == 1
    finally:
        up.close()


def test_worker_trims_only_acknowledged_entries(tmp_path, redis_server):
    """Trimming stops at the smallest pending entry and never reaches undelivered ones; a second group
    that has read nothing keeps everything. ``retention_s=0``: the workers' default keeps half a minute of
    acknowledged entries, which would hide the trim here."""
    names = Names()
    r = RedisSettings.from_dsn(redis_server.url).client()
    ids = [r.xadd(STREAM, {"m": b"%d" % i}) for i in range(10)]
    streams = StreamSet(r, names, "features", {"glasses"}, max_streams=10, retention_s=0)
    assert streams.discover() == [STREAM]
    r.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=6)  # 0-5 delivered, 6-9 not
    r.xack(STREAM, GROUP, *ids[:4])
    assert streams.trim() == 4
    assert [e for e, _ in r.xrange(STREAM)] == ids[4:]
    r.xack(STREAM, GROUP, ids[5])  # 4 is still pending: it and everything after it stay
    assert streams.trim() == 0 and [e for e, _ in r.xrange(STREAM)] == ids[4:]
    r.xack(STREAM, GROUP, ids[4])
    assert streams.trim() == 2 and [e for e, _ in r.xrange(STREAM)] == ids[6:]
    r.xgroup_create(STREAM, "audit", id="0")  # another reader that has read nothing yet
    r.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=10)
    r.xack(STREAM, GROUP, *ids[6:])
    assert streams.trim() == 0 and r.xlen(STREAM) == 4


def test_running_worker_trims_what_it_acknowledged(tmp_path, redis_server):
    """A running worker serves the entries, then trims them (and only them) on its own schedule."""
    make_untrained_bundle(tmp_path / "b", "image")
    manifest = read_manifest(tmp_path / "b")
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=(tmp_path / "b",),
                                   block_ms=50, trim_every_s=0.2, trim_retention_s=0))
    r = worker.redis
    for seq in range(20):
        r.xadd(STREAM, {"m": _features(manifest, seq)})
    worker.start()
    try:
        assert _wait(lambda: r.xlen(Names().results("gw")) == 20)
        assert _wait(lambda: r.xlen(STREAM) == 0)
    finally:
        worker.stop()
    assert worker.stats.as_dict()["trimmed"] == 20


def _features(manifest, seq: int) -> bytes:
    return FeatureMessage.from_array(np.zeros(8, np.float32), gateway="gw", device="cam", seq=seq, ts=time.time(),
                                     ts_sent=time.time(), task=manifest["task"], model=manifest["model"],
                                     reply=Names().results("gw")).encode()


@pytest.mark.parametrize("spooled", [False, True])
def test_over_the_backlog_bound_the_gateway_holds_or_spools_then_resumes(tmp_path, redis_server, spooled):
    """``stream_max_backlog=30`` (the default is 100,000) so that a few batches reach it. While the worker
    is away, sends past the bound hold (no spool: ``send`` waits, so the broker keeps the inputs) or go to
    the spool; the gateway says the cloud is behind; once a worker has served and trimmed the backlog
    every input gets its result."""
    make_untrained_bundle(tmp_path / "b", "image")
    manifest = read_manifest(tmp_path / "b")
    s = GatewaySettings(redis=redis_server.url, id="gw", stream_max_backlog=30, retry_max_s=0.2,
                        spool_dir=str(tmp_path / "spool") if spooled else None, spool_fsync=False)
    metrics, availability = Metrics(), []
    up = Upstream(s, connect_redis(s), metrics, on_available=availability.append, spool=open_spool(s))
    up.start()
    batches = [[(STREAM, _features(manifest, 10 * b + i)) for i in range(10)] for b in range(8)]
    sent = []
    sender = threading.Thread(target=lambda: [sent.append(up.send(b)) for b in batches], daemon=True)
    sender.start()
    r = connect_redis(s)
    try:
        if spooled:
            assert _wait(lambda: len(sent) == len(batches))  # nothing waits: the spool takes the rest
            assert up.spool.pending == 80 - r.xlen(STREAM) > 0
        else:
            assert _wait(lambda: len(sent) == 4)  # 40 entries in Redis, over the bound: the 5th batch waits
            time.sleep(0.5)
            assert len(sent) == 4 and sender.is_alive() and r.xlen(STREAM) == 40
        assert metrics.snapshot()["gauges"]["cloud_behind"] == 1 and availability == [False]
        worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=(tmp_path / "b",),
                                       block_ms=50, trim_every_s=0.2, trim_retention_s=0)).start()
        try:
            assert _wait(lambda: r.xlen(Names().results("gw")) == 80, timeout=60), r.xlen(Names().results("gw"))
            # Idle now: the gateway's own re-check clears the state once the worker has trimmed.
            assert _wait(lambda: metrics.snapshot()["gauges"]["cloud_behind"] == 0)
        finally:
            worker.stop()
        sender.join(5)
        assert sent == [True] * len(batches)
        assert availability[0] is False and availability[-1] is True
        assert r.xlen(Names().dead("glasses")) == 0
    finally:
        up.close()
