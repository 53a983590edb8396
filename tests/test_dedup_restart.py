"""Duplicate results across restarts (real mosquitto and redis-server, in-process gateways).

The results relay's dedup window is kept with its cursor, so a restarted gateway does not publish a
redelivered result again; a sensor's boot id keeps the ids of a rebooted sensor (whose seqs restart at 0)
apart from those it sent before, so none of its new inputs is taken for a duplicate.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis

from schemas import Result
from sensors.publisher import PublisherSettings, SensorPublisher
from tests.gateway_fixtures import Listener, feature_entry, gateway_bundles, make_gateway, wait_until  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration
RESULTS = "privedge:results:{gw1}"


def _result(i: int) -> Result:
    now = time.time()
    return Result(id=f"gw1/cam{i % 2}/{i}", task="glasses", model="glasses-x", label="glasses", score=0.75,
                  scores={"glasses": 0.75, "no_glasses": 0.25}, ts=now - 0.1, ts_done=now, worker="w1")


def _count(lis: Listener) -> int:
    with lis._cond:
        return sum(len(v) for k, v in lis.messages.items() if k.endswith("/result"))


@pytest.mark.parametrize("spool", [False, True], ids=["redis-only", "with-spool-dir"])
def test_a_restarted_relay_does_not_publish_a_redelivered_result_again(make_gateway, mosquitto, redis_server,
                                                                      tmp_path, spool):
    """Results relayed before a restart come again after it (a worker redid reclaimed entries, or the
    stream was read again): the new gateway process drops them, from the window it loaded at start."""
    extra = {"spool_dir": str(tmp_path / "spool")} if spool else {}
    r = redis.Redis.from_url(redis_server.url)
    lis = Listener(mosquitto.port)
    results = [_result(i) for i in range(6)]
    gw = make_gateway(warm_up=False, **extra)
    for res in results:
        r.xadd(RESULTS, {"m": res.encode()})
    assert wait_until(lambda: _count(lis) == 6)
    assert wait_until(lambda: r.xlen(RESULTS) <= 1)  # relayed, cursor stored
    gw.stop()
    # Redelivered while the gateway was down, and one new result behind them.
    for res in results:
        r.xadd(RESULTS, {"m": res.encode()})
    r.xadd(RESULTS, {"m": _result(6).encode()})
    again = make_gateway(warm_up=False, **extra)
    assert wait_until(lambda: again.metrics.count("duplicates_dropped") == 6), again.metrics.count("duplicates_dropped")
    assert wait_until(lambda: _count(lis) == 7)
    time.sleep(0.5)
    assert _count(lis) == 7, {k: len(v) for k, v in lis.messages.items() if k.endswith("/result")}
    assert [len(lis.messages[f"privedge/cam{i % 2}/result"]) for i in range(2)] == [4, 3]
    lis.close()


class EchoWorker:
    """Answers every feature message of every features stream with a Result of the same id (the
    analyzer's output does not matter here, only which ids come back)."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url)
        self.stop = threading.Event()
        self.cursors: dict[bytes, bytes] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for key in self.r.scan_iter("privedge:features:*", _type="stream"):
                self.cursors.setdefault(key, b"0-0")
            if not self.cursors:
                time.sleep(0.05)
                continue
            for key, entries in self.r.xread(self.cursors, count=100, block=100) or []:
                for entry_id, fields in entries:
                    self.cursors[key] = entry_id
                    f = feature_entry(key, fields[b"m"])
                    res = Result(id=f.id, task=f.task, model=f.model, label="x", score=1.0, ts=f.ts,
                                 ts_done=time.time(), worker="echo")
                    self.r.xadd(f.reply, {"m": res.encode()})


@pytest.mark.parametrize("kind", ["camera", "mic"])
def test_a_sensor_that_reboots_with_seqs_from_zero_gets_every_result(make_gateway, mosquitto, redis_server, kind):
    """Two starts of one sensor, each numbering its messages from 0: every input of both has its result,
    and the results of the two starts have different ids (the boot id is in them)."""
    gw = make_gateway()
    worker = EchoWorker(redis_server.url)
    lis = Listener(mosquitto.port)
    device = "cam7" if kind == "camera" else "mic7"
    boots, n = [], 3
    t = np.arange(4000) / 8000
    wave = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    for start in range(2):
        with SensorPublisher(PublisherSettings(broker=mosquitto.url, device=device, first_seq=0)) as pub:
            boots.append(pub.boot)
            for i in range(n):
                if kind == "camera":
                    pub.publish_image(np.full((16, 16, 3), 40 * i, np.uint8), codec="raw")
                else:
                    pub.publish_utterance(wave, 8000, chunk_ms=200)
        # The first start's results are all in before the sensor "reboots".
        assert wait_until(lambda: len(lis.json(f"privedge/{device}/result")) == n * (start + 1), 30), \
            lis.json(f"privedge/{device}/result")
    time.sleep(0.5)
    bodies = lis.json(f"privedge/{device}/result")
    ids = [b["id"] for b in bodies]
    assert len(ids) == len(set(ids)) == 2 * n, ids
    assert boots[0] != boots[1]
    assert {b["boot"] for b in bodies} == set(boots)
    assert gw.metrics.count("duplicates_dropped") == 0
    worker.stop.set()
    worker.thread.join(5)
    lis.close()
