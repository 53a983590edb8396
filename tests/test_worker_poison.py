"""Poison features against a real redis-server: non-finite and out-of-range features are dead-lettered with
a reason, an exception raised by one entry never ends the worker's loop (nor that of the worker that
reclaims the entry), and a worker process whose loop thread dies anyway exits non-zero."""
from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from models.bundle import make_untrained_bundle, read_manifest
from schemas.features import FeatureMessage
from schemas.names import GROUP, Names
from schemas.results import Result
from tests.gateway_fixtures import wait_until
from workers.config import RedisSettings, WorkerSettings
from workers.service import Worker

pytestmark = pytest.mark.integration
NAMES = Names()


@pytest.fixture
def bundle(tmp_path):
    """An untrained float32 PCA-8 image bundle and its manifest."""
    make_untrained_bundle(tmp_path / "b", "image")
    manifest = read_manifest(tmp_path / "b")
    assert manifest["feature"] == {"dtype": "float32", "shape": [8]}
    return tmp_path / "b", manifest


def _message(manifest, seq: int, value: float, gateway: str = "gw") -> bytes:
    z = np.full(tuple(manifest["feature"]["shape"]), value, np.float32)
    return FeatureMessage.from_array(z, gateway=gateway, device="cam", seq=seq, ts=time.time(),
                                     ts_sent=time.time(), task=manifest["task"], model=manifest["model"],
                                     reply=NAMES.results(gateway)).encode()


_wait = functools.partial(wait_until, timeout=30.0)
"""Wait for a condition, 30 s at most (trimming and discovery run every few seconds)."""


def _results(r) -> list[str]:
    return [Result.decode(f[b"m"]).id for _, f in r.xrange(NAMES.results("gw"))]


def _reasons(r, task) -> list[bytes]:
    return [f[b"reason"] for _, f in r.xrange(NAMES.dead(task))]


@pytest.mark.parametrize("poison,reason", [(float("nan"), b"non-finite features"),
                                           (float("inf"), b"non-finite features"),
                                           (1e30, b"features out of range")])
def test_poison_features_are_dead_lettered_and_the_loop_goes_on(tmp_path, redis_server, bundle, poison, reason):
    """The drill of the issue: one poison message, then valid ones; two workers share the stream."""
    path, manifest = bundle
    stream = NAMES.features(manifest["task"], "gw")
    settings = WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=(path,), block_ms=50)
    workers = [Worker(settings) for _ in range(2)]
    r = workers[0].redis
    r.xadd(stream, {"m": _message(manifest, 0, poison)})
    for seq in range(1, 21):
        r.xadd(stream, {"m": _message(manifest, seq, 0.05 * seq)})
    for w in workers:
        w.start()
    try:
        assert _wait(lambda: len(_results(r)) == 20 and r.xlen(NAMES.dead(manifest["task"])) == 1), (
            _results(r), _reasons(r, manifest["task"]))
        assert all(w._thread.is_alive() for w in workers)
        r.xadd(stream, {"m": _message(manifest, 21, 0.2)})  # still serving after the poison
        assert _wait(lambda: len(_results(r)) == 21)
    finally:
        for w in workers:
            w.stop()
    assert sorted(_results(r)) == sorted(f"gw/cam/{s}" for s in range(1, 22))
    assert _reasons(r, manifest["task"]) == [reason]
    assert sum(w.stats.as_dict()["dead"] for w in workers) == 1
    assert r.xpending(stream, GROUP)["pending"] == 0


def test_reclaimed_poison_entry_does_not_kill_the_next_worker(tmp_path, redis_server, bundle):
    """A NaN entry left pending by a consumer that died on it is reclaimed and dead-lettered."""
    path, manifest = bundle
    stream = NAMES.features(manifest["task"], "gw")
    r = RedisSettings.from_dsn(redis_server.url).client()
    r.xadd(stream, {"m": _message(manifest, 0, float("nan"))})
    r.xgroup_create(stream, GROUP, id="0")
    r.xreadgroup(GROUP, "died-on-it", {stream: ">"}, count=10)  # read, never acked
    r.xadd(stream, {"m": _message(manifest, 1, 0.1)})
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=(path,), block_ms=50,
                                   claim_idle_ms=0, claim_every_s=0.1)).start()
    try:
        assert _wait(lambda: r.xlen(NAMES.dead(manifest["task"])) == 1 and len(_results(r)) == 1)
        assert worker._thread.is_alive()
    finally:
        worker.stop()
    assert _reasons(r, manifest["task"]) == [b"non-finite features"]
    assert r.xpending(stream, GROUP)["pending"] == 0


def test_an_unexpected_exception_in_one_group_or_step_does_not_end_the_loop(tmp_path, redis_server, bundle,
                                                                          monkeypatch):
    """The network raising something no handler names (here KeyError) dead-letters that group's entries
    with a reason; a step raising one (here ZeroDivisionError) is logged, counted and retried."""
    import workers.service as service

    path, manifest = bundle
    stream = NAMES.features(manifest["task"], "gw")
    real_run, real_step = service.run_network, Worker.step
    calls = {"run": 0, "step": 0}

    def flaky_run(served, inputs):
        calls["run"] += 1
        if calls["run"] == 1:
            raise KeyError("a bug in the analyzer")
        return real_run(served, inputs)

    def flaky_step(self):
        calls["step"] += 1
        if calls["step"] == 2:
            raise ZeroDivisionError("a bug in the loop")
        return real_step(self)

    monkeypatch.setattr(service, "run_network", flaky_run)
    monkeypatch.setattr(Worker, "step", flaky_step)
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=(path,), block_ms=50))
    r = worker.redis
    r.xadd(stream, {"m": _message(manifest, 0, 0.1)})
    worker.start()
    try:
        assert _wait(lambda: r.xlen(NAMES.dead(manifest["task"])) == 1)
        assert _wait(lambda: calls["step"] > 3)
        r.xadd(stream, {"m": _message(manifest, 1, 0.1)})
        assert _wait(lambda: len(_results(r)) == 1)
        assert worker._thread.is_alive()
    finally:
        worker.stop()
    assert _reasons(r, manifest["task"]) == [b"analysis failed"]
    assert worker.stats.as_dict()["loop_errors"] == 1


def test_worker_process_exits_non_zero_when_its_loop_thread_dies(tmp_path, redis_server, bundle):
    """A loop thread that dies anyway (here a BaseException no handler catches) ends the process with a
    non-zero status, so that a supervisor restarts it, instead of a process that only logs stats."""
    path, _ = bundle
    script = textwrap.dedent(f"""
        import sys
        from workers import service

        class Boom(BaseException):
            pass

        def step(self):
            raise Boom("the loop thread dies")

        service.Worker.step = step
        sys.exit(service.main(["--redis", {redis_server.url!r}, "--bundle", {str(path)!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode not in (0, None), out.stderr[-2000:]
    assert "loop thread died" in out.stderr, out.stderr[-2000:]
