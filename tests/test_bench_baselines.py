"""The benchmark's comparison baselines (bench/baselines/), each the gateway's or the worker's service
driven with parts of its own: the cloud-only home uploads the original media, the cloud-only worker
answers like the whole network and dead-letters under the right task, the local-only home answers at
home and sends nothing up. And the services refuse the ``mode`` they no longer have, naming these."""
from __future__ import annotations

import contextlib
import time
from collections import Counter

import numpy as np
import pytest
import redis

from bench.baselines.cloud_home import CloudOnlyServing
from bench.baselines.cloud_worker import MediaAnalysis
from bench.baselines.local_home import LocalOnlyServing
from gateway.config import ConfigError, GatewaySettings, load_settings
from gateway.service import Gateway
from models.bundle import make_untrained_bundle, read_manifest
from schemas import Names
from schemas.limits import Limits
from schemas.media import ImageFrame
from schemas.upload import MediaMessage
from tests.gateway_fixtures import (Listener, full_bundles, gateway_bundles, image_frame,  # noqa: F401 (fixtures)
                                    make_gateway, utterance, wait_until)
from workers.config import RedisSettings, WorkerSettings
from workers.service import Worker

pytestmark = pytest.mark.integration


def test_local_only_publishes_results_and_sends_nothing_up(mosquitto, full_bundles):
    s = GatewaySettings(broker=mosquitto.url, redis="redis://127.0.0.1:1/0", bundles=(str(full_bundles["image"]),),
                        id="gwl", warm_up=False)
    with Gateway(s, LocalOnlyServing()) as gw:
        lis = Listener(mosquitto.port)
        lis.publish("privedge/cam1/image", image_frame("cam1", 3).encode())
        assert lis.wait_for(lambda l: l.messages["privedge/cam1/result"])
        (body,) = lis.json("privedge/cam1/result")
        assert body["id"] == "gwl/cam1/3" and body["label"] in ("no_glasses", "glasses")
        assert gw.metrics.count("published") == 0
        lis.close()


def test_cloud_only_uploads_the_original_media(make_gateway, mosquitto, redis_server):
    make_gateway(CloudOnlyServing())
    lis = Listener(mosquitto.port)
    frame = image_frame("cam1", 4)
    lis.publish("privedge/cam1/image", frame.encode())
    for c in utterance("mic1", 20, "u-2", chunks=2):
        lis.publish("privedge/mic1/audio", c.encode())
    r = redis.Redis.from_url(redis_server.url)
    assert wait_until(lambda: r.xlen("privedge:media:{glasses:00}:gw1") == 1
                      and r.xlen("privedge:media:{digit:00}:gw1") == 1)
    (_, f), = r.xrange("privedge:media:{glasses:00}:gw1")
    msg = MediaMessage.decode(f[b"m"])
    assert msg.id == "gw1/cam1/4" and msg.kind == "image" and msg.media() == frame
    (_, f), = r.xrange("privedge:media:{digit:00}:gw1")
    audio = MediaMessage.decode(f[b"m"]).media()
    assert audio.seq == 20 and audio.final and len(audio.data) == 2 * int(8000 * 0.6)
    lis.close()


def test_cloud_only_worker_answers_like_the_whole_network(tmp_path, mosquitto, redis_server):
    """``python -m bench.baselines.cloud_worker`` serves the raw media the cloud-only home uploads with the
    uncut network: its results are what models.bundle.load_full computes locally on the same inputs."""
    from models.bundle import load_full
    from models.preprocess import pcm16_to_float
    from schemas.media import decode_image
    from sensors.publisher import PublisherSettings, SensorPublisher
    from tests.e2e_support import (Published, WorkerProcesses, raw_media_findings, redis_entries, results_of,
                                   without_pitch_shift)

    bundles = {m: tmp_path / m for m in ("image", "speech")}
    for modality, d in bundles.items():
        make_untrained_bundle(d, modality)
    without_pitch_shift(bundles["speech"])  # so that the same utterance gives the same network input twice
    rng = np.random.default_rng(5)
    with contextlib.ExitStack() as stack:
        workers = WorkerProcesses(redis_server.url, bundles.values(), 1, tmp_path, module="bench.baselines.cloud_worker",
                                  stem="cloud")
        stack.callback(workers.stop)
        stack.enter_context(Gateway(GatewaySettings(broker=mosquitto.url, redis=redis_server.url, id="gwc",
                                                    wait_ms=2.0, bundles=tuple(str(d) for d in bundles.values())),
                                    CloudOnlyServing()))
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


def _media(frame: ImageFrame, manifest: dict, names: Names, gateway: str = "gw") -> bytes:
    return MediaMessage.wrap(frame, gateway=gateway, ts_sent=time.time(), task=manifest["task"],
                             model=manifest["model"], reply=names.results(gateway)).encode()


def test_the_cloud_only_worker_dead_letters_a_failed_analysis_under_its_task(tmp_path, redis_server):
    """Undecodable media and a network that fails are dead-lettered to ``{p}:dead:{task}`` of the stream
    they came from, also once that stream has left the worker's set (NOGROUP recovery), and never to
    another task's stream nor to ``{p}:dead:unknown``."""
    bundles = {m: tmp_path / m for m in ("image", "speech")}
    for modality, d in bundles.items():
        make_untrained_bundle(d, modality)
    image, names = read_manifest(bundles["image"]), Names()
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=tuple(bundles.values()),
                                   block_ms=50, discover_every_s=0.1), MediaAnalysis())
    r, stream = worker.redis, names.media(image["task"], "gw")
    now = time.time()
    garbage = ImageFrame(device="cam", seq=1, ts=now, codec="png", w=4, h=4, ch=1, data=b"\x89PNG not a png")
    good = ImageFrame(device="cam", seq=2, ts=now, codec="raw", w=4, h=4, ch=1, data=bytes(16))
    r.xadd(stream, {"m": _media(garbage, image, names)})
    worker.start()
    try:
        assert wait_until(lambda: worker.stats.as_dict()["dead"] == 1)
        (served,) = [s for s in worker.served.values() if s.task == image["task"]]
        def failing(inputs):
            raise RuntimeError("the network failed")

        object.__setattr__(served, "forward", failing)  # what run_network calls
        r.xadd(stream, {"m": _media(good, image, names)})
        assert wait_until(lambda: worker.stats.as_dict()["dead"] == 2)
    finally:
        worker.stop()
    # A stream forgotten between its read and the write still names its own task.
    eid = r.xadd(stream, {"m": _media(good, image, names)})
    worker.stream_set.streams.clear()
    worker.handle([(stream, eid, {b"m": _media(good, image, names)})])
    reasons = [f[b"reason"] for _, f in r.xrange(names.dead(image["task"]))]
    assert reasons[0].startswith(b"undecodable media") and reasons[1:] == [b"analysis failed", b"unknown stream"]
    dead = sorted(k.decode() for k in r.scan_iter(match=names.dead_pattern()))
    assert dead == [names.dead(image["task"])], dead


def test_the_services_refuse_the_mode_they_no_longer_have_naming_the_baselines(tmp_path, capsys):
    from gateway.service import main as gateway_main
    from workers.service import main as worker_main

    conf = tmp_path / "gw.yaml"
    conf.write_text("mode: cloud_only\n")
    for source in ({"config_file": conf, "env": {}}, {"env": {"PRIVEDGE_MODE": "local_only"}}):
        with pytest.raises(ConfigError, match="'mode' was removed: .*bench.baselines.cloud_home"):
            load_settings({}, **source)
    assert gateway_main(["--mode", "local_only", "--bundle", "b"]) == 2
    assert "setting 'mode' was removed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        worker_main(["--mode", "cloud_only", "--bundle", "b"])
    assert e.value.code == 2 and "bench.baselines.cloud_worker" in capsys.readouterr().err
