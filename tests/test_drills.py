"""Fault drills of the hardening issue's finding 11, with real processes (tests/fault_rig.py): a network
partition between gateway and Redis that closes nothing, a consumer far behind the stream, and a bundle
swapped mid-run. Each prints its counts (``python -m bench.drills`` collects them at full size).
"""
from __future__ import annotations

import signal
import time

import pytest

from models.bundle import make_untrained_bundle, read_manifest
from tests.conftest import FAST
from tests.fault_rig import Rig, frame_ids
from tests.gateway_fixtures import full_bundles, wait_until  # noqa: F401 (fixture)
from tests.tcp_proxy import FreezableProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rig(tmp_path_factory, full_bundles):
    rig = Rig(tmp_path_factory.mktemp("drills"), full_bundles["image"])
    yield rig
    rig.close()


def _report(name: str, counts: dict) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


def _stat(rig: Rig, name: str) -> int:
    return int(rig.stats().get(name, 0))


def _restart_gateway(rig: Rig, **kwargs) -> None:
    rig.gateway.send_signal(signal.SIGTERM)
    rig.gateway.wait(30)
    rig.gateway = rig.start_gateway(**kwargs)
    rig.wait_ready()


def _exactly_once(rig: Rig, n: int, first: int, counts: dict) -> None:
    assert set(rig.listener.ids) == frame_ids(n, first=first), counts
    assert counts["missing"] == 0 and counts["duplicates"] == 0, counts
    assert wait_until(lambda: rig.pending() == 0, 20), "entries left pending"


def test_a_partition_that_closes_nothing_between_gateway_and_redis(rig):
    """The gateway reaches Redis through a proxy that stops forwarding for 8 s without closing either
    connection (a half-open TCP connection: no FIN, no RST, writes and reads just wait). The gateway's
    socket timeouts notice, it spools, and once the path is back every input has exactly one result."""
    proxy = FreezableProxy(rig.redis.port)
    try:
        _restart_gateway(rig, redis_port=proxy.port)
        n, first = (300 if FAST else 1000), 100_000
        before = {k: _stat(rig, k) for k in ("spooled", "replayed", "upstream_retries", "results_errors")}

        def partition(r: Rig) -> None:
            proxy.freeze()
            time.sleep(8)
            proxy.thaw()

        counts = rig.run(n, rate=n / 12, fault=partition, at=0.2, first=first, timeout=180)
        for k in before:
            counts[k] = _stat(rig, k) - before[k]
        counts["proxy_connections"] = proxy.connections
        _report("gateway-Redis partition 8 s (half-open)", counts)
        assert counts["spooled"] + counts["upstream_retries"] > 0, counts  # the partition was noticed
        _exactly_once(rig, n, first, counts)
    finally:
        _restart_gateway(rig)  # straight to Redis again for the next drill
        proxy.close()


def test_a_half_open_connection_between_a_worker_and_redis(rig):
    """The worker's connection to Redis goes half-open mid-run (the proxy stops forwarding on it for good
    and closes nothing, as when a NAT forgets a connection), while a new connection would work. The
    worker's bounded socket timeout notices, it connects again, and every input has exactly one result."""
    proxy = FreezableProxy(rig.redis.port)
    for w in rig.workers:
        w.send_signal(signal.SIGTERM)
        w.wait(30)
    rig.workers = [rig.start_worker(redis_port=proxy.port)]
    try:
        n, first = (300 if FAST else 1000), 150_000
        state = {}

        def strand(r: Rig) -> None:
            state["stranded_connections"] = proxy.strand()

        counts = rig.run(n, rate=n / 10, fault=strand, at=0.3, first=first, timeout=180)
        counts.update(state, proxy_connections=proxy.connections)
        _report("worker-Redis connection half-open", counts)
        assert state["stranded_connections"] > 0 and proxy.connections > state["stranded_connections"], counts
        _exactly_once(rig, n, first, counts)
    finally:
        for w in rig.workers:
            w.send_signal(signal.SIGTERM)
            w.wait(30)
        rig.workers = [rig.start_worker()]
        proxy.close()


def test_a_consumer_far_behind_loses_nothing_and_the_gateway_says_so(rig):
    """Every worker frozen (SIGSTOP) while inputs keep coming, far past the gateway's backlog bound: the
    features stream is never trimmed unread, the gateway reports the cloud behind and spools, and once
    the workers go on every input has exactly one result.

    The gateway runs with ``stream_max_backlog`` 500 instead of the shipped 100,000 so that a CI-size run
    goes past the bound; the mechanism is the same at the default, only after more inputs."""
    _restart_gateway(rig, PRIVEDGE_STREAM_MAX_BACKLOG="500")
    n, first = (2000 if FAST else 6000), 200_000
    before = {k: _stat(rig, k) for k in ("spooled", "replayed", "cloud_behind_events")}
    state = {}

    def freeze_workers(r: Rig) -> None:
        for w in r.workers:
            w.send_signal(signal.SIGSTOP)
        state["behind_seen"] = wait_until(lambda: r.stats().get("cloud_behind") is True, 60, 0.1)
        time.sleep(3)
        state["stream_len_while_frozen"] = sum(r.admin().xlen(k) for k in r.features_streams())
        for w in r.workers:
            w.send_signal(signal.SIGCONT)

    try:
        counts = rig.run(n, rate=400, fault=freeze_workers, at=0.05, first=first, timeout=300)
        assert wait_until(lambda: _stat(rig, "replayed") - before["replayed"]
                          >= _stat(rig, "spooled") - before["spooled"], 60)
        for k in before:
            counts[k] = _stat(rig, k) - before[k]
        counts.update(state)
        _report("consumer far behind", counts)
        assert state["behind_seen"] and counts["cloud_behind_events"] > 0, counts
        assert counts["spooled"] > 0 and counts["replayed"] == counts["spooled"], counts
        _exactly_once(rig, n, first, counts)
        assert wait_until(lambda: rig.stats().get("cloud_behind") is False, 30), rig.stats()
    finally:
        for w in rig.workers:
            w.send_signal(signal.SIGCONT)
        _restart_gateway(rig)


def _second_bundle(rig: Rig) -> tuple[str, str, object]:
    """A second signed image bundle of the same task (another model id), made once per module."""
    new = rig.root / "bundle-v2"
    if not new.exists():
        make_untrained_bundle(new, "image", seed=7)
    old_id, new_id = read_manifest(rig.bundle)["model"], read_manifest(new)["model"]
    assert old_id != new_id
    return old_id, new_id, new


def test_a_bundle_swapped_mid_run_in_the_documented_order_loses_nothing(rig):
    """A rolling upgrade: workers that serve the old and the new bundle replace the old workers, then the
    gateway restarts on the new bundle. For a while the stream holds features of both model ids; every
    input has exactly one result, from one model or the other."""
    old_id, new_id, new = _second_bundle(rig)
    n, first = (300 if FAST else 1000), 300_000

    def upgrade(r: Rig) -> None:
        both = r.start_worker(bundles=(r.bundle, new))
        for w in r.workers:
            w.send_signal(signal.SIGTERM)
            w.wait(30)
        r.workers = [both]
        r.gateway.send_signal(signal.SIGTERM)
        r.gateway.wait(30)
        r.gateway = r.start_gateway(bundle=new)

    try:
        counts = rig.run(n, rate=n / 10, fault=upgrade, at=0.3, first=first, timeout=180)
        counts["results_by_model"] = {m[:20]: c for m, c in rig.listener.models.items()}
        _report("bundle swap, workers first", counts)
        assert set(rig.listener.models) == {old_id, new_id}, counts
        _exactly_once(rig, n, first, counts)
    finally:
        _restore(rig)


def test_a_gateway_upgraded_before_its_workers_dead_letters_what_they_cannot_serve(rig):
    """The wrong order: the gateway switches to the new bundle while the workers serve only the old one.
    Every input the new gateway sends is dead-lettered with reason ``unknown model`` (the worker refuses
    features it has no analyzer for) and gets no result: the drill counts exactly those as lost, and
    every other input has exactly one result. (The dead letters keep the whole message, so an operator
    can hand them on again once a worker serves the model.)"""
    old_id, new_id, new = _second_bundle(rig)
    n, first = (200 if FAST else 600), 400_000
    admin = rig.admin()
    dead = f"privedge:dead:{{{rig.task}:00}}"
    dead0 = admin.xlen(dead) if admin.exists(dead) else 0

    def gateway_first(r: Rig) -> None:
        r.gateway.send_signal(signal.SIGTERM)
        r.gateway.wait(30)
        r.gateway = r.start_gateway(bundle=new)

    rig.listener.reset()
    try:
        pub = rig.publish(n, rate=n / 8, first=first)
        assert wait_until(lambda: rig.listener.unique() >= 0.3 * n, 120, 0.05), rig.logs()
        gateway_first(rig)
        pub.join(120)
        unknown = lambda: sum(f[b"reason"] == b"unknown model"  # noqa: E731
                              for _, f in admin.xrange(dead, "-", "+")[dead0:])
        assert wait_until(lambda: rig.listener.unique() + unknown() >= n, 120, 0.2), rig.logs()
        time.sleep(1.5)
        ids = rig.listener.ids
        counts = {"inputs": n, "results": sum(ids.values()), "unique_results": len(ids),
                  "duplicates": sum(c - 1 for c in ids.values()), "missing": n - len(ids),
                  "dead_lettered_unknown_model": unknown(),
                  "results_by_model": {m[:20]: c for m, c in rig.listener.models.items()}}
        _report("bundle swap, gateway first", counts)
        assert counts["missing"] == counts["dead_lettered_unknown_model"] > 0, counts
        assert counts["duplicates"] == 0 and set(rig.listener.models) == {old_id}, counts
        assert set(ids) <= frame_ids(n, first=first), counts
    finally:
        _restore(rig)


def _restore(rig: Rig) -> None:
    """The rig's own bundle on the gateway and one worker again."""
    for w in rig.workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
            w.wait(30)
    rig.workers = [rig.start_worker()]
    _restart_gateway(rig)
