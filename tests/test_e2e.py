"""End to end with real mosquitto, redis-server and ``privedge worker`` processes: every input the sensor
clients publish comes back once, labelled from its task's labels, with the load shared by the workers;
nothing the cloud holds is raw media; the gateway never opens analyzer weights.

The runs go on one Redis and on a real local Redis Cluster (3 masters, a replica each; no mock), where the
gateway spreads each task over 3 shards."""
from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from gateway.config import GatewaySettings
from gateway.service import Gateway
from models.bundle import make_untrained_bundle, read_manifest
from broker import redis_cluster, servers
from common.redis_connection import RedisSettings as Connection
from schemas import Limits, Names
from schemas.features import split_id
from schemas.names import GROUP
from sensors import cli as sensor_cli
from tests.conftest import FAST
from tests.e2e_support import (REPO, Published, WorkerProcesses, arm_atimes, audited_command, raw_media_findings,
                               read_since_armed, redis_entries, results_of, without_pitch_shift)
from tests.gateway_fixtures import Listener, features_in, full_bundles, gateway_bundles  # noqa: F401 (fixtures)
from workers.config import RedisSettings, WorkerSettings
from workers.service import Worker

pytestmark = pytest.mark.integration

IMAGES, UTTERANCES = (6, 4) if FAST else (40, 24)
GATEWAY = "gw1"
SHARDS = {"redis": 1, "cluster": 3}
"""Shards per task the gateway writes, on one Redis and on the Cluster."""


def publish_from_folders(broker_url: str, data_dir, devices: tuple[str, str], n_images: int,
                         n_utterances: int) -> None:
    """``privedge sensor camera`` over ORL faces (sent as JPEG) and ``privedge sensor mic`` over FSDD."""
    common = ["--broker", broker_url, "--rate", "0"]
    assert sensor_cli.main(["camera", *common, "--device", devices[0], "--source", str(data_dir / "orl"),
                            "--codec", "jpeg", "--count", str(n_images)]) == 0
    assert sensor_cli.main(["mic", *common, "--device", devices[1], "--source",
                            str(data_dir / "fsdd" / "recordings"), "--count", str(n_utterances)]) == 0


def gateway_online(gateway: str):
    return lambda lis: lis.messages[f"privedge/gateway/{gateway}/status"][-1:] == [b"online"]


@dataclass
class Cloud:
    """Broker, Redis, an in-process gateway and three ``privedge worker`` processes, shared by the runs."""

    broker: servers.LocalServer
    store: servers.LocalServer | redis_cluster.LocalCluster
    workers: WorkerProcesses
    shards: int


@pytest.fixture(scope="module", params=["redis", "cluster"])
def cloud(request, tmp_path_factory, gateway_bundles, full_bundles):  # noqa: F811
    tmp = tmp_path_factory.mktemp("e2e")
    shards = SHARDS[request.param]
    with contextlib.ExitStack() as stack:
        broker = servers.mosquitto(tmp / "mosquitto")
        stack.callback(broker.stop)
        if request.param == "cluster":
            store = redis_cluster.redis_cluster(tmp / "cluster")
        else:
            store = servers.redis(tmp / "redis")
        stack.callback(store.stop)
        # The home's streams exist before its first input (as for a provisioned home), so every worker
        # blocks on them before the burst; a home that appears later is found by each worker's SCAN within
        # a few seconds, and its first burst goes to whichever worker finds it first.
        admin = Connection.from_dsn(store.url).client()
        for bundle in (full_bundles["image"], full_bundles["speech"]):
            for shard in range(shards):
                admin.xgroup_create(Names().features(read_manifest(bundle)["task"], GATEWAY, shard), GROUP, id="0",
                                    mkstream=True)
        workers = WorkerProcesses(store.url, (full_bundles["image"], full_bundles["speech"]), 3, tmp)
        stack.callback(workers.stop)
        # The gateway gets bundles without analyzer.pt (it must not need them); a burst of inputs waits at
        # the broker (backpressure, the default) instead of being dropped.
        settings = GatewaySettings(broker=broker.url, redis=store.url, id=GATEWAY, wait_ms=2.0, shards=shards,
                                   bundles=(str(gateway_bundles["image"]), str(gateway_bundles["speech"])))
        stack.callback(Gateway(settings).start().stop)
        workers.wait_ready()
        yield Cloud(broker, store, workers, shards)


@dataclass
class Run:
    """One end-to-end run with ``workers`` workers, inspected by the tests below."""

    workers: list[str]
    devices: tuple[str, str]
    published: Published
    results: list[tuple[str, dict]]
    redis_url: str
    manifests: dict  # modality -> manifest
    shards: int


@pytest.fixture(scope="module", params=[3, 2, 1], ids=lambda n: f"{n}-workers")
def run(request, cloud, full_bundles, data_dir):  # noqa: F811
    """IMAGES ORL faces and UTTERANCES FSDD digits from the sensor clients, with the first ``n`` of the
    cloud's workers running (the runs go 3, 2, 1, stopping one worker between runs)."""
    n = request.param
    assert cloud.workers.stop(keep=n) == [0] * (3 - n)
    assert cloud.workers.running() == cloud.workers.names[:n]
    devices = (f"cam{n}", f"mic{n}")
    lis = Listener(cloud.broker.port, client_id=f"e2e-listener-{n}")
    try:
        assert lis.wait_for(gateway_online(GATEWAY)), "listener not subscribed"  # the retained status came
        publish_from_folders(cloud.broker.url, data_dir, devices, IMAGES, UTTERANCES)
        arrived = lis.wait_for(lambda l: len(results_of(l)) >= IMAGES + UTTERANCES, timeout=120)
        time.sleep(0.5)  # a duplicate would follow its first copy closely
    finally:
        lis.close()
    assert arrived, f"{len(results_of(lis))} results of {IMAGES + UTTERANCES}; log:\n{cloud.workers.log(0)[-2000:]}"
    return Run(workers=cloud.workers.names[:n], devices=devices, published=Published.from_listener(lis, GATEWAY),
               results=results_of(lis), redis_url=cloud.store.url,
               manifests={m: read_manifest(full_bundles[m]) for m in full_bundles}, shards=cloud.shards)


def test_every_input_comes_back_once_with_a_label_of_its_task(run):
    pub = run.published
    assert (len(pub.frames), len(pub.utterances)) == (IMAGES, UTTERANCES)
    ids = [body["id"] for _, body in run.results]
    assert Counter(ids) == Counter(pub.ids()), "every published input exactly once, and nothing else"
    for topic, body in run.results:
        parts = split_id(body["id"])  # with the sensor's boot id
        device = parts.device
        assert (parts.gateway, body["device"], body["seq"]) == ("gw1", device, parts.seq)
        assert topic == f"privedge/{device}/result"
        manifest = run.manifests["image" if body["id"] in pub.frames else "speech"]
        assert (body["task"], body["model"]) == (manifest["task"], manifest["model"])
        assert body["label"] in manifest["labels"] and 0.0 <= body["score"] <= 1.0
        assert body["latency_ms"] > 0


def test_the_workers_share_the_load(run, cloud):
    by_worker = Counter(body["worker"] for _, body in run.results)
    assert sum(by_worker.values()) == IMAGES + UTTERANCES
    if cloud.shards == 1:
        # All workers block on the one XREADGROUP before the first input arrives, and Redis serves blocked
        # readers in turn, so each is served some.
        assert set(by_worker) == set(run.workers), by_worker
    else:
        # On a Cluster a worker reads each slot's streams in turn (workers/streams.py), without the turn
        # Redis gives readers blocked on one server, so a burst this small may all go to one worker: only
        # running workers answered, and every input once (above).
        assert set(by_worker) <= set(run.workers), by_worker
    assert not [name for i, name in enumerate(cloud.workers.names) if "Traceback" in cloud.workers.log(i)]


def test_redis_holds_no_raw_media_and_no_entry_over_the_feature_bound(run, gateway_bundles):  # noqa: F811
    assert not [m for m, d in gateway_bundles.items() if (d / "analyzer.pt").exists()]  # the gateway ran without
    r = Connection.from_dsn(run.redis_url).client()
    # The gateway sent one FeatureMessage per input, and the scan below sees them.
    sent = [msg for m in run.manifests.values() for shard in range(run.shards)
            for msg in features_in(r, m["task"], GATEWAY, run.manifests.values(), shard=shard)]
    assert sorted(f.id for f in sent if f.device in run.devices) == sorted(run.published.ids())
    if run.shards > 1:  # the gateway spread the inputs over the shards (and so over the masters)
        used = {shard for m in run.manifests.values() for shard in range(run.shards)
                if r.xlen(Names().features(m["task"], GATEWAY, shard))}
        assert len(used) >= 2, used
    entries = redis_entries(r)
    assert sum(" entry " in where for where, _ in entries) >= len(sent)
    assert not [where for where, _ in entries if where.startswith("key privedge:media")]
    findings = raw_media_findings(entries, run.published.probes(), Limits().max_feature_payload)
    assert findings == []
    # Tighter than the bound: the largest thing in Redis is smaller than the smallest published input.
    smallest = min([len(f.data) for f in run.published.frames.values()]
                   + [len(pcm) for pcm, _ in run.published.utterances.values()])
    assert max(sum(map(len, values)) for _, values in entries) < smallest


def test_gateway_process_given_full_bundles_never_opens_analyzer_weights(mosquitto, redis_server, data_dir,
                                                                        tmp_path):
    # Full bundles; speech without the random pitch shift, so that the gateway's warm-up is short.
    bundles = (tmp_path / "bundles" / "image", tmp_path / "bundles" / "speech")
    for b in bundles:
        make_untrained_bundle(b, b.name)
    without_pitch_shift(bundles[1])
    worker_bundles = [shutil.copytree(b, tmp_path / "worker" / b.name) for b in bundles]
    # Two witnesses: the process's own audit hook (every open() it makes), and the kernel's access times
    # (any read, also from native code); extractor.pt is the control that each of them sees a read.
    armed = arm_atimes(p for b in bundles for p in b.iterdir() if p.name.startswith(("analyzer.", "extractor.pt")))
    opened = tmp_path / "opened.txt"
    args = ["gateway", "--broker", mosquitto.url, "--redis", redis_server.url, "--id", "gwa", "--wait-ms", "2"]
    for b in bundles:
        args += ["--bundle", str(b)]
    lis = Listener(mosquitto.port)
    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), bundles=tuple(worker_bundles),
                                   name="wa", block_ms=50)).start()
    log = tmp_path / "gateway.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(audited_command(opened, bundles[0].parent, args), cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        assert lis.wait_for(gateway_online("gwa"), timeout=180), log.read_text()[-3000:]
        publish_from_folders(mosquitto.url, data_dir, ("cam1", "mic1"), 2, 2)
        assert lis.wait_for(lambda l: len(results_of(l)) >= 4, timeout=60), log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            worker.stop()
            lis.close()
    assert rc == 0, log.read_text()[-3000:]
    assert {body["id"] for _, body in results_of(lis)} == Published.from_listener(lis, "gwa").ids()
    files = set(opened.read_text().split())
    for b in bundles:  # the hook saw what the gateway did read, so it would have seen analyzer.pt
        assert {str(b / "manifest.json"), str(b / "extractor.pt")} <= files, files
    assert all((b / "analyzer.pt").is_file() for b in bundles)
    assert not [f for f in files if "/analyzer." in f], files
    assert read_since_armed(armed) == {b / "extractor.pt" for b in bundles}
