"""privedge on a real local Redis Cluster (3 masters, a replica each): the key layout keeps each read and
each transaction in one hash slot, a worker serves every shard of its tasks (or the shards it is pinned to),
and the ACL users of one Redis work unchanged on every node."""
from __future__ import annotations

import time

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from broker import redis_cluster as cluster_servers
from broker.redis_acl import AclUser, gateway_user, worker_user
from common.redis_connection import RedisSettings
from common.redis_slots import by_slot, is_cluster
from models.bundle import make_untrained_bundle, read_manifest
from schemas.features import FeatureMessage
from schemas.names import GROUP, Names, shard_of
from schemas.results import Result
from workers.config import WorkerSettings
from workers.service import Worker

pytestmark = pytest.mark.integration

SHARDS = 6


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_one_shard_and_its_dead_letters_share_a_slot_and_so_does_a_gateways_results():
    n = Names()
    for shard in range(SHARDS):
        slots = {_slot(n.features("glasses", gw, shard)) for gw in ("a", "b", "home-7")}
        assert slots == {_slot(n.dead("glasses", shard))} == {_slot(n.media("glasses", "a", shard))}
    assert len({_slot(n.features("glasses", "a", s)) for s in range(SHARDS)}) == SHARDS
    assert len({_slot(k) for k in (n.results("a"), n.results_cursor("a"), n.results_seen("a"))}) == 1
    assert _slot(n.results("a")) != _slot(n.results("b"))
    assert [shard_of(f"cam/{i}", 4) for i in range(4)] == [shard_of(f"cam/{i}", 4) for i in range(4)]
    assert {shard_of(f"cam/{i}", 4) for i in range(200)} == {0, 1, 2, 3}


def test_cluster_urls_give_a_cluster_client_and_plain_urls_a_plain_one():
    s = RedisSettings.from_dsn("redis+cluster://u:p%40w@10.0.0.1:7000,10.0.0.2:7001")
    assert (s.cluster, s.nodes, s.username, s.password) == (True, (("10.0.0.1", 7000), ("10.0.0.2", 7001)),
                                                            "u", "p@w")
    assert RedisSettings.from_dsn("redis://h1:1,h2:2").nodes == (("h1", 1), ("h2", 2))
    assert RedisSettings.from_dsn("redis://h:6380/0").cluster is False
    with pytest.raises(ValueError):
        RedisSettings.from_dsn("redis+cluster://h:1/3")  # a cluster has database 0 only


def _message(manifest, gateway, seq):
    shape = tuple(manifest["feature"]["shape"])
    return FeatureMessage.from_array(np.full(shape, 0.01 * seq, manifest["feature"]["dtype"]), gateway=gateway,
                                     device="cam", seq=seq, ts=time.time(), ts_sent=time.time(),
                                     task=manifest["task"], model=manifest["model"],
                                     reply=Names().results(gateway)).encode()


def _fill(client, manifest, gateways, per_gateway):
    """Features of each gateway over SHARDS shards (each input to its shard), plus one poison entry."""
    n, task = Names(), manifest["task"]
    for gw in gateways:
        for seq in range(per_gateway):
            client.xadd(n.features(task, gw, shard_of(f"cam/{seq}", SHARDS)), {"m": _message(manifest, gw, seq)})
    client.xadd(n.features(task, gateways[0], 1), {"m": b"\x93poison"})


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_workers_serve_every_shard_on_the_cluster_and_a_pinned_worker_only_its_own(tmp_path, redis_cluster):
    bundle = tmp_path / "b"
    make_untrained_bundle(bundle, "image")
    manifest, n = read_manifest(bundle), Names()
    client = redis_cluster.client()
    assert is_cluster(client)
    gateways = ("gwa", "gwb")
    _fill(client, manifest, gateways, 30)
    streams = [n.features(manifest["task"], gw, s) for gw in gateways for s in range(SHARDS)]
    masters = {redis_cluster.master_of(k).port for k in streams}
    assert len(masters) >= 2, "the shards spread over several masters"
    settings = dict(redis=RedisSettings.from_dsn(redis_cluster.url), bundles=(bundle,), block_ms=50,
                    discover_every_s=0.2, batch=8)
    pinned = Worker(WorkerSettings(name="pinned", shards=("2",), **settings)).start()
    try:
        _wait(lambda: pinned.stats.as_dict()["received"] >= sum(
            client.xlen(n.features(manifest["task"], gw, 2)) for gw in gateways))
        time.sleep(0.5)
        assert set(pinned.streams) == {n.features(manifest["task"], gw, 2) for gw in gateways}
        assert len(pinned.stream_set.read_groups()) == 1  # one shard: one slot, one XREADGROUP
        every = Worker(WorkerSettings(name="every", **settings)).start()
        try:
            want = 30 * len(gateways)
            _wait(lambda: sum(client.xlen(n.results(gw)) for gw in gateways) >= want
                  and client.xlen(n.dead(manifest["task"], 1)) >= 1)
            assert len(every.stream_set.read_groups()) == SHARDS  # one read per shard (slot)
        finally:
            every.stop()
    finally:
        pinned.stop()
    for gw in gateways:
        results = [Result.decode(f[b"m"]) for _, f in client.xrange(n.results(gw))]
        assert sorted(r.id for r in results) == sorted(f"{gw}/cam/{seq}" for seq in range(30))
        on_pinned = {r.id for r in results if r.worker == "pinned"}
        assert on_pinned == {f"{gw}/cam/{s}" for s in range(30) if shard_of(f"cam/{s}", SHARDS) == 2}
    assert [f[b"reason"][:11] for _, f in client.xrange(n.dead(manifest["task"], 1))] == [b"undecodable"]
    assert sum(client.xpending(k, GROUP)["pending"] for k in streams) == 0
    assert list(by_slot(client, streams[:2])) == [_slot(streams[0]), _slot(streams[1])]


def test_the_acl_users_work_on_every_node_of_a_cluster(tmp_path):
    admin = AclUser("admin", "admin-pw", "+@all ~*")
    home, worker = gateway_user("home", "home-pw"), worker_user("worker-pw")
    with cluster_servers.redis_cluster(tmp_path / "acl", masters=3, replicas=0,
                                       acl_users=[home, worker, admin], admin=("admin", "admin-pw")) as cluster:
        n = Names()
        gw = RedisSettings.from_dsn(cluster.url_for(home.name, "home-pw")).client()
        for shard in range(SHARDS):  # its own streams, wherever their slots live
            gw.xadd(n.features("glasses", "home", shard), {"m": b"x"})
        assert len({cluster.master_of(n.features("glasses", "home", s)).port for s in range(SHARDS)}) >= 2
        pipe = gw.pipeline(transaction=False)
        pipe.set(n.results_cursor("home"), "0-0")
        pipe.zadd(n.results_seen("home"), {"a": 1})
        pipe.xtrim(n.results("home"), minid="0-0")
        pipe.execute()
        for forbidden in (lambda: gw.xadd(n.features("glasses", "other", 0), {"m": b"forged"}),
                          lambda: gw.xadd(n.results("other"), {"m": b"forged"}),
                          lambda: gw.xreadgroup(GROUP, "c", {n.features("glasses", "home", 0): ">"})):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
        w = RedisSettings.from_dsn(cluster.url_for(worker.name, "worker-pw")).client()
        assert gw.execute_command("WAIT", 0, 10) == 0 and w.execute_command("WAIT", 0, 10) == 0  # WAIT settings
        assert len(list(w.scan_iter(match=n.features_pattern("glasses"), _type="stream"))) == SHARDS
        with pytest.raises(redis.exceptions.NoPermissionError):
            w.xadd(n.features("glasses", "home", 0), {"m": b"forged"})
