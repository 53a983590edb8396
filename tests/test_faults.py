"""Faults against a whole deployment of real processes: every input ends with exactly one result.

One deployment (tests/fault_rig.py: mosquitto with persistence, redis-server with appendonly and ACL
users, a gateway process with an on-disk spool and its shipped defaults, worker processes, camera
publishers, a results listener) serves the camera tests of this module in turn; each fault leaves it
running again for the next. A second one, with a speech bundle, two workers and microphones sending real
FSDD utterances, serves the microphone drills. Each test prints its counts (``pytest -s`` shows them).
"""
from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import FAST
from tests.fault_rig import Rig, frame_ids, peak_rss_mb
from tests.gateway_fixtures import feature_entry, full_bundles, wait_until  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
SPEECH_RATE = 20.0
"""Utterances per second in the microphone drills: one busy room (the issue's drill), at every size."""
SPEECH_N = 120 if FAST else 300
"""Utterances per microphone drill (at SPEECH_RATE: 6 s in CI, 15 s at full size)."""
IN_DOUBT_S = 1.0
"""Seconds before a gateway's SIGKILL in which a result it published may be published again by the next
gateway: its relay batch in flight (publish, PUBACKs, then the dedup window saved), with margin for a
loaded machine."""


@pytest.fixture(scope="module")
def rig(tmp_path_factory, full_bundles):
    rig = Rig(tmp_path_factory.mktemp("faults"), full_bundles["image"])
    yield rig
    rig.close()


@pytest.fixture(scope="module")
def mic_rig(tmp_path_factory, full_bundles):
    rig = Rig(tmp_path_factory.mktemp("mic-faults"), full_bundles["speech"], workers=2)
    yield rig
    rig.close()


def _report(name: str, counts: dict) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


def _exactly_one_each(rig: Rig, n: int, first: int, counts: dict, *, broker_restarted: bool = False) -> None:
    """Every input has its result, and no result was published twice. Only a broker restart may make the
    broker itself deliver a result again (QoS 1), flagged DUP, to a subscriber whose ack it had not saved.
    Those DUP-flagged deliveries bound the duplicates rather than equal them: a resent result whose first
    copy was lost with the connection reaches the listener once, flagged DUP (seen: 2 duplicates, 12
    flagged)."""
    assert set(rig.listener.ids) == frame_ids(n, first=first), counts
    assert counts["missing"] == 0, counts
    allowed = counts["mqtt_dup_flagged"] if broker_restarted else 0
    assert counts["duplicates"] <= allowed, counts
    assert wait_until(lambda: rig.pending() == 0, 20), "entries left pending"


def _one_result_per_utterance(rig: Rig, counts: dict, *, broker_restarted: bool = False,
                              in_doubt: int = 0) -> None:
    """Every published utterance has a result, none has two (a broker restart may make the broker deliver
    a result again, flagged DUP, to the listener, and a killed gateway's last publishes may be repeated by
    its successor: only those, ``in_doubt`` of them, may repeat), and nothing else came back."""
    keys = rig.listener.keys
    assert len(rig.expected) == counts["inputs"] == len(set(rig.expected)), counts
    counts["lost"] = len(set(rig.expected) - set(keys))
    counts["unexpected"] = len(set(keys) - set(rig.expected))
    counts["rejected"] = rig.stats().get("rejected", {})
    counts["dropped"] = rig.stats().get("dropped", {})
    assert counts["lost"] == 0 and counts["unexpected"] == 0, counts
    allowed = (counts["mqtt_dup_flagged"] if broker_restarted else 0) + in_doubt
    assert sum(c - 1 for c in keys.values()) <= allowed and counts["duplicates"] <= allowed, counts
    assert wait_until(lambda: rig.pending() == 0, 20), "entries left pending"


def _stat(rig: Rig, name: str) -> int:
    return int(rig.stats().get(name, 0))


def test_worker_sigkill_mid_run(rig):
    """A worker frozen while it holds entries it has read, then SIGKILLed; a new worker reclaims them."""
    n, first = 500, 0
    state = {}

    def kill_worker(r: Rig) -> None:
        victim = r.workers.pop(0)
        # Freeze it at a moment it holds read-but-unacknowledged entries (busy: it reads as inputs come).
        for _ in range(300):
            victim.send_signal(signal.SIGSTOP)
            pending = r.pending()
            if pending:
                break
            victim.send_signal(signal.SIGCONT)
            time.sleep(0.003)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        state["pending_at_kill"] = pending
        r.workers.append(r.start_worker())

    counts = rig.run(n, rate=250, fault=kill_worker, at=0.3, first=first)
    counts.update(state)
    _report("worker SIGKILL", counts)
    assert state["pending_at_kill"] > 0, "the worker was never caught holding entries"
    _exactly_one_each(rig, n, first, counts)


def test_redis_down_10s_mid_run(rig):
    """redis-server stopped for 10 s: the gateway spools to disk, replays in order, workers resume."""
    n, first = (300 if FAST else 600), 10_000
    before = {k: _stat(rig, k) for k in ("spooled", "replayed", "upstream_retries")}

    def outage(r: Rig) -> None:
        r.redis.stop()
        time.sleep(10)
        r.redis.start()

    # Slow enough that inputs keep coming during the whole outage.
    counts = rig.run(n, rate=n / 14, fault=outage, at=0.15, first=first, timeout=180)
    assert wait_until(lambda: _stat(rig, "replayed") - before["replayed"] >= _stat(rig, "spooled") - before["spooled"])
    for k in before:
        counts[k] = _stat(rig, k) - before[k]
    _report("redis down 10 s", counts)
    assert counts["spooled"] > 0 and counts["replayed"] == counts["spooled"], counts
    _exactly_one_each(rig, n, first, counts)
    # Replayed in order: per device, seqs first appear in the features stream in publishing order.
    seen: dict[str, list[int]] = {}
    manifests = [json.loads((rig.bundle / "manifest.json").read_text())]
    for k, (_, fields) in ((k, e) for k in rig.features_streams() for e in rig.admin().xrange(k, min="-", max="+")):
        msg = feature_entry(k, fields[b"m"], manifests)
        if msg.seq >= first and msg.seq not in seen.setdefault(msg.device, []):
            seen[msg.device].append(msg.seq)
    for device, seqs in seen.items():
        assert seqs == sorted(seqs), f"{device}: features out of order"


def test_mosquitto_restart_mid_run(rig):
    """mosquitto stopped (saving its persistence) and started again: sessions and queued messages survive."""
    n, first = (300 if FAST else 500), 20_000

    def restart(r: Rig) -> None:
        r.mqtt.stop()
        time.sleep(2)
        r.mqtt.start()

    relayed0 = _stat(rig, "results_relayed")
    counts = rig.run(n, rate=150, fault=restart, at=0.3, first=first, timeout=180)
    assert wait_until(lambda: _stat(rig, "results_relayed") - relayed0 >= n, 10)
    counts["gateway_results_relayed"] = _stat(rig, "results_relayed") - relayed0
    _report("mosquitto restart", counts)
    assert counts["gateway_results_relayed"] == n, counts  # the gateway published each result once
    _exactly_one_each(rig, n, first, counts, broker_restarted=True)


def test_gateway_sigkill_mid_run_with_a_spool_on_disk(rig):
    """The gateway SIGKILLed while Redis is away and its spool holds acknowledged inputs: a new gateway
    process replays the spool, and the broker redelivers what the dead one had not acknowledged."""
    n, first = (300 if FAST else 500), 30_000
    state = {}

    def kill_gateway(r: Rig) -> None:
        spooled0 = _stat(r, "spooled")
        r.redis.stop()
        assert wait_until(lambda: _stat(r, "spooled") > spooled0 + 20, 30), r.logs()
        state["spooled_before_kill"] = _stat(r, "spooled") - spooled0
        r.gateway.send_signal(signal.SIGKILL)
        r.gateway.wait(10)
        r.listener.stats = {}
        r.redis.start()
        r.gateway = r.start_gateway()

    counts = rig.run(n, rate=150, fault=kill_gateway, at=0.2, first=first, timeout=180)
    counts.update(state, replayed_by_new_gateway=_stat(rig, "replayed"))
    _report("gateway SIGKILL", counts)
    assert counts["replayed_by_new_gateway"] >= state["spooled_before_kill"] > 0, counts
    _exactly_one_each(rig, n, first, counts)


def test_microphones_through_a_mosquitto_restart(mic_rig):
    """Two microphones, 20 real FSDD utterances per second, mosquitto stopped for 3 s mid-run and started
    again: the backlog the broker kept arrives at once after the reconnect, and every utterance still
    gets exactly one result (the issue's drill lost 90 of 300 with the old defaults)."""
    def restart(r: Rig) -> None:
        r.mqtt.stop()
        time.sleep(3)
        r.mqtt.start()

    counts = mic_rig.run(SPEECH_N, rate=SPEECH_RATE, fault=restart, at=0.3, timeout=180, speech=True)
    _report("mic: mosquitto restart", counts)
    _one_result_per_utterance(mic_rig, counts, broker_restarted=True)


def test_microphones_through_a_gateway_sigkill(mic_rig):
    """Two microphones, 20 real FSDD utterances per second, the gateway SIGKILLed mid-run and started
    again 2 s later: the broker redelivers what the dead gateway had not acknowledged, and every utterance
    gets a result (the issue's drill gave 222 results, 221 unique, for 300).

    Results are relayed at least once, not exactly once: the relay publishes a batch, waits for the
    broker's PUBACKs, then saves its dedup window and cursor, and a process killed between the two cannot
    know which of its last publishes the broker kept (paho keeps its in-flight state in memory only). The
    new gateway publishes that batch again, with the same ids. So a duplicate is allowed only for a result
    whose first copy arrived in the last moments of the dead gateway (``IN_DOUBT_S`` before the kill);
    every other result must come exactly once, and the duplicates are counted in the drill's line."""
    state = {}

    def kill_gateway(r: Rig) -> None:
        state["killed_at"] = time.monotonic()
        r.gateway.send_signal(signal.SIGKILL)
        r.gateway.wait(10)
        time.sleep(2)
        r.listener.stats = {}
        r.gateway = r.start_gateway()

    counts = mic_rig.run(SPEECH_N, rate=SPEECH_RATE, fault=kill_gateway, at=0.3, timeout=180, speech=True)
    repeated, in_doubt = mic_rig.listener.repeated_since(state["killed_at"] - IN_DOUBT_S,
                                                          state["killed_at"] + 0.05)
    counts.update(repeated_ids=repeated, repeated_in_doubt_at_kill=in_doubt)
    _report("mic: gateway SIGKILL", counts)
    assert repeated == in_doubt, counts  # only what the dead gateway had in flight
    _one_result_per_utterance(mic_rig, counts, in_doubt=in_doubt)


def test_overload_three_times_capacity(rig):
    """Offered 3x what the gateway serves: memory bounded (the in-flight window), stale frames dropped and
    counted per device, every input either answered once or dropped and counted, and it still answers
    afterwards.

    Two settings differ from the defaults, for these reasons. ``batch`` 2: small batches, decoding 640x480
    JPEGs of about 20 KB (1.6 ms each), give a capacity well below the publisher's rate (with 128x128 raw
    frames a fast machine served 650/s, and the publisher, at about 1,500/s, could not offer 3x that).
    ``image_max_age_s`` 0.5 instead of 30: the policy drops a frame only once it has waited that long, so
    with the default a flood would have to last far longer than a test may (a 3x flood builds a backlog
    of 2 s per second, so frames turn stale after 15 s of it); 0.5 s shows the same policy in seconds.
    ``face_detector`` none: the frames are gradients without faces, which the face stage would answer
    with no_face results after a detection pass (tens of ms each) instead of sending them up."""
    first, size = 40_000, (480, 640)
    rig.gateway.send_signal(signal.SIGTERM)
    rig.gateway.wait(30)
    rig.listener.stats = {}
    rig.gateway = rig.start_gateway(PRIVEDGE_BATCH="2", PRIVEDGE_IMAGE_MAX_AGE_S="0.5", PRIVEDGE_FACE_DETECTOR="none")
    rig.wait_ready()
    rss0 = peak_rss_mb(rig.gateway.pid)

    def flood(n: int, rate: float, at: int) -> tuple[float, float, dict]:
        """Publish ``n`` inputs at ``rate``; (offered per s, served per s, drops by device) once quiet."""
        rig.listener.reset()
        dropped0 = dict(rig.stats().get("dropped", {}))
        t0 = time.monotonic()
        pub = rig.publish(n, rate, first=at, size=size, photo=True)
        assert wait_until(lambda: rig.listener.unique() >= 5, 60)
        pub.join(120)
        offered = n / (time.monotonic() - t0)

        def drops() -> dict:
            return {d: v - dropped0.get(d, 0) for d, v in rig.stats().get("dropped", {}).items()}

        # Done when every input is answered or counted as dropped (the stats come every 0.5 s).
        settled = wait_until(lambda: rig.listener.unique() + sum(drops().values()) >= n, 120, 0.2)
        # From the first result to the last: the flood keeps the gateway busy all along. (Counting from the
        # fifth result instead gave 0 when the few results that beat the drops all came in one batch.)
        served = rig.listener.served_per_s()
        time.sleep(1.5)  # anything late (a duplicate, a drop) shows now
        assert settled, {"unique": rig.listener.unique(), "dropped": drops(), "inputs": n}
        return offered, served, drops()

    # A first estimate of capacity: the rate at which results come while a short flood keeps it busy. The
    # publisher, flat out, takes CPU from the gateway then, so the estimate is taken again under a 3x load
    # (2 s), where the gateway gets the CPU it will have in the real flood.
    _, capacity, _ = flood(400, 100_000, first)
    at = first + 1000
    n = int(3 * capacity * 2)
    _, capacity, _ = flood(n, 3 * capacity, at)
    at += n
    seconds = 5 if FAST else 15
    for attempt in range(3):
        n = int(3 * capacity * seconds)
        offered, served, dropped = flood(n, 3 * capacity, at)
        if offered > 2.5 * served:
            break
        # The gateway served more in this flood than the estimate said (it got more CPU than while the
        # estimate was taken): offer 3x of what it served, and flood again. Only the estimate the offered
        # rate comes from is corrected; the bound asserted below is the same.
        at += n
        capacity = served
    ids = rig.listener.ids
    counts = {"capacity_per_s": round(capacity, 1), "offered_per_s": round(offered, 1),
              "offered_x_capacity": round(offered / capacity, 2), "served_per_s": round(served, 1),
              "offered_x_served": round(offered / served, 2), "floods": attempt + 1,
              "inputs": n, "results": sum(ids.values()), "unique_results": len(ids), "dropped": dropped,
              "gateway_peak_rss_mb_before": round(rss0, 1), "gateway_peak_rss_mb": round(peak_rss_mb(rig.gateway.pid), 1)}
    _report("overload", counts)
    # The capacity that counts is what the gateway serves while saturated (the short flood above only
    # sets the offered rate; on a busy machine the publisher itself may fall short of 3x of it).
    assert offered > 2.5 * served, counts
    assert sum(dropped.values()) > 0 and set(dropped) == {"cam0", "cam1"}, counts
    # Every input has exactly one result or was dropped and counted.
    assert counts["results"] == counts["unique_results"] == n - sum(dropped.values()), counts
    assert counts["gateway_peak_rss_mb"] < rss0 + 150, counts
    # Still answering.
    counts = rig.run(20, rate=20, fault=lambda r: None, first=at + n)
    assert counts["unique_results"] == 20 and rig.gateway.poll() is None


# the spool on its own --------------------------------------------------------------------------------------
def test_spool_keeps_order_across_reopen_and_cuts_a_torn_record(tmp_path):
    from gateway.spool import Spool

    spool = Spool(tmp_path, 1 << 20, fsync=False)
    spool.append([("s", f"m{i}".encode()) for i in range(10)])
    records, pos = spool.read(4)
    assert [m for _, m in records] == [b"m0", b"m1", b"m2", b"m3"]
    spool.commit(pos)
    spool.close()
    seg = max(tmp_path.glob("*.seg"))
    with open(seg, "ab") as f:  # a crash in the middle of an append
        f.write(b"\x40\x00\x00\x00\x01\x02\x03\x04half")
    again = Spool(tmp_path, 1 << 20, fsync=False)
    assert again.pending == 6
    again.append([("s", b"m10")])
    records, pos = again.read(100)
    assert [m for _, m in records] == [f"m{i}".encode() for i in range(4, 11)]
    again.commit(pos)
    assert again.pending == 0 and not list(tmp_path.glob("*.seg"))


def test_a_full_spool_refuses_a_batch_and_keeps_every_record_it_holds(tmp_path):
    """Every spooled record stands for inputs already acknowledged to the broker: a full spool drops none
    of them (it dropped the oldest before), refuses the new batch whole, and takes it once the replay has
    made room."""
    from gateway.spool import Spool, SpoolFull

    spool = Spool(tmp_path, 64 * 1024, fsync=False)
    kept = 0
    with pytest.raises(SpoolFull) as full:
        for i in range(3000):
            spool.append([("s", i.to_bytes(4, "big") + b"x" * 96)])
            kept += 1
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.seg"))
    print(f"\n[spool bound] kept={kept} bytes_on_disk={on_disk} refused_at={kept}")
    assert full.value.fits_ever and on_disk <= 64 * 1024 and spool.pending == kept > 100
    records, pos = spool.read(100)
    assert [int.from_bytes(m[:4], "big") for _, m in records] == list(range(len(records)))  # oldest first
    spool.commit(pos)
    with pytest.raises(SpoolFull) as alone:
        spool.append([("s", b"y" * (64 * 1024))])
    assert not alone.value.fits_ever
    while True:  # room again: the refused batch goes in, behind everything kept
        try:
            spool.append([("s", (kept).to_bytes(4, "big") + b"x" * 96)])
            break
        except SpoolFull:
            records, pos = spool.read(50)
            spool.commit(pos)
    firsts = []
    while spool.pending:
        records, pos = spool.read(1000)
        firsts += [int.from_bytes(m[:4], "big") for _, m in records]
        spool.commit(pos)
    assert firsts == sorted(firsts) and firsts[-1] == kept
