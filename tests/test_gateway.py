"""The gateway against real mosquitto and redis-server: features out, results back, bad input rejected,
bounded queues, persistent session with manual acknowledgement, settings, SIGTERM drain."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
import redis

from gateway.config import ConfigError, GatewaySettings, load_settings
from gateway.intake import Intake
from gateway.metrics import Metrics
from schemas import FeatureMessage, Limits, Names, Result
from tests.metrics_names import parse, problems
from tests.gateway_fixtures import (Listener, gateway_bundles, image_frame,  # noqa: F401 (fixtures)
                                    make_gateway, utterance, wait_until)
from tests.gateway_fixtures import features_in as _features
pytestmark = pytest.mark.integration

RAW_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"RIFF")



def test_image_and_audio_inputs_become_feature_messages(make_gateway, mosquitto, redis_server, gateway_bundles):
    gw = make_gateway()
    lis = Listener(mosquitto.port)
    frames = [image_frame("cam1", i, codec) for i, codec in enumerate(["jpeg", "png", "raw"])]
    for f in frames:
        lis.publish("privedge/cam1/image", f.encode())
    for c in utterance("mic1", 10, "u-1", chunks=3):
        lis.publish("privedge/mic1/audio", c.encode())
    r = redis.Redis.from_url(redis_server.url)
    assert wait_until(lambda: r.xlen("privedge:features:{glasses:00}:gw1") == 3
                      and r.xlen("privedge:features:{digit:00}:gw1") == 1)

    manifests = {m: json.loads((gateway_bundles[m] / "manifest.json").read_text()) for m in gateway_bundles}
    images = _features(r, "glasses")
    assert [f.id for f in images] == ["gw1/cam1/0", "gw1/cam1/1", "gw1/cam1/2"]
    speech = _features(r, "digit")
    # An utterance's id is its first chunk's seq (stable whenever the chunks are delivered again).
    assert [f.id for f in speech] == ["gw1/mic1/10"]
    for feats, m in ((images, manifests["image"]), (speech, manifests["speech"])):
        for f in feats:
            assert f.model == m["model"] and f.task == m["task"]
            assert f.shape == tuple(m["feature"]["shape"]) and f.dtype == m["feature"]["dtype"]
            assert f.reply == "privedge:results:{gw1}"
            assert np.isfinite(f.array()).all()
    # No raw media upstream: every entry is small and carries no image or audio signature.
    for key in r.keys("*"):
        if r.type(key) == b"stream":
            for _, fields in r.xrange(key):
                assert len(fields[b"m"]) < Limits().max_feature_payload
                assert not any(sig in fields[b"m"] for sig in RAW_SIGNATURES)
    assert lis.wait_for(lambda l: l.messages["privedge/gateway/gw1/status"][-1:] == [b"online"])
    assert gw.metrics.count("extracted") == 4 and gw.metrics.count("received") == 6
    assert gw.failed() is None
    lis.close()


def test_wire_version_1_for_older_workers(make_gateway, mosquitto, redis_server, gateway_bundles):
    """``wire_version: 1`` sends the self-describing map an older worker reads; 2 (the default) the compact
    array (schemas.compact); both are the same FeatureMessage."""
    assert GatewaySettings().wire_version == 2
    assert load_settings(env={"PRIVEDGE_WIRE_VERSION": "1"}).wire_version == 1
    with pytest.raises(ConfigError, match="wire_version"):
        GatewaySettings(wire_version=3)
    make_gateway(wire_version=1)
    lis = Listener(mosquitto.port)
    lis.publish("privedge/cam1/image", image_frame("cam1", 5).encode())
    r = redis.Redis.from_url(redis_server.url)
    stream = Names().features("glasses", "gw1")
    assert wait_until(lambda: r.xlen(stream) == 1)
    (_, fields), = r.xrange(stream)
    assert isinstance(msgpack.unpackb(fields[b"m"]), dict)
    assert FeatureMessage.decode(fields[b"m"]) == _features(r, "glasses")[0]
    assert _features(r, "glasses")[0].id == "gw1/cam1/5"
    lis.close()


def test_results_are_relayed_once_even_when_written_twice(make_gateway, mosquitto, redis_server):
    gw = make_gateway(metrics_port=0, warm_up=False)
    lis = Listener(mosquitto.port)
    r = redis.Redis.from_url(redis_server.url)
    now = time.time()
    results = [Result(id=f"gw1/cam{i}/{i}", task="glasses", model="glasses-x", label="glasses", score=0.75,
                      scores={"glasses": 0.75, "no_glasses": 0.25}, ts=now - 0.2, ts_done=now, worker="w1")
               for i in range(3)]
    for res in results + results[:2]:  # two redone by a worker
        r.xadd("privedge:results:{gw1}", {"m": res.encode()})
    assert lis.wait_for(lambda l: all(l.messages[f"privedge/cam{i}/result"] for i in range(3)))
    assert wait_until(lambda: gw.metrics.count("duplicates_dropped") == 2)
    time.sleep(0.3)
    for i in range(3):
        (body,) = lis.json(f"privedge/cam{i}/result")
        assert body["id"] == f"gw1/cam{i}/{i}" and body["device"] == f"cam{i}" and body["seq"] == i
        assert body["label"] == "glasses" and body["score"] == 0.75 and body["task"] == "glasses"
        assert 200 <= body["latency_ms"] < 60_000
    assert gw.metrics.count("results_relayed") == 3
    # Relayed entries are trimmed and the cursor is stored, so a restart goes on from there.
    assert wait_until(lambda: r.xlen("privedge:results:{gw1}") <= 1)
    last = r.xrevrange("privedge:results:{gw1}", count=1)[0][0]
    assert r.get("privedge:results:{gw1}:cursor") == last
    # The same counters as JSON on the stats topic and as Prometheus metrics.
    assert lis.wait_for(lambda l: any(json.loads(p)["results_relayed"] == 3
                                      for p in l.messages["privedge/gateway/gw1/stats"]))
    text = urllib.request.urlopen(gw.metrics_url, timeout=5).read().decode()
    assert 'privedge_gateway_results_relayed_total{gateway="gw1"} 3.0' in text
    assert 'privedge_gateway_duplicates_dropped_total{gateway="gw1"} 2.0' in text
    # Each relayed result's capture-to-publication time, in the latency histogram of its task.
    samples = [s for s in parse(text)["privedge_gateway_result_latency_seconds"].samples
               if s.labels.get("task") == "glasses"]
    value = {(s.name.rsplit("_", 1)[-1], s.labels.get("le")): s.value for s in samples}
    assert value[("count", None)] == 3 and 0.6 <= value[("sum", None)] < 180  # each at least 0.2 s
    assert value[("bucket", "0.1")] == 0 and value[("bucket", "+Inf")] == 3
    assert problems(text) == []
    lis.close()


def _bad(wire_change=None, raw: bytes | None = None):
    def build() -> bytes:
        if raw is not None:
            return raw
        wire = image_frame("cam1", 5).to_wire()
        wire_change(wire)
        return msgpack.packb(wire, use_bin_type=True)
    return build


BAD_INPUTS = {
    "bad msgpack": ("privedge/cam1/image", _bad(raw=b"\xc1\x00garbage"), "malformed", None),
    "unknown version": ("privedge/cam1/image", _bad(lambda w: w.update(v=9)), "unknown version", 5),
    "missing field": ("privedge/cam1/image", _bad(lambda w: w.pop("codec")), "missing field", 5),
    "wrong type": ("privedge/cam1/image", _bad(lambda w: w.update(w="wide")), "wrong type", 5),
    "oversize": ("privedge/cam1/image", _bad(raw=b"\x00" * (Limits().max_image_payload + 1)), "too large", None),
    "undecodable jpeg": ("privedge/cam1/image", _bad(lambda w: w.update(data=b"\xff\xd8\xffnot a jpeg")),
                         "undecodable media", 5),
    "bad device id": ("privedge/cam.1/image", lambda: image_frame("cam1", 5).encode(), "bad name", None),
    "device mismatch": ("privedge/cam1/image", lambda: image_frame("cam2", 5).encode(), "device mismatch", 5),
    "audio without final": ("privedge/cam1/audio",
                            lambda: utterance("cam1", 5, "u-lost", chunks=1, final=False)[0].encode(),
                            "audio timeout", 5),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_each_kind_of_bad_input_is_reported_and_the_next_is_served(case, make_gateway, mosquitto, redis_server):
    topic, build, reason, seq = BAD_INPUTS[case]
    gw = make_gateway(audio_timeout_s=0.5, warm_up=False)
    lis = Listener(mosquitto.port)
    lis.publish(topic, build())
    lis.publish("privedge/cam1/image", image_frame("cam1", 6).encode())
    errors = "privedge/gateway/gw1/errors"
    assert lis.wait_for(lambda l: len(l.messages[errors]) >= 1), f"no error report for {case}"
    (report,) = lis.json(errors)
    assert report["reason"] == reason and report["seq"] == seq
    assert report["device"] in ("cam1", "cam.1")
    assert gw.metrics.count("rejected", reason) == 1
    r = redis.Redis.from_url(redis_server.url)
    assert wait_until(lambda: [f.id for f in _features(r, "glasses")] == ["gw1/cam1/6"])
    assert gw.failed() is None
    lis.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_in_flight_window_bounds_what_the_intake_holds_and_nothing_is_dropped(tmp_path, protocol):
    """Intake alone (no extraction loop, nothing acknowledged): 30 inputs, a receive window of 10 (MQTT 5)
    or the broker's max_inflight_messages 10 (3.1.1). The intake holds 10, the broker keeps the rest;
    acknowledgements let more in; a crash loses nothing, since nothing held was acknowledged.

    (mosquitto 2.0.11 honours the window only until the first acknowledgement: each PUBACK then lets up
    to a whole window more in, so the test checks the first window exactly and only "more" after.)"""
    from broker import servers

    broker = servers.mosquitto(tmp_path / "mosquitto", extra_conf="max_inflight_messages 10\n")
    try:
        settings = GatewaySettings(broker=broker.url, id="gwq", receive_maximum=10, mqtt_protocol=protocol)
        names, metrics, reports = Names(), Metrics(), []
        intake = Intake(settings, names, metrics, ("image",), lambda *a: reports.append(a))
        intake.start()
        lis = Listener(broker.port)
        for seq in range(30):
            lis.publish("privedge/cam1/image", image_frame("cam1", seq, "raw", (4, 4)).encode())
        assert wait_until(lambda: metrics.count("received") == 10)
        time.sleep(0.5)
        assert metrics.count("received") == 10 and intake.queues["image"].depth() == 10 and not reports
        first = intake.queues["image"].take(3, 0, 1)
        intake.ack(first)
        assert wait_until(lambda: metrics.count("received") > 10) and not reports
        # Crash without acknowledging the rest: a new session with the same client id gets them all.
        intake.client.loop_stop()
        intake.client.socket().close()
        again = Intake(settings, names, Metrics(), ("image",), lambda *a: None)
        again.start()
        seqs: list[int] = []
        while len(seqs) < 27:
            batch = again.queues["image"].take(10, 0, 5)
            assert batch, f"only {sorted(seqs)} redelivered"
            seqs += [msgpack.unpackb(i.payload)["seq"] for i in batch]
            again.ack(batch)
        assert sorted(seqs) == list(range(3, 30))
        again.close()
        lis.close()
    finally:
        broker.stop()


def test_redis_down_inputs_are_held_then_handed_on(make_gateway, mosquitto, redis_server):
    gw = make_gateway(retry_max_s=0.2, warm_up=False)
    lis = Listener(mosquitto.port)
    redis_server.stop()
    for seq in range(5):
        lis.publish("privedge/cam1/image", image_frame("cam1", seq).encode())
    assert wait_until(lambda: gw.metrics.count("upstream_retries") >= 2)
    assert gw.metrics.count("dropped") == 0 and gw.failed() is None
    redis_server.start()
    r = redis.Redis.from_url(redis_server.url)
    assert wait_until(lambda: r.xlen("privedge:features:{glasses:00}:gw1") == 5, timeout=30)
    assert gw.metrics.count("rejected") == 0
    lis.close()


def test_broker_restart_gateway_reconnects_and_serves_again(make_gateway, mosquitto, redis_server):
    gw = make_gateway(warm_up=False)
    lis = Listener(mosquitto.port)
    for seq in range(3):
        lis.publish("privedge/cam1/image", image_frame("cam1", seq).encode())
    r = redis.Redis.from_url(redis_server.url)
    assert wait_until(lambda: r.xlen("privedge:features:{glasses:00}:gw1") >= 3)
    lis.close()
    mosquitto.stop()
    assert wait_until(lambda: not gw.intake.connected.is_set())
    mosquitto.start()
    assert wait_until(lambda: gw.intake.connected.is_set(), timeout=30)
    lis = Listener(mosquitto.port, client_id="test-listener-2")
    assert lis.wait_for(lambda l: l.messages["privedge/gateway/gw1/status"][-1:] == [b"online"])
    for seq in range(3, 6):
        lis.publish("privedge/cam1/image", image_frame("cam1", seq).encode())
    assert wait_until(lambda: {f.id for f in _features(r, "glasses")} == {f"gw1/cam1/{i}" for i in range(6)})
    assert gw.failed() is None
    lis.close()


def test_a_refused_connection_is_an_error_and_never_announced_online(tmp_path, gateway_bundles):
    from gateway.service import Gateway, GatewayError
    from broker import servers

    # mosquitto started as root reads its password file as the mosquitto user: keep it readable.
    pw_dir = Path(tempfile.mkdtemp(prefix="privedge-gw-pw-"))
    pw_dir.chmod(0o755)
    pw = pw_dir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "gw", "right"], check=True, capture_output=True)
    pw.chmod(0o644)
    broker = servers.mosquitto(tmp_path / "mq", extra_conf=f"password_file {pw}\n")
    try:
        lis = Listener(broker.port)
        s = GatewaySettings(broker=broker.url, redis="redis://127.0.0.1:1/0", bundles=(str(gateway_bundles["image"]),),
                            id="gwr", mqtt_username="gw", mqtt_password="wrong", connect_timeout_s=10,
                            warm_up=False)
        with pytest.raises(GatewayError, match="refused"):
            Gateway(s).start()
        time.sleep(0.5)
        assert lis.messages["privedge/gateway/gwr/status"] == []
        with Gateway(s.replace(mqtt_password="right")):
            assert lis.wait_for(lambda l: l.messages["privedge/gateway/gwr/status"] == [b"online"])
        lis.close()
    finally:
        broker.stop()
        shutil.rmtree(pw_dir)


def test_settings_sources_and_unknown_keys(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("batch: 8\nwait_ms: 3\nid: fromfile\n")
    s = load_settings({"id": "fromflag"}, config_file=cfg, env={"PRIVEDGE_BATCH": "16"})
    assert (s.id, s.batch, s.wait_ms) == ("fromflag", 16, 3.0)
    cfg.write_text("batchsize: 8\n")
    with pytest.raises(ConfigError, match="unknown setting 'batchsize'"):
        load_settings({}, config_file=cfg, env={})
    toml = tmp_path / "gw.toml"
    toml.write_text('redis_password = "hunter2"\n')
    with pytest.raises(ConfigError, match="secret"):
        load_settings({}, config_file=toml, env={})
    (tmp_path / "pw").write_text("s3cret\n")
    s = load_settings({"redis_password_file": str(tmp_path / "pw")}, env={})
    assert s.redis_password == "s3cret" and "s3cret" not in repr(s)
    with pytest.raises(ConfigError, match="mode"):
        load_settings({"mode": "hybrid"}, env={})


def _gateway_process(mosquitto, redis_server, bundle, tmp_path, lis, n: int, gw_id: str):
    """Start ``privedge gateway`` as a process, wait until it is online, publish ``n`` frames and return
    once some features are in Redis (so it is busy when the test signals it)."""
    cmd = [sys.executable, "-m", "privedge.cli", "gateway", "--broker", mosquitto.url, "--redis", redis_server.url,
           "--bundle", str(bundle), "--id", gw_id, "--batch", "8"]
    log = open(tmp_path / "gateway.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PRIVEDGE_WAIT_MS": "1"})
    try:
        assert lis.wait_for(lambda l: l.messages[f"privedge/gateway/{gw_id}/status"][-1:] == [b"online"], 60)
        for seq in range(n):
            lis.client.publish("privedge/cam1/image", image_frame("cam1", seq, "raw", (64, 64)).encode(), qos=1)
        r = redis.Redis.from_url(redis_server.url)
        assert wait_until(lambda: r.xlen(Names().features("glasses", gw_id)) > 0)
    except BaseException:
        proc.kill()
        raise
    return proc, log


def _next_session_gets_the_rest(mosquitto, redis_server, bundle, gw_id: str, n: int, first: str) -> None:
    """A new gateway with the same id hands on every input the first one did not."""
    from gateway.service import Gateway

    r = redis.Redis.from_url(redis_server.url)
    s = GatewaySettings(broker=mosquitto.url, redis=redis_server.url, bundles=(str(bundle),),
                        id=gw_id, warm_up=False)
    want = {f"{gw_id}/cam1/{i}" for i in range(n)}
    with Gateway(s) as again:
        ok = wait_until(lambda: {f.id for f in _features(r, "glasses", gw_id)} >= want, timeout=60)
        missing = sorted(want - {f.id for f in _features(r, "glasses", gw_id)})
        assert ok, (f"first gateway: {first}; second: {again.metrics.snapshot()}; "
                    f"missing {len(missing)}: {missing[:5]}")


def test_sigterm_drains_what_the_gateway_holds(mosquitto, redis_server, gateway_bundles, tmp_path):
    n = 300
    lis = Listener(mosquitto.port)
    proc, log = _gateway_process(mosquitto, redis_server, gateway_bundles["image"], tmp_path, lis, n, "gwt")
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    text = log.read()
    assert "draining" in text and "Traceback" not in text
    # Everything it had taken in was handed on before it exited.
    final = json.loads(text.split("stopped: ", 1)[1].splitlines()[0])
    assert final["received"] > 0 and final["published"] == final["received"] and not final["dropped"]
    assert lis.wait_for(lambda l: l.messages["privedge/gateway/gwt/status"][-1:] == [b"offline"])
    # What it had not taken in stayed with the broker for its next session.
    _next_session_gets_the_rest(mosquitto, redis_server, gateway_bundles["image"], "gwt", n, text[-2000:])
    lis.close()


def test_sigkill_loses_nothing_the_broker_delivered(mosquitto, redis_server, gateway_bundles, tmp_path):
    n = 300
    lis = Listener(mosquitto.port)
    proc, log = _gateway_process(mosquitto, redis_server, gateway_bundles["image"], tmp_path, lis, n, "gwk")
    proc.kill()
    proc.wait(30)
    # The broker publishes the last will: home apps see the gateway go offline.
    assert lis.wait_for(lambda l: l.messages["privedge/gateway/gwk/status"][-1:] == [b"offline"], 90)
    log.seek(0)
    _next_session_gets_the_rest(mosquitto, redis_server, gateway_bundles["image"], "gwk", n, log.read()[-2000:])
    lis.close()
