"""``python -m bench.cluster``: worker throughput on a local Redis Cluster with 1 and with 3 shards per task.

Pre-filled streams (``--gateways`` homes, each input in its shard by schemas.names.shard_of), far more
entries than the workers finish in the window, so they never wait for input; the rate is the growth of
the results streams over the window. Each run gets a fresh key prefix on one local cluster (3 masters, a
replica each, as the tests'), so the runs see the same servers. The CPU of every process is read from
/proc over the window: each master's, each replica's, each worker's. On a 2-core machine the workers and
the six redis-servers share the cores, so the absolute rate says little; the ratio of the 3-shard rate to
the 1-shard one and the CPU per entry of each part are what carry over.

From the Redis CPU per entry (all masters together: the gateways' XADD, measured while the streams are
filled, then XREADGROUP, the results' XADD, XACK, trimming and replication, measured over the window) the
report works out, on paper, how many homes one cluster of N masters serves: a master core
moves ``1 / cpu_per_entry`` entries a second, N masters N times that when the shards spread evenly over
them (many more shards than masters), and a home sends ``rate`` inputs a second. The worker cores those
homes need follow from the workers' CPU per entry.

Writes ``OUT/cluster.json`` and ``OUT/cluster.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.procs import Service, cpu_seconds
from bench.report import header, machine, setup_lines, table_head
from broker.redis_cluster import LocalCluster, redis_cluster
from schemas.features import FeatureMessage
from schemas.names import FIELD, Names, shard_of

log = logging.getLogger(__name__)

HOME_RATES = (1.0, 3.0, 20.0)
"""Inputs per second of a home, for the capacity on paper: a quiet home, the demo's (a camera at 2 frames
and a microphone at 1 digit a second), and a busy room (the gateway's own sizing example)."""
MASTERS_ON_PAPER = (3, 6, 12)
"""Cluster sizes the capacity is worked out for."""
SINGLE_REDIS_CORE_PER_S = 50_000
"""What one Redis core moves here (DESIGN.md, "Measured here": XREADGROUP COUNT 100 + batched XACK)."""


def _messages(manifest: dict, names: Names, gateways: list[str], shards: int, n: int) -> dict[str, list[bytes]]:
    """stream -> encoded FeatureMessages, ``n`` in all over ``gateways``, each in its shard."""
    shape, dtype = tuple(manifest["feature"]["shape"]), manifest["feature"]["dtype"]
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 1, (64, *shape)).astype(dtype) if dtype.startswith("float") else \
        rng.integers(-100, 100, (64, *shape)).astype(dtype)
    now = time.time()
    out: dict[str, list[bytes]] = {}
    for i in range(n):
        gw = gateways[i % len(gateways)]
        seq = i // len(gateways)
        stream = names.features(manifest["task"], gw, shard_of(f"scale/{seq}", shards))
        out.setdefault(stream, []).append(FeatureMessage.from_array(
            feats[i % len(feats)], gateway=gw, device="scale", seq=seq, ts=now, ts_sent=now, task=manifest["task"],
            model=manifest["model"], reply=names.results(gw)).encode())
    return out


def _fill(client, streams: dict[str, list[bytes]]) -> None:
    for stream, msgs in streams.items():
        for i in range(0, len(msgs), 1000):
            pipe = client.pipeline(transaction=False)
            for m in msgs[i:i + 1000]:
                pipe.xadd(stream, {FIELD: m})
            pipe.execute()


def _redis_cpu(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds of every node so far, by ``role:port``."""
    return {f"{cluster.role(n)}:{n.port}": cpu_seconds(n.proc.pid) for n in cluster.alive()}


def drain(cluster: LocalCluster, bundle: Path, shards: int, *, workers: int, gateways: int, backlog: int,
          seconds: float, logs: Path) -> dict:
    """Entries/s of ``workers`` worker processes on streams pre-filled over ``shards`` shards per task."""
    from models.bundle import read_manifest

    manifest = read_manifest(bundle)
    token = secrets.token_hex(3)
    names = Names(f"cl-{token}")
    homes = [f"home{i}" for i in range(gateways)]
    client = cluster.client()
    streams = _messages(manifest, names, homes, shards, backlog)
    f0 = _redis_cpu(cluster)
    _fill(client, streams)  # the gateways' side: one XADD per entry, pipelined
    f1 = _redis_cpu(cluster)
    fill_master_cpu = sum(f1[k] - f0[k] for k in f0 if k.startswith("master"))
    masters = {cluster.master_of(s).port for s in streams}
    procs = [Service("worker", ["--redis", cluster.url, "--bundle", str(bundle), "--prefix", names.prefix,
                                "--name", f"c{token}-{i}", "--allow-unsigned", "--threads", "1"],
                     logs / f"cluster-{shards}-{token}-{i}.log") for i in range(workers)]

    def done() -> int:
        return sum(client.xlen(names.results(h)) for h in homes)

    try:
        deadline = time.monotonic() + 240
        while done() < 200 * workers:  # started, groups made, networks warm
            if time.monotonic() > deadline or not all(p.alive() for p in procs):
                raise RuntimeError("the workers did not start:\n" + "\n".join(p.tail() for p in procs))
            time.sleep(0.1)
        time.sleep(1.0)
        c1, t1, w1, r1 = done(), time.monotonic(), [p.cpu_s() for p in procs], _redis_cpu(cluster)
        time.sleep(seconds)
        c2, t2, w2, r2 = done(), time.monotonic(), [p.cpu_s() for p in procs], _redis_cpu(cluster)
    finally:
        for p in procs:
            p.stop()
    n, window = c2 - c1, t2 - t1
    redis_cpu = {k: r2[k] - r1[k] for k in r1}
    master_cpu = sum(v for k, v in redis_cpu.items() if k.startswith("master"))
    out = {"shards": shards, "streams": len(streams), "masters_holding_them": len(masters), "per_s": n / window,
           "entries": n, "window_s": window, "backlogged": c2 < backlog,
           "worker_cpu_fraction": [round((b - a) / window, 3) for a, b in zip(w1, w2)],
           "worker_cpu_s_per_entry": sum(b - a for a, b in zip(w1, w2)) / max(n, 1),
           "redis_cpu_fraction": {k: round(v / window, 3) for k, v in redis_cpu.items()},
           "master_cpu_s_per_entry": master_cpu / max(n, 1),
           "fill_master_cpu_s_per_entry": fill_master_cpu / backlog,
           "replica_cpu_s_per_entry": (sum(redis_cpu.values()) - master_cpu) / max(n, 1)}
    log.info("[cluster] %d shard(s) over %d master(s): %.0f entries/s", shards, len(masters), out["per_s"])
    return out


def on_paper(runs: dict) -> list[dict]:
    """Homes one cluster of N masters serves, at the measured master and worker CPU per entry (3 shards)."""
    r = runs["3"]
    # an entry costs the masters its XADD (the gateway's side) and then the workers' side
    per_core = 1.0 / max(r["master_cpu_s_per_entry"] + r["fill_master_cpu_s_per_entry"], 1e-9)
    rows = []
    for masters in MASTERS_ON_PAPER:
        for rate in HOME_RATES:
            homes = masters * per_core / rate
            rows.append({"masters": masters, "home_inputs_per_s": rate, "entries_per_s": masters * per_core,
                         "homes": int(homes), "worker_cores": homes * rate * r["worker_cpu_s_per_entry"]})
    return rows


def markdown(result: dict) -> str:
    lines = header("privedge on a local Redis Cluster: worker throughput by shards", result["machine"],
                   result["settings"])
    lines += table_head("shards", "masters holding them", "entries/s", "ratio to 1 shard", "worker CPU (each)",
                        "worker CPU ms / entry", "master CPU µs / entry (XADD + worker side)",
                        "replica CPU µs / entry",
                        "each redis-server's CPU")
    base = result["runs"]["1"]["per_s"]
    for key, r in result["runs"].items():
        flag = "" if r["backlogged"] else " (backlog ran out)"
        lines.append(f"| {key}{flag} | {r['masters_holding_them']} | {r['per_s']:.0f} | {r['per_s'] / base:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in r['worker_cpu_fraction'])} | "
                     f"{r['worker_cpu_s_per_entry'] * 1e3:.3f} | {r['fill_master_cpu_s_per_entry'] * 1e6:.1f} + "
                     f"{r['master_cpu_s_per_entry'] * 1e6:.1f} | "
                     f"{r['replica_cpu_s_per_entry'] * 1e6:.1f} | "
                     f"{', '.join(f'{k} {v:.2f}' for k, v in sorted(r['redis_cpu_fraction'].items()))} |")
    lines += ["", "CPU is the fraction of one core over the window. Capacity on paper, at the 3-shard run's CPU "
                  "per entry (the shards spread evenly over the masters):", "",
              *table_head("masters", "inputs/s per home", "entries/s", "homes", "worker cores")]
    for row in result["on_paper"]:
        lines.append(f"| {row['masters']} | {row['home_inputs_per_s']:g} | {row['entries_per_s']:.0f} | "
                     f"{row['homes']} | {row['worker_cores']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bundle", type=Path, help="bundle the workers serve (default: an untrained image bundle)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gateways", type=int, default=4, help="homes whose streams are pre-filled")
    p.add_argument("--backlog", type=int, default=60_000, help="entries pre-filled per run")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    p.add_argument("--replicas", type=int, default=1, help="replicas per master")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="privedge-cluster-bench-"))
    bundle = a.bundle
    if bundle is None:
        from models.bundle import make_untrained_bundle

        bundle = work / "bundle"
        make_untrained_bundle(bundle, "image")
    settings = {"workers": a.workers, "gateways": a.gateways, "backlog": a.backlog, "seconds": a.seconds,
                "masters": 3, "replicas": a.replicas, "bundle": str(a.bundle or "untrained image (unsigned)"),
                "worker_threads": 1}
    info = machine()
    print(setup_lines(info, settings), flush=True)
    with redis_cluster(work / "cluster", masters=3, replicas=a.replicas) as cluster:
        runs = {str(s): drain(cluster, bundle, s, workers=a.workers, gateways=a.gateways, backlog=a.backlog,
                              seconds=a.seconds, logs=work / "logs") for s in (1, 3)}
    result = {"machine": info, "settings": settings, "runs": runs,
              "ratio_3_to_1": runs["3"]["per_s"] / max(runs["1"]["per_s"], 1e-9), "on_paper": on_paper(runs),
              "single_redis_core_per_s": SINGLE_REDIS_CORE_PER_S}
    (a.out / "cluster.json").write_text(json.dumps(result, indent=2))
    (a.out / "cluster.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
