"""Crash drills: SIGKILL of mosquitto and of redis-server in the middle of a run, with the persistence
settings privedge ships (broker/servers.py applies them: mosquitto snapshots every second and holds the
backlog, Redis appends every write to its AOF and fsyncs it every second).

Each drill publishes camera frames at a steady rate through a whole deployment of real processes
(tests/fault_rig.Rig), kills one server outright once a share of the results is in, starts it again a
second later on the same data, and counts inputs, results, unique results, lost and duplicated. Unlike
``Rig.run`` it does not require every result: what mosquitto's snapshot persistence cannot keep is
counted, bounded and explained (``pytest -s`` prints the counts).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from sensors.publisher import PublisherSettings, SensorPublisher
from tests.conftest import FAST
from tests.fault_rig import Rig, frame_ids
from tests.gateway_fixtures import full_bundles, wait_until  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
N = 300 if FAST else 1500
"""Frames per drill (3 s in CI, 15 s at full size, at RATE)."""
RATE = 100.0
"""Frames per second: well within what the gateway and one worker serve here, so that a backlog is only
what the fault makes."""
AUTOSAVE_S = 1.0
"""mosquitto's snapshot period as shipped (autosave_interval 1)."""
SNAPSHOT_WINDOW_S = 2 * AUTOSAVE_S
"""How far back a SIGKILL of mosquitto can reach: one period, plus up to one more for its main loop,
which checks the period only when it wakes (at least once a second in mosquitto 2.0)."""


class DrillRig(Rig):
    """The fault rig, made ready by one warm-up frame: with one features stream per gateway, the stream
    (and so the workers' consumer group on it) exists only once the gateway has sent something."""

    def wait_ready(self, timeout: float = 90) -> None:
        assert wait_until(lambda: self.listener.stats, timeout, 0.2), f"gateway not serving: {self.logs()}"
        with SensorPublisher(PublisherSettings(broker=self.mqtt.url, device="warmup")) as pub:
            pub.publish_image(np.zeros((32, 32, 3), np.uint8), codec="raw")
        super().wait_ready(timeout)
        assert wait_until(lambda: self.listener.unique() >= 1, timeout, 0.1), f"no warm-up result: {self.logs()}"


@pytest.fixture(scope="module")
def rig(tmp_path_factory, full_bundles):
    rig = DrillRig(tmp_path_factory.mktemp("crash"), full_bundles["image"])
    yield rig
    rig.close()


def _drill(rig: Rig, n: int, first: int, fault, *, at: float = 0.3, quiet_s: float = 10.0,
           timeout: float = 180.0) -> dict:
    """Publish ``n`` frames at RATE, ``fault(rig)`` once ``at`` of them have results; wait until every
    result is in, or none has come for ``quiet_s``; return the counts."""
    rig.listener.reset()
    pub = rig.publish(n, RATE, first=first)
    assert wait_until(lambda: rig.listener.unique() >= at * n, timeout, 0.05), rig.logs()
    fault(rig)
    pub.join(timeout)
    assert not pub.is_alive(), "publisher did not finish"
    end = time.monotonic() + timeout
    while rig.listener.unique() < n and time.monotonic() < end:
        if time.monotonic() - rig.listener.last_result_at > quiet_s:
            break
        time.sleep(0.1)
    time.sleep(1.5)  # late duplicates, if any, would arrive now
    ids = dict(rig.listener.ids)
    expected = frame_ids(n, first=first)
    assert set(ids) <= expected, sorted(set(ids) - expected)[:5]
    return {"inputs": n, "published": rig.published, "results": sum(ids.values()), "unique": len(ids),
            "lost": len(expected - set(ids)), "duplicated": sum(c - 1 for c in ids.values()),
            "mqtt_dup_flagged": rig.listener.redelivered}


def _report(name: str, counts: dict) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


def test_sigkill_of_redis_server_mid_run_loses_nothing(rig):
    """redis-server killed outright (no shutdown save) and started again a second later on its AOF.

    Bound: nothing lost, nothing duplicated. Redis writes each command to the AOF before it replies
    (appendfsync everysec fsyncs later, which only matters to an OS crash), so every XADD, XACK, result
    and cursor the clients saw acknowledged is in the file a killed process leaves behind; the gateway
    spools or holds what Redis did not take, workers redo what they had not acknowledged, and the relay
    drops the results redone with ids it has relayed (its dedup window is in Redis too)."""
    def kill_redis(r: Rig) -> None:
        r.redis.kill()
        time.sleep(1.0)
        r.redis.start()

    counts = _drill(rig, N, 100_000, kill_redis)
    _report("redis-server SIGKILL", counts)
    assert counts["lost"] == 0 and counts["duplicated"] == 0, counts
    assert wait_until(lambda: rig.pending() == 0, 30), "entries left pending"


def test_sigkill_of_mosquitto_mid_run_loses_at_most_its_last_snapshot_window(rig):
    """mosquitto killed outright and started again a second later from its last snapshot.

    mosquitto has no write-ahead log: what it took in since its last snapshot lives only in memory. An
    input it acknowledged to a camera in that window and had not yet delivered to the gateway is lost
    (the camera resends only what was not acknowledged; the gateway resends nothing it never got), and so
    is a result the gateway had handed to it that it had not yet delivered to the listener. What the
    gateway had received it still serves. Bound: at most SNAPSHOT_WINDOW_S of inputs at RATE, the loss
    the shipped autosave_interval allows; usually far fewer, since the gateway takes inputs as they come.
    Duplicates: inputs the snapshot still lists as undelivered come again, and their results are dropped
    by the relay (same ids); only the broker's own redelivery to the listener (flagged DUP) may repeat."""
    def kill_mosquitto(r: Rig) -> None:
        r.mqtt.kill()
        time.sleep(1.0)
        r.mqtt.start()

    counts = _drill(rig, N, 200_000, kill_mosquitto)
    counts["loss_bound"] = int(SNAPSHOT_WINDOW_S * RATE)
    _report("mosquitto SIGKILL", counts)
    assert counts["lost"] <= counts["loss_bound"], counts
    assert counts["duplicated"] <= counts["mqtt_dup_flagged"], counts
    # Still serving everything after the broker came back.
    after = _drill(rig, 50, 300_000, lambda r: None, at=0.0)
    assert after["lost"] == 0 and after["duplicated"] == 0, after
