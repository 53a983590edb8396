"""A whole privedge deployment as real processes, for the fault tests: mosquitto (persistence), redis-server
(appendonly, ACL users; or a local Redis Cluster of them), a ``privedge gateway`` process (with an on-disk
spool), ``privedge worker`` processes, camera or microphone publishers and a results listener with a persistent session.

The gateway runs with its shipped defaults (the fault tests check what a home gets out of the box); the
only setting changed is ``stats_interval_s`` (0.5 s instead of 5 s), which changes what the gateway
reports, not what it does: the tests read its counters from the stats topic.

Every part can be stopped, killed and started again by the test; :meth:`Rig.run` publishes a run of
inputs, applies a fault in the middle and waits until every input has its result.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import paho.mqtt.client as mqtt
import redis

from broker import servers
from broker.redis_cluster import LocalCluster, redis_cluster
from common.redis_connection import RedisSettings
from broker.redis_acl import AclUser, gateway_user, worker_user
from schemas import Names
from schemas.names import GROUP
from sensors.publisher import PublisherSettings, SensorPublisher
from tests.gateway_fixtures import image_frame, wait_until

GW = "home"
FSDD = Path(os.environ.get("PRIVEDGE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "fsdd"
ADMIN = AclUser("admin", "admin-pw", "+@all ~*")  # the test's own inspection user


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


class ResultListener:
    """Counts result ids on ``privedge/+/result`` and keeps the gateway's last stats; persistent session,
    so results published while it is reconnecting are kept for it by the broker."""

    def __init__(self, port: int) -> None:
        self.ids: Counter[str] = Counter()
        self.keys: Counter[tuple[str, int]] = Counter()  # (device, seq) of each result received
        self.first_at: dict[str, float] = {}  # result id -> monotonic time its first copy arrived
        self.models: Counter[str] = Counter()  # results by the model id that made them
        self.redelivered = 0  # deliveries the broker marked DUP (resent after a lost acknowledgement)
        self.first_result_at: float | None = None  # monotonic time of the first result since reset()
        self.last_result_at = 0.0  # monotonic time of the last result
        self.stats: dict = {}
        self.errors: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fault-results",
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.on_connect = lambda c, *a: c.subscribe([("privedge/+/result", 2),
                                                           (f"privedge/gateway/{GW}/stats", 0),
                                                           (f"privedge/gateway/{GW}/errors", 0)])
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            if msg.topic.endswith("/result"):
                body = json.loads(msg.payload)
                self.ids[body["id"]] += 1
                self.first_at.setdefault(body["id"], time.monotonic())
                self.models[body.get("model", "")] += 1
                self.keys[(body["device"], int(body["seq"]))] += 1
                self.last_result_at = time.monotonic()
                if self.first_result_at is None:
                    self.first_result_at = self.last_result_at
                self.redelivered += msg.dup
            elif msg.topic.endswith("/stats"):
                self.stats = json.loads(msg.payload)
            else:
                self.errors.append(json.loads(msg.payload))

    def reset(self) -> None:
        """Forget the results seen so far (when the first came, and how many were redelivered)."""
        with self._lock:
            self.ids.clear()
            self.keys.clear()
            self.first_at.clear()
            self.models.clear()
            self.redelivered = 0
            self.first_result_at = None

    def repeated_since(self, start: float, end: float) -> tuple[int, int]:
        """(ids received more than once, of those, how many first arrived between ``start`` and ``end``,
        monotonic seconds)."""
        with self._lock:
            repeated = [i for i, c in self.ids.items() if c > 1]
            return len(repeated), sum(start <= self.first_at[i] <= end for i in repeated)

    def served_per_s(self) -> float:
        """Results per second between the first and the last since reset(); 0 with fewer than two."""
        with self._lock:
            if self.first_result_at is None or len(self.ids) < 2:
                return 0.0
            return (len(self.ids) - 1) / max(1e-3, self.last_result_at - self.first_result_at)

    def unique(self) -> int:
        with self._lock:
            return len(self.ids)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Rig:
    """The deployment under test; ``close()`` stops whatever still runs."""

    def __init__(self, root: Path, bundle: Path, *, workers: int = 1, gateway_env: dict | None = None,
                 worker_args: tuple[str, ...] = (), cluster: bool = False, shards: int = 1) -> None:
        """``cluster``: a local Redis Cluster (3 masters, a replica each, the same ACL users on every node)
        instead of one redis-server; ``shards``: the gateway's shards per task."""
        self.root, self.bundle = root, bundle
        self.task = json.loads((bundle / "manifest.json").read_text())["task"]
        # Shipped defaults, but stats every 0.5 s: the tests read the gateway's counters from them.
        self.gateway_env = {"PRIVEDGE_STATS_INTERVAL_S": "0.5", "PRIVEDGE_SHARDS": str(shards), **(gateway_env or {})}
        self.worker_args = worker_args
        self.shards = shards
        self.gw_user, self.worker_user = gateway_user(GW, "gw-secret"), worker_user("worker-secret")
        self.mqtt = servers.mosquitto(root / "mosquitto")
        users = [self.gw_user, self.worker_user, ADMIN]
        self.redis = (redis_cluster(root / "cluster", appendonly=True, acl_users=users,
                                    admin=(ADMIN.name, ADMIN.password))
                      if cluster else servers.redis(root / "redis", appendonly=True, acl_users=users))
        self.procs: list[subprocess.Popen] = []
        self.listener = ResultListener(self.mqtt.port)
        # The home's features streams and the workers' group exist before its first input, as for a
        # provisioned home, so the workers are reading them when the first input comes.
        for shard in range(shards):
            self.admin().xgroup_create(Names().features(self.task, GW, shard), GROUP, id="0", mkstream=True)
        self.gateway = self.start_gateway()
        self.workers = [self.start_worker() for _ in range(workers)]
        self.wait_ready()

    # processes -----------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}-{len(self.procs)}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "privedge.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        log.close()
        self.procs.append(proc)
        return proc

    def start_gateway(self, *, redis_port: int | None = None, bundle: Path | None = None,
                      **env: str) -> subprocess.Popen:
        """A gateway process with the rig's settings, changed by ``env`` (``PRIVEDGE_*`` variables); it
        reaches Redis at ``redis_port`` (a proxy in a partition drill) and serves ``bundle`` when given."""
        return self._spawn("gateway", [
            "gateway", "--broker", self.mqtt.url, "--redis", self.url(self.gw_user, redis_port),
            "--bundle", str(bundle or self.bundle), "--id", GW, "--spool-dir", str(self.root / "spool")],
            {**self.gateway_env, **env})

    def start_worker(self, bundles: tuple[Path, ...] | None = None, redis_port: int | None = None
                     ) -> subprocess.Popen:
        """A worker process serving the rig's bundle, or ``bundles``, reaching Redis at ``redis_port``."""
        served = [a for b in (bundles or (self.bundle,)) for a in ("--bundle", str(b))]
        return self._spawn("worker", [
            "worker", "--redis", self.url(self.worker_user, redis_port), *served,
            "--block-ms", "50", "--claim-idle-ms", "1000", *self.worker_args])

    def url(self, user: AclUser, port: int | None = None) -> str:
        """The Redis URL of ``user``: the cluster's, or the redis-server's (at ``port``: a proxy)."""
        if isinstance(self.redis, LocalCluster):
            return self.redis.url_for(user.name, user.password)
        return user.url("127.0.0.1", port or self.redis.port)

    def admin(self) -> redis.Redis:
        return RedisSettings.from_dsn(self.url(ADMIN)).client()

    def stats(self) -> dict:
        """The gateway's latest stats (published every 0.5 s)."""
        with self.listener._lock:
            return dict(self.listener.stats)

    def wait_ready(self, timeout: float = 90) -> None:
        """Until the gateway publishes stats (it serves) and a worker has made the consumer group."""
        self.listener.stats = {}
        ok = wait_until(lambda: self.listener.stats and self._groups(), timeout, 0.2)
        assert ok, f"not ready: {self.logs()}"

    def features_streams(self) -> list[str]:
        """The features streams of the rig's task (whatever the key layout after the task name)."""
        admin = self.admin()
        keys = {k.decode() for k in admin.scan_iter(match=Names().features_pattern(self.task), _type="stream")}
        return sorted(keys)

    def pending(self) -> int:
        """Entries read by a worker and not yet acknowledged, over the task's features streams."""
        admin = self.admin()
        return sum(admin.xpending(k, "analyzers")["pending"] for k in self.features_streams())

    def _groups(self) -> bool:
        try:
            return any(self.admin().xinfo_groups(k) for k in self.features_streams())
        except redis.RedisError:
            return False

    def logs(self, tail: int = 1500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-tail:]}" for p in sorted(self.root.glob("*.log")))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.listener.close()
        self.mqtt.stop()
        self.redis.stop()

    # a run -------------------------------------------------------------------------------------------
    def publish(self, n: int, rate: float, devices: int = 2, first: int = 0,
                size: tuple[int, int] = (32, 32), photo: bool = False) -> threading.Thread:
        """A thread publishing ``n`` frames at ``rate`` per second, round-robin over ``devices`` cameras
        (seq = input number, so ids are ``home/cam{d}/{seq}``): raw noise, or with ``photo`` smooth JPEGs;
        ``self.published`` counts acknowledged ones."""
        self.published = 0
        frames = [image_frame(f"cam{i % devices}", first + i, "jpeg" if photo else "raw", size, smooth=photo)
                  for i in range(n)]

        def run() -> None:
            pubs = [SensorPublisher(PublisherSettings(broker=self.mqtt.url, device=f"cam{d}", first_seq=0,
                                                      max_inflight=100, publish_timeout_s=120)).connect()
                    for d in range(devices)]
            t0 = time.monotonic()
            for i, frame in enumerate(frames):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                # stamped as it is sent, as a camera does: the gateway judges staleness by capture time
                pubs[i % devices].publish_image(dataclasses.replace(frame, ts=time.time()))
                self.published += 1
            for p in pubs:
                p.flush(120)
                p.close()

        t = threading.Thread(target=run, name="publisher", daemon=True)
        t.start()
        return t

    def publish_speech(self, n: int, rate: float, devices: int = 2) -> threading.Thread:
        """A thread publishing ``n`` real FSDD utterances at ``rate`` per second, round-robin over
        ``devices`` microphones (``mic0``...), each cut into 100 ms AudioChunks. ``self.expected`` collects
        the (device, seq) of each utterance (its first chunk's seq, the inference seq)."""
        from models.preprocess import load_wav

        files = sorted((FSDD / "recordings").glob("*.wav"))
        assert files, f"no FSDD recordings under {FSDD}"
        waves = [load_wav(files[(37 * i) % len(files)]) for i in range(n)]  # spread over digits and speakers
        self.published, self.expected = 0, []

        def run() -> None:
            pubs = [SensorPublisher(PublisherSettings(broker=self.mqtt.url, device=f"mic{d}",
                                                      publish_timeout_s=120)).connect()
                    for d in range(devices)]
            t0 = time.monotonic()
            for i, (wave, wave_rate) in enumerate(waves):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                chunks = pubs[i % devices].publish_utterance(np.asarray(wave, np.float32), int(wave_rate))
                self.expected.append((chunks[0].device, chunks[0].seq))
                self.published += 1
            for p in pubs:
                p.flush(120)
                p.close()

        t = threading.Thread(target=run, name="mic-publisher", daemon=True)
        t.start()
        return t

    def run(self, n: int, rate: float, fault: Callable[["Rig"], None], *, at: float = 0.3, first: int = 0,
            timeout: float = 120, size: tuple[int, int] = (32, 32), speech: bool = False) -> dict:
        """Publish ``n`` inputs (camera frames, or with ``speech`` FSDD utterances), call ``fault(self)``
        once ``at`` of them have results, wait for every result; returns the counts (printed by the
        caller)."""
        self.listener.reset()
        pub = self.publish_speech(n, rate) if speech else self.publish(n, rate, first=first, size=size)
        assert wait_until(lambda: self.listener.unique() >= at * n, timeout, 0.05), self.logs()
        fault(self)
        pub.join(timeout)
        assert not pub.is_alive(), "publisher did not finish"
        done = wait_until(lambda: self.listener.unique() >= n, timeout, 0.1)
        time.sleep(1.5)  # late duplicates, if any, would arrive now
        ids = self.listener.ids
        counts = {"inputs": n, "published": self.published, "results": sum(ids.values()),
                  "unique_results": len(ids), "duplicates": sum(c - 1 for c in ids.values()),
                  "missing": n - len(ids), "mqtt_dup_flagged": self.listener.redelivered}
        assert done, f"{counts}\n{self.logs()}"
        return counts


def frame_ids(n: int, devices: int = 2, first: int = 0) -> set[str]:
    """The result ids of :meth:`Rig.publish`'s inputs."""
    return {f"{GW}/cam{i % devices}/{first + i}" for i in range(n)}

