"""``python -m bench.fuzz``: hostile inputs through a running gateway and worker; nothing may crash or stick.

Starts its own mosquitto and redis-server, one ``privedge gateway`` and one ``privedge worker`` (as child
processes, with the shipped defaults and untrained bundles of the default architectures), then sends the
generated inputs of :mod:`bench.fuzz_inputs`: MQTT payloads to both sensor topics (QoS 1, as sensors do)
and entries straight into the gateway's features stream (as a hostile gateway could). After each family,
and at the end, a *probe* checks that the loops still answer: valid frames and utterances from fresh
devices must come back as results on MQTT, and valid feature entries as results in Redis.

Figures (``OUT/fuzz.json`` and ``OUT/fuzz.md``): inputs sent per family, what the gateway rejected (its own
counters, by reason) and what the worker dead-lettered (by reason), crashes (a service that exited),
stuck loops (a probe that went unanswered), and each service's resident memory at start and at its peak
(VmHWM), sampled through the run.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import redis

from bench import fuzz_inputs
from bench.procs import Service
from bench.report import header, machine, table_head
from broker import servers
from schemas.features import FeatureMessage
from schemas.media import ImageFrame
from schemas.names import Names

log = logging.getLogger("bench.fuzz")

GATEWAY = "fuzzhome"
SHARES = {"image": 0.3, "audio": 0.3, "bytes": 0.1, "topic": 0.05, "features": 0.25}
"""Share of the inputs per family."""
PROBE_TIMEOUT_S = 60.0


class Watch:
    """The gateway's JSON stats and every result on MQTT, by device."""

    def __init__(self, port: int, names: Names) -> None:
        self.stats: dict = {}
        self.results: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzz-watch")
        self.client.on_connect = lambda c, *a: c.subscribe([(names.result_wildcard(), 1),
                                                           (names.gateway_stats(GATEWAY), 0)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            if msg.topic.endswith("/stats"):
                self.stats = json.loads(msg.payload)
            else:
                self.results[msg.topic.split("/")[-2]] += 1

    def count(self, device: str) -> int:
        with self._lock:
            return self.results[device]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Publisher:
    """QoS 1 publishes with a bounded number in flight (as a sensor's client would)."""

    def __init__(self, port: int, inflight: int = 200) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzz-pub")
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(inflight)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos: list = []

    def send(self, topic: str, payload: bytes) -> None:
        while True:
            info = self.client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self.infos.append(info)
                break
            time.sleep(0.002)  # paho's queue is full: wait for acknowledgements
        if len(self.infos) > 1000:
            self.flush()

    def flush(self, timeout: float = 60.0) -> None:
        for info in self.infos:
            info.wait_for_publish(timeout)
        self.infos = []

    def close(self) -> None:
        self.flush()
        self.client.loop_stop()
        self.client.disconnect()


class Deployment:
    """Broker, Redis, gateway and worker for one fuzz run; ``close()`` stops them all."""

    def __init__(self, work: Path, bundles: dict[str, Path]) -> None:
        self.work, self.bundles = work, bundles
        self.names = Names()
        self.mqtt = servers.mosquitto(work / "mosquitto")
        self.redis_server = servers.redis(work / "redis")
        self.redis = redis.Redis(port=self.redis_server.port)
        bundle_args = [a for b in bundles.values() for a in ("--bundle", str(b))]
        self.gateway = Service("gateway", ["--broker", self.mqtt.url, "--redis", self.redis_server.url,
                                           *bundle_args, "--id", GATEWAY, "--stats-interval-s", "1"],
                               work / "gateway.log")
        self.worker = Service("worker", ["--redis", self.redis_server.url, *bundle_args, "--name", "fuzz-worker"],
                              work / "worker.log")
        self.watch = Watch(self.mqtt.port, self.names)
        deadline = time.monotonic() + 120
        while not self.watch.stats:
            if time.monotonic() > deadline or not self.gateway.alive():
                raise RuntimeError(f"gateway did not start:\n{self.gateway.tail()}")
            time.sleep(0.2)
        self.rss_start = {"gateway": self.gateway.peak_rss_mb(), "worker": self.worker.peak_rss_mb()}

    def alive(self) -> dict[str, bool]:
        return {"gateway": self.gateway.alive(), "worker": self.worker.alive()}

    def peak_rss(self) -> dict[str, float]:
        return {name: (svc.peak_rss_mb() if svc.alive() else float("nan"))
                for name, svc in (("gateway", self.gateway), ("worker", self.worker))}

    def close(self) -> None:
        self.watch.close()
        for svc in (self.gateway, self.worker):
            if svc.alive():
                svc.stop()
        self.mqtt.stop()
        self.redis_server.stop()


def _manifest(bundle: Path) -> dict:
    from models.bundle import read_manifest

    return read_manifest(bundle)


def _valid_frame(device: str, seq: int) -> bytes:
    img = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) % 251).astype(np.uint8)
    return ImageFrame.from_array(img, device=device, seq=seq, ts=time.time(), codec="png").encode()


def _valid_chunks(device: str, seq: int) -> list[bytes]:
    import msgpack

    pcm = (np.sin(np.linspace(0, 400, 4000)) * 8000).astype("<i2").tobytes()  # 0.5 s at 8 kHz
    parts = [pcm[i:i + 1600] for i in range(0, len(pcm), 1600)]
    return [msgpack.packb({"v": 1, "device": device, "seq": seq + i, "ts": time.time(), "utt": f"p{seq}",
                           "rate": 8000, "width": 2, "channels": 1, "codec": "pcm_s16le",
                           "final": i == len(parts) - 1, "data": p}, use_bin_type=True)
            for i, p in enumerate(parts)]


def run_probe(dep: Deployment, pub: Publisher, round_no: int, features: tuple[str, list[bytes], str]) -> dict:
    """Valid inputs from fresh devices: every one must come back. Returns {loop: answered?}."""
    cam, mic = f"probe-cam{round_no}", f"probe-mic{round_no}"
    frames, utterances = 5, 2
    for i in range(frames):
        pub.send(dep.names.image(cam), _valid_frame(cam, i))
    for u in range(utterances):
        for chunk in _valid_chunks(mic, 100 * u):
            pub.send(dep.names.audio(mic), chunk)
    pub.flush()
    stream, msgs, reply = features
    before = dep.redis.xlen(reply)
    pipe = dep.redis.pipeline(transaction=False)
    for m in msgs:
        pipe.xadd(stream, {"m": m})
    pipe.execute()
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    out = {}
    while time.monotonic() < deadline:
        out = {"image": dep.watch.count(cam) >= frames, "audio": dep.watch.count(mic) >= utterances,
               "worker": dep.redis.xlen(reply) - before >= len(msgs)}
        if all(out.values()):
            break
        time.sleep(0.2)
    return out


def _feature_probe(names: Names, bundle: Path, round_no: int) -> tuple[str, list[bytes], str]:
    """Valid FeatureMessages of the image bundle from a gateway of the fuzz's own, whose results no gateway
    relays (so they can be counted in Redis)."""
    m = _manifest(bundle)
    gw = f"fuzzprobe{round_no}"
    shape = tuple(m["feature"]["shape"])
    z = np.zeros(shape, dtype=m["feature"]["dtype"])
    msgs = [FeatureMessage.from_array(z, gateway=gw, device="probe", seq=i, ts=time.time(), ts_sent=time.time(),
                                      task=m["task"], model=m["model"], reply=names.results(gw)).encode()
            for i in range(5)]
    return _features_stream(names, m["task"], gw), msgs, names.results(gw)


def _features_stream(names: Names, task: str, gateway: str) -> str:
    """The features stream a gateway writes (per gateway where Names takes one, else the shared one)."""
    try:
        return names.features(task, gateway)
    except TypeError:
        return names.features(task)


def run(n: int, out: Path, seed: int = 0, work: Path | None = None) -> dict:
    """Send about ``n`` generated inputs; returns (and writes) the figures."""
    from bench.cli import bundles_by_modality

    rng = np.random.default_rng(seed)
    work = Path(work or tempfile.mkdtemp(prefix="privedge-fuzz-"))
    bundles = bundles_by_modality(None, ("image", "speech"), work)
    dep = Deployment(work, bundles)
    pub = Publisher(dep.mqtt.port)
    image_m = _manifest(bundles["image"])
    feature_stream = _features_stream(dep.names, image_m["task"], GATEWAY)
    sent: Counter[str] = Counter()
    probes, peak = [], dict(dep.rss_start)
    t0 = time.monotonic()
    try:
        for round_no, family in enumerate(fuzz_inputs.FAMILIES):
            k = max(1, int(n * SHARES[family]))
            if family == "features":
                gen = fuzz_inputs.feature_inputs(
                    rng, k, gateway=GATEWAY, model=image_m["model"], task=image_m["task"],
                    dtype=image_m["feature"]["dtype"], shape=tuple(image_m["feature"]["shape"]),
                    reply=dep.names.results(GATEWAY), other_reply=dep.names.results("another-home"))
                batch = []
                for item in gen:
                    batch.append(item.fields)
                    if len(batch) >= 500:
                        _xadd_all(dep.redis, feature_stream, batch)
                        batch = []
                    sent[family] += 1
                _xadd_all(dep.redis, feature_stream, batch)
            else:
                gen = {"image": lambda: fuzz_inputs.image_inputs(rng, k),
                       "audio": lambda: fuzz_inputs.audio_inputs(rng, k),
                       "bytes": lambda: fuzz_inputs.bytes_inputs(rng, k),
                       "topic": lambda: fuzz_inputs.topic_inputs(rng, k)}[family]()
                for item in gen:
                    pub.send(f"{dep.names.prefix}/{item.device}/{item.kind}", item.payload)
                    sent[family] += 1
                    if sent[family] % 2000 == 0:
                        _sample(dep, peak)
                pub.flush()
            log.info("%s: %d inputs sent; probing", family, sent[family])
            answered = run_probe(dep, pub, round_no, _feature_probe(dep.names, bundles["image"], round_no))
            _sample(dep, peak)
            probes.append({"after": family, **answered, **{f"{k}_alive": v for k, v in dep.alive().items()}})
            log.info("probe after %s: %s", family, probes[-1])
        settled = _settle(dep, feature_stream)
        seconds = time.monotonic() - t0
        time.sleep(1.5)  # one more stats message
        result = _figures(dep, sent, probes, peak, seconds, seed)
        result["settled"] = settled
    finally:
        pub.close()
        dep.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz.json").write_text(json.dumps(result, indent=2))
    (out / "fuzz.md").write_text(markdown(result))
    return result


def _settle(dep: Deployment, stream: str, timeout: float = 300.0) -> bool:
    """Wait until the worker has read and acknowledged every entry of the fuzzed features stream and the
    gateway's queues are empty, so the figures count every input; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            groups = dep.redis.xinfo_groups(stream)
        except redis.ResponseError:
            groups = []
        worker_done = bool(groups) and all(g.get("lag") == 0 and g.get("pending") == 0 for g in groups)
        gauges = dep.watch.stats.get("gauges", {})
        gateway_done = not any(v for k, v in gauges.items() if k.endswith("_queue"))
        if worker_done and gateway_done:
            return True
        time.sleep(0.5)
    return False


def _xadd_all(client: redis.Redis, stream: str, entries: list[dict]) -> None:
    if not entries:
        return
    pipe = client.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(stream, fields)
    pipe.execute()


def _sample(dep: Deployment, peak: dict) -> None:
    for name, mb in dep.peak_rss().items():
        if mb == mb:  # not NaN: the process is alive
            peak[name] = max(peak.get(name, 0.0), mb)


def _dead_letters(client: redis.Redis, names: Names, tasks: list[str]) -> tuple[int, dict[str, int]]:
    """(dead letters ever added, reasons of those the dead-letter streams still hold: they are bounded)."""
    reasons: Counter[str] = Counter()
    total = 0
    for task in tasks:
        stream = names.dead(task)
        if not client.exists(stream):
            continue
        total += int(client.xinfo_stream(stream)["entries-added"])
        for _, fields in client.xrange(stream, "-", "+"):
            reasons[fields.get(b"reason", b"?").decode(errors="replace")] += 1
    return total, dict(reasons)


def _figures(dep: Deployment, sent: Counter, probes: list[dict], peak: dict, seconds: float, seed: int) -> dict:
    stats = dep.watch.stats
    tasks = [_manifest(b)["task"] for b in dep.bundles.values()]
    crashes = [name for name, ok in dep.alive().items() if not ok]
    dead_total, dead_reasons = _dead_letters(dep.redis, dep.names, tasks)
    stuck = [p["after"] for p in probes if not all(p[k] for k in ("image", "audio", "worker"))]
    with dep.watch._lock:
        answered = {f: sum(c for d, c in dep.watch.results.items() if d.startswith(f"fz-{p}"))
                    for f, p in (("image", "cam"), ("audio", "mic"), ("features", "feat"))}
    return {
        "machine": machine(), "settings": {"inputs": sum(sent.values()), "seed": seed, "shares": SHARES},
        "sent": dict(sent), "inputs": sum(sent.values()), "seconds": round(seconds, 1),
        "gateway_received": stats.get("received"), "gateway_rejected": stats.get("rejected", {}),
        "gateway_dropped": stats.get("dropped", {}), "worker_dead_letters": dead_reasons,
        "worker_dead_letters_total": dead_total,
        "answered": answered, "crashes": len(crashes), "crashed": crashes, "stuck_loops": len(stuck), "stuck_after": stuck,
        "probes": probes, "rss_start_mb": {k: round(v, 1) for k, v in dep.rss_start.items()},
        "rss_peak_mb": {k: round(v, 1) for k, v in peak.items()},
    }


def markdown(r: dict) -> str:
    lines = header("privedge fuzz: hostile inputs through a running gateway and worker", r["machine"],
                   r["settings"])
    lines += [f"{r['inputs']} inputs in {r['seconds']} s: **{r['crashes']} crashes, {r['stuck_loops']} stuck "
              f"loops** (probes after each family: valid frames, utterances and feature entries answered).", ""]
    lines += table_head("family", "inputs sent", "results (valid inputs answered)")
    lines += [f"| {k} | {v} | {r['answered'].get(k, '')} |" for k, v in r["sent"].items()] + [""]
    if not r.get("settled", True):
        lines += ["Not every input was processed within the settling time: the counts below are partial.", ""]
    lines += table_head("gateway rejected (reason)", "count")
    lines += [f"| {k} | {v} |" for k, v in sorted(r["gateway_rejected"].items())] + [""]
    dropped = sum(r["gateway_dropped"].values())
    lines += [f"Stale camera frames dropped by the gateway (offered far above its capacity, they waited longer "
              f"than image_max_age_s at the broker): {dropped}.", ""]
    lines += [f"Dead letters written by the worker: {r['worker_dead_letters_total']}; the reasons of the "
              f"{sum(r['worker_dead_letters'].values())} that the bounded dead-letter stream still holds:", ""]
    lines += table_head("worker dead letters (reason)", "count")
    lines += [f"| {k} | {v} |" for k, v in sorted(r["worker_dead_letters"].items())] + [""]
    lines += table_head("service", "RSS at start MiB", "peak RSS MiB")
    lines += [f"| {k} | {r['rss_start_mb'][k]} | {r['rss_peak_mb'][k]} |" for k in r["rss_start_mb"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=100_000, help="inputs to send across all families")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.inputs < len(fuzz_inputs.FAMILIES):
        p.error("--inputs must be at least one per family")
    r = run(a.inputs, a.out, a.seed)
    print(markdown(r))
    return 1 if r["crashes"] or r["stuck_loops"] else 0


if __name__ == "__main__":
    sys.exit(main())
