"""The worker against a real redis-server: results and acks together, dead letters, the loop goes on."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import replace

import numpy as np
import pytest

from models.bundle import make_untrained_bundle, read_manifest
from schemas import compact
from schemas.features import FeatureMessage
from schemas.names import GROUP, Names
from schemas.results import Result
from workers.config import RedisSettings, SettingsError, WorkerSettings
from workers.service import Worker


def _features(manifest, seq, model, names):
    shape = tuple(manifest["feature"]["shape"])
    return FeatureMessage.from_array(np.full(shape, 0.1 * seq, manifest["feature"]["dtype"]), gateway="gw",
                                     device="cam", seq=seq, ts=time.time(), ts_sent=time.time(),
                                     task=manifest["task"], model=model, reply=names.results("gw"))


def test_results_dead_letters_and_acks(tmp_path, redis_server):
    bundle = tmp_path / "b"
    make_untrained_bundle(bundle, "image")
    manifest, names = read_manifest(bundle), Names()
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=(bundle,),
                                   block_ms=50, discover_every_s=0.1)).start()
    r, stream = worker.redis, names.features(manifest["task"], "gw")  # a stream made after the worker started
    try:
        r.xadd(stream, {"m": _features(manifest, 0, manifest["model"], names).encode()})
        r.xadd(stream, {"m": _features(manifest, 1, "other-000000000000", names).encode()})
        r.xadd(stream, {"m": b"\x93poison"})
        r.xadd(stream, {"m": _features(manifest, 3, manifest["model"], names).encode()})
        deadline = time.monotonic() + 20
        while worker.stats.as_dict()["received"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    results = [Result.decode(f[b"m"]) for _, f in r.xrange(names.results("gw"))]
    assert [x.id for x in results] == ["gw/cam/0", "gw/cam/3"]
    assert all(x.label in manifest["labels"] and x.worker == worker.name for x in results)
    reasons = [f[b"reason"] for _, f in r.xrange(names.dead(manifest["task"]))]
    assert reasons[0] == b"unknown model" and reasons[1].startswith(b"undecodable")
    assert r.xpending(stream, GROUP)["pending"] == 0


def test_settings_parse_dsn_and_refuse_bad_values():
    s = RedisSettings.from_dsn("redis://user:p%40ss@example:6380/2")
    assert (s.host, s.port, s.db, s.username, s.password) == ("example", 6380, 2, "user", "p@ss")
    with pytest.raises(SettingsError):
        RedisSettings.from_dsn("http://x")
    with pytest.raises(SettingsError):
        WorkerSettings(bundles=("b",), runtime="edge")


@pytest.mark.parametrize("max_deliveries,expect", [(5, "result"), (1, "dead")])
def test_pending_entry_of_a_dead_consumer_is_reclaimed(tmp_path, redis_server, max_deliveries, expect):
    bundle = tmp_path / "b"
    make_untrained_bundle(bundle, "image")
    manifest, names = read_manifest(bundle), Names()
    settings = WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=(bundle,), block_ms=50,
                              claim_idle_ms=0, claim_every_s=0.1, max_deliveries=max_deliveries)
    worker = Worker(settings)
    r, stream = worker.redis, names.features(manifest["task"], "gw")
    r.xadd(stream, {"m": _features(manifest, 7, manifest["model"], names).encode()})
    worker.ensure_groups()
    r.xreadgroup(GROUP, "crashed-consumer", {stream: ">"}, count=10)  # read, never acked
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while r.xpending(stream, GROUP)["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    assert r.xpending(stream, GROUP)["pending"] == 0
    assert r.xlen(names.results("gw")) == (1 if expect == "result" else 0)
    assert r.xlen(names.dead(manifest["task"])) == (1 if expect == "dead" else 0)


def test_version_1_and_2_entries_get_identical_results(tmp_path, redis_server):
    """The same inferences sent once as version 1 maps and once as version 2 arrays (schemas.compact):
    each gets one result, the same but for its time of analysis; an unknown version 2 model reference is
    dead-lettered as a version 1 unknown model is."""
    bundle = tmp_path / "b"
    make_untrained_bundle(bundle, "image")
    manifest, names = read_manifest(bundle), Names()
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=(bundle,),
                                   block_ms=50, discover_every_s=0.1))
    r, stream = worker.redis, names.features(manifest["task"], "gw")
    rng = np.random.default_rng(1)
    twins = []
    for seq in range(6):
        x = rng.normal(size=tuple(manifest["feature"]["shape"])).astype(manifest["feature"]["dtype"])
        twins.append(FeatureMessage.from_array(x, gateway="gw", device="cam", seq=seq, boot=2**47 + seq,
                                               ts=1_765_432_100.125 + seq, ts_sent=1_765_432_100.5 + seq,
                                               task=manifest["task"], model=manifest["model"],
                                               reply=names.results("gw"), face=seq % 2 or None))
    for msg in twins:
        r.xadd(stream, {"m": msg.encode()})
    for msg in twins:
        r.xadd(stream, {"m": compact.encode(msg)})
    unknown = replace(twins[0], model="glasses-000000000000")
    r.xadd(stream, {"m": compact.encode(unknown)})
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while worker.stats.as_dict()["received"] < 13 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    results = [dataclasses.asdict(Result.decode(f[b"m"])) for _, f in r.xrange(names.results("gw"))]
    for res in results:
        assert res.pop("ts_done") > 0
    assert results[:6] == results[6:] and [x["id"] for x in results[:6]] == [m.id for m in twins]
    assert [x["ts"] for x in results[:6]] == [m.ts for m in twins]
    assert [f[b"reason"] for _, f in r.xrange(names.dead(manifest["task"]))] == [b"unknown model"]
    assert r.xpending(stream, GROUP)["pending"] == 0
