"""The worker against a real redis-server: results and acks together, dead letters, the loop goes on."""
from __future__ import annotations

import time

import numpy as np
import pytest

from models.bundle import make_untrained_bundle, read_manifest
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
        WorkerSettings(bundles=("b",), mode="edge")


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


def test_cloud_only_worker_answers_like_the_whole_network(tmp_path, mosquitto, redis_server):
    """``privedge worker --mode cloud_only`` serves the raw media a cloud_only gateway uploads with the
    uncut network: its results are what models.bundle.load_full computes locally on the same inputs."""
    import contextlib
    from collections import Counter

    import redis

    from gateway.config import GatewaySettings
    from gateway.service import Gateway
    from models.bundle import load_full
    from models.preprocess import pcm16_to_float
    from schemas.limits import Limits
    from schemas.media import decode_image
    from schemas.upload import MediaMessage
    from sensors.publisher import PublisherSettings, SensorPublisher
    from tests.e2e_support import (Published, WorkerProcesses, raw_media_findings, redis_entries, results_of,
                                   without_pitch_shift)
    from tests.gateway_fixtures import Listener

    bundles = {m: tmp_path / m for m in ("image", "speech")}
    for modality, d in bundles.items():
        make_untrained_bundle(d, modality)
    without_pitch_shift(bundles["speech"])  # so that the same utterance gives the same network input twice
    rng = np.random.default_rng(5)
    with contextlib.ExitStack() as stack:
        workers = WorkerProcesses(redis_server.url, bundles.values(), 1, tmp_path, mode="cloud_only", stem="cloud")
        stack.callback(workers.stop)
        stack.enter_context(Gateway(GatewaySettings(broker=mosquitto.url, redis=redis_server.url, id="gwc",
                                                    mode="cloud_only", wait_ms=2.0,
                                                    bundles=tuple(str(d) for d in bundles.values()))))
        lis = Listener(mosquitto.port)
        stack.callback(lis.close)
        assert lis.wait_for(lambda l: l.messages["privedge/gateway/gwc/status"] == [b"online"])  # subscribed
        workers.wait_ready()
        with SensorPublisher(PublisherSettings(broker=mosquitto.url, device="cam1")) as cam:
            for codec in ("jpeg", "png", "raw"):
                cam.publish_image(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), codec=codec)
        t = np.arange(6000) / 8000  # 0.75 s at 8 kHz
        with SensorPublisher(PublisherSettings(broker=mosquitto.url, device="mic1")) as mic:
            for hz in (300.0, 1200.0):
                mic.publish_utterance(0.4 * np.sin(2 * np.pi * hz * t) + 0.05 * rng.standard_normal(t.size), 8000)
        assert lis.wait_for(lambda l: len(results_of(l)) >= 5, timeout=120), workers.log(0)[-3000:]
        time.sleep(0.3)  # a duplicate would follow its first copy closely
        r = redis.Redis.from_url(redis_server.url)
        media = [MediaMessage.decode(f[b"m"]) for task in ("glasses", "digit")
                 for _, f in r.xrange(Names().media(task, "gwc"))]
        entries = redis_entries(r)
    pub = Published.from_listener(lis, "gwc")
    assert (len(pub.frames), len(pub.utterances)) == (3, 2)
    assert sorted(m.id for m in media) == sorted(pub.ids())
    results = [body for _, body in results_of(lis)]
    assert Counter(b["id"] for b in results) == Counter(pub.ids())
    full = {m: load_full(d) for m, d in bundles.items()}
    for body in results:
        if body["id"] in pub.frames:
            model, raw = full["image"], decode_image(pub.frames[body["id"]])
        else:
            pcm, rate = pub.utterances[body["id"]]
            model, raw = full["speech"], (pcm16_to_float(pcm, 1), rate)
        probs = dict(zip(model.labels, model.predict_raw([raw])[0].tolist()))
        best = max(probs.values())
        assert (body["task"], body["model"], body["worker"]) == (model.task, model.model_id, "cloud1")
        assert probs[body["label"]] == pytest.approx(best, abs=1e-4)  # the network's top label (up to ties)
        assert body["score"] == pytest.approx(best, abs=1e-4)
        assert body["scores"] == pytest.approx({k: probs[k] for k in body["scores"]}, abs=1e-4)
    # Here the cloud does hold the media: the scan used by the end-to-end privacy test finds every input.
    findings = raw_media_findings(entries, pub.probes(), Limits().max_feature_payload)
    hit = {f.split(": ")[0] for f in findings if f.startswith("privedge:media:") and "pieces of published media" in f}
    assert len(hit) == 5, findings
    assert any("JPEG signature" in f for f in findings) and any("PNG signature" in f for f in findings)
