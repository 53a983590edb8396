"""One home cannot write into another, against a real redis-server with the shipped ACL users: a gateway
adds only to its own streams and cannot trim or delete anyone's entries, and an entry that names another
home than the stream it came from is dead-lettered and never reaches that home's results."""
from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np
import pytest
import redis

from models.bundle import make_untrained_bundle, read_manifest
from broker import servers
from broker.redis_acl import AclUser, gateway_user, worker_user
from schemas.features import FeatureMessage
from schemas.names import GROUP, Names
from schemas.results import Result
from tests.gateway_fixtures import wait_until
from workers.config import RedisSettings, WorkerSettings
from workers.service import Worker

pytestmark = pytest.mark.integration

HOME_A, HOME_B, WORKER = gateway_user("a", "a-pw"), gateway_user("b", "b-pw"), worker_user("worker-pw")
ADMIN = AclUser("admin", "admin-pw", "+@all ~*")
# Written out in full: the key layout is the contract the ACL patterns rely on.
A_FEATURES, B_FEATURES = "privedge:features:{glasses:00}:a", "privedge:features:{glasses:00}:b"
A_RESULTS, B_RESULTS = "privedge:results:{a}", "privedge:results:{b}"
DEAD = "privedge:dead:{glasses:00}"


@pytest.fixture
def acl_redis(tmp_path):
    server = servers.redis(tmp_path / "redis", acl_users=[HOME_A, HOME_B, WORKER, ADMIN])
    yield server
    server.stop()


def _client(user, server) -> redis.Redis:
    return redis.Redis.from_url(user.url("127.0.0.1", server.port))


def test_names_build_per_gateway_streams():
    n = Names()
    assert (n.features("glasses", "a"), n.results("a")) == (A_FEATURES, A_RESULTS)
    assert n.media("digit", "b") == "privedge:media:{digit:00}:b"
    assert n.features("glasses", "a", 7) == "privedge:features:{glasses:07}:a"
    assert n.split_stream(B_FEATURES) == ("features", "glasses", "b", 0)
    assert n.split_stream("privedge:media:{digit:42}:b") == ("media", "digit", "b", 42)
    for bad in ("privedge:features:glasses", "privedge:features:{glasses:00}:a:b", "privedge:results:{a}",
                "other:features:{glasses:00}:a", "privedge:features:glasses:a", "privedge:features:{glasses:7}:a",
                "privedge:features:{glasses:00}:{a}"):
        with pytest.raises(ValueError):
            n.split_stream(bad)


def test_a_gateway_writes_only_its_own_streams_and_trims_nothing_else(acl_redis):
    a, b, admin = _client(HOME_A, acl_redis), _client(HOME_B, acl_redis), _client(ADMIN, acl_redis)
    a.xadd(A_FEATURES, {"m": b"a0"})
    b.xadd(B_FEATURES, {"m": b"b0"})
    a.xadd("privedge:media:{digit:00}:a", {"m": b"raw"})
    assert a.xlen(A_FEATURES) == 1  # its own backlog (gateway/upstream.py)
    forbidden = {
        "add to another home's stream": lambda: a.xadd(B_FEATURES, {"m": b"forged"}),
        "add to another home's media": lambda: a.xadd("privedge:media:{digit:00}:b", {"m": b"forged"}),
        "add to the old shared stream": lambda: a.xadd("privedge:features:glasses", {"m": b"forged"}),
        "MAXLEN 0 on another home's stream": lambda: a.xadd(B_FEATURES, {"m": b"x"}, maxlen=0),
        "trim another home's stream": lambda: a.xtrim(B_FEATURES, maxlen=0),
        "trim its own features": lambda: a.xtrim(A_FEATURES, maxlen=0),
        "delete entries": lambda: a.xdel(B_FEATURES, admin.xrange(B_FEATURES)[0][0]),
        "delete a stream": lambda: a.delete(B_FEATURES),
        "delete its own stream": lambda: a.delete(A_FEATURES),
        "measure another home's backlog": lambda: a.xlen(B_FEATURES),
        "write dead letters": lambda: a.xadd(DEAD, {"m": b"forged"}),
    }
    for what, call in forbidden.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
            pytest.fail(f"gateway a may {what}")
    # An ACL cannot refuse XADD's MAXLEN argument: a gateway can still drop its own unread entries, which
    # only harms its own home. Everything else it wrote, and every other home's entries, stay.
    a.xtrim(A_RESULTS, minid="0-0")  # its own results: allowed
    assert [f for _, f in admin.xrange(B_FEATURES)] == [{b"m": b"b0"}]
    assert [f for _, f in admin.xrange(A_FEATURES)] == [{b"m": b"a0"}]


def _message(manifest, seq: int, *, gateway: str, id_gateway: str | None = None,
             reply_to: str | None = None) -> bytes:
    """A valid FeatureMessage whose ``gateway`` field, id and reply stream name the homes given."""
    msg = FeatureMessage.from_array(np.zeros(8, np.float32), gateway=id_gateway or gateway, device="cam", seq=seq,
                                    ts=time.time(), ts_sent=time.time(), task=manifest["task"],
                                    model=manifest["model"], reply=Names().results(reply_to or gateway))
    return dataclasses.replace(msg, gateway=gateway).encode()


def test_an_entry_naming_another_home_is_dead_lettered(tmp_path, acl_redis):
    """Home a writes, to its own stream, entries that name home b in their gateway field, their id or their
    reply stream: none reaches b's results (nor fills b's dedup window); a's honest entry is served."""
    make_untrained_bundle(tmp_path / "b", "image")
    manifest = read_manifest(tmp_path / "b")
    a, b, admin = _client(HOME_A, acl_redis), _client(HOME_B, acl_redis), _client(ADMIN, acl_redis)
    forged = [_message(manifest, 1, gateway="b"),                    # everything names b
              _message(manifest, 2, gateway="a", reply_to="b"),      # results routed to b
              _message(manifest, 3, gateway="a", id_gateway="b"),    # id of b
              _message(manifest, 4, gateway="b", id_gateway="a"),    # gateway field b
              ]
    for m in forged:
        a.xadd(A_FEATURES, {"m": m})
    a.xadd(A_FEATURES, {"m": _message(manifest, 9, gateway="a")})
    b.xadd(B_FEATURES, {"m": _message(manifest, 5, gateway="b")})
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(WORKER.url("127.0.0.1", acl_redis.port)),
                                   bundles=(tmp_path / "b",), block_ms=50, trim_every_s=0.2,
                                   trim_retention_s=0)).start()
    try:
        deadline = time.monotonic() + 30
        while admin.xlen(DEAD) < len(forged) or admin.xlen(A_RESULTS) < 1 \
                or admin.xlen(B_RESULTS) < 1:
            assert time.monotonic() < deadline, (admin.xlen(DEAD), admin.xlen(A_RESULTS))
            time.sleep(0.05)
        time.sleep(0.3)  # a stray result would follow closely
        # The worker's user may trim what it has acknowledged (a stream's gateway may not).
        assert _wait_for(lambda: admin.xlen(A_FEATURES) == admin.xlen(B_FEATURES) == 0)
    finally:
        worker.stop()
    assert set(worker.streams) == {A_FEATURES, B_FEATURES}  # both homes' streams, found by SCAN
    assert [Result.decode(f[b"m"]).id for _, f in admin.xrange(A_RESULTS)] == ["a/cam/9"]
    assert [Result.decode(f[b"m"]).id for _, f in admin.xrange(B_RESULTS)] == ["b/cam/5"]
    dead = admin.xrange(DEAD)
    assert [f[b"reason"] for _, f in dead] == [b"gateway mismatch"] * len(forged)
    assert admin.xpending(A_FEATURES, GROUP)["pending"] == 0
    assert worker.stats.as_dict()["loop_errors"] == 0


_wait_for = functools.partial(wait_until, timeout=30.0)
"""Wait for a condition, 30 s at most (trimming and discovery run every few seconds)."""
