"""Fault drill on a real local Redis Cluster: the master holding a home's features fails mid-run.

A deployment of real processes (tests/fault_rig.py) on a local Redis Cluster of 3 masters with a replica
each (appendonly, the ACL users on every node): a gateway spreading its inputs over 3 shards, two workers.
Once a third of the inputs have results, the master holding shard 00 of the home's features fails: it is
SIGKILLed (and restarted after its replica's promotion, as a supervisor would: it rejoins as the new
master's replica), or SIGSTOPped until its replica is promoted (a hung process, a paused machine), then
resumed: for a moment it answers the commands its clients queued, as the master it no longer is, before
it learns of the failover and drops what it took.

Redis replicates asynchronously: what a failing master acknowledged and its replica never got is gone.
Each fault runs with the shipped default (no WAIT) and with ``redis_wait_replicas=1`` on the gateway and
``--wait-replicas 1`` on the workers, and prints inputs, results, lost and duplicated (``python -m
bench.drills -k failover`` collects them). Either way no result reaches the home twice (the relay drops a
redelivery's second result by its id) and every input published once the cluster serves every slot
again comes back; with WAIT none is lost.
"""
from __future__ import annotations

import time

import pytest

from schemas import Names
from tests.conftest import FAST
from tests.fault_rig import GW, Rig, frame_ids
from tests.gateway_fixtures import full_bundles, wait_until  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

N = 300 if FAST else 1200
"""Camera frames per run."""
RATE = 100.0
"""Frames per second (two cameras)."""
QUIET_S = 10.0
"""A run is over once every input has its result, or no new result came for this long (the workers
reclaim a dead consumer's entries after 1 s)."""


def _report(name: str, counts: dict) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


@pytest.mark.parametrize("wait", [0, 1], ids=["no-wait", "wait"])
@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_master_holding_features_fails_mid_run(tmp_path, full_bundles, fault, wait):  # noqa: F811
    env = {"PRIVEDGE_REDIS_WAIT_REPLICAS": str(wait)} if wait else {}
    rig = Rig(tmp_path, full_bundles["image"], workers=2, cluster=True, shards=3, gateway_env=env,
              worker_args=("--wait-replicas", str(wait)) if wait else ())
    try:
        key = Names().features(rig.task, GW, 0)
        rig.listener.reset()
        pub = rig.publish(N, RATE)
        assert wait_until(lambda: rig.listener.unique() >= N // 3, 120, 0.05), rig.logs()
        t0 = time.monotonic()
        if fault == "kill":
            killed, promoted = rig.redis.kill_master_of(key)
            killed.start()  # a supervisor restarts it: it rejoins as the replica of the promoted one
        else:
            killed, promoted = rig.redis.pause_master_of(key)
        failover_s = time.monotonic() - t0
        after = rig.published  # every input from here on was published to a cluster that serves all slots
        pub.join(120)
        assert not pub.is_alive(), "publisher did not finish"
        while rig.listener.unique() < N and time.monotonic() - rig.listener.last_result_at < QUIET_S:
            time.sleep(0.2)
        time.sleep(1.5)  # late duplicates, if any, would arrive now
        ids, stats = rig.listener.ids, rig.stats()
        expected = frame_ids(N)
        counts = {"fault": fault, "wait": wait, "inputs": N, "results": sum(ids.values()),
                  "lost": len(expected - set(ids)),
                  "duplicated": sum(c - 1 for c in ids.values()), "unexpected": len(set(ids) - expected),
                  "failover_s": round(failover_s, 2), "killed_port": killed.port, "promoted_port": promoted.port,
                  "duplicates_dropped": stats.get("duplicates_dropped", 0), "wait_short": stats.get("wait_short", 0),
                  "upstream_retries": stats.get("upstream_retries", 0), "spooled": stats.get("spooled", 0)}
        _report(f"failover-{fault}-{'wait' if wait else 'no-wait'}", counts)
        assert counts["duplicated"] == 0 and counts["unexpected"] == 0, counts
        assert {i for i in expected if int(i.rsplit("/", 1)[1]) >= after} <= set(ids), (counts, rig.logs())
        if wait:
            assert counts["lost"] == 0, counts
        assert wait_until(lambda: rig.pending() == 0, 30), "entries left pending"
    finally:
        rig.close()
