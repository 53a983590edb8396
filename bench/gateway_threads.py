"""Where a real gateway spends its CPU, thread by thread, per inference.

An in-process gateway (split mode) and worker on their own mosquitto and redis-server; a client
publishes ``--count`` camera frames from ``--devices`` devices (QoS 1) and waits for every result. Each
thread's CPU seconds (user + system, from /proc via psutil) over the run, divided by the results, say
what paho's network thread, the extraction loop, the results relay and the rest cost per inference. The
gateway drops nothing (backpressure: the broker holds what it has not taken yet).

    python -m bench.gateway_threads --out DIR [--count N] [--batch B] [--wait-ms T] [--runtime onnx|torch]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil


def thread_cpu() -> dict[int, float]:
    """native thread id -> CPU seconds (user + system) of this process's threads."""
    return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}


def names_by_id() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def group(name: str) -> str:
    """Thread name -> what it is (paho names its loop thread ``paho-mqtt-client-{id}``)."""
    if name.startswith("paho-mqtt-client-privedge-gateway"):
        return "gateway paho network thread"
    if name.startswith("gateway-"):
        return name.replace("gateway-", "gateway ") + " loop"
    if name.startswith("worker-"):
        return "worker (not gateway)"
    if name.startswith("paho-mqtt-client-"):
        return "load generator / listener (not gateway)"
    return f"other: {name}"


def run(count: int, devices: int, batch: int, wait_ms: float, runtime: str, codec: str, data: Path) -> dict:
    from bench.runtime import real_or_random
    from gateway.config import GatewaySettings
    from gateway.service import Gateway
    from models import signing
    from models.bundle import make_untrained_bundle
    from broker import servers
    from schemas.media import ImageFrame
    from workers.config import RedisSettings, WorkerSettings
    from workers.service import Worker

    tmp = Path(tempfile.mkdtemp(prefix="privedge-threads-"))
    signing.local_provider(tmp)  # sign the bundle below; the gateway and worker settings pin the key
    make_untrained_bundle(tmp / "bundle", "image")
    images, source = real_or_random("image", 64, data)
    payloads = [ImageFrame.from_array(images[i % len(images)], device=f"cam{i % devices}", seq=i // devices,
                                      ts=time.time(), codec=codec).encode() for i in range(count)]
    broker, store = servers.mosquitto(tmp / "mosquitto"), servers.redis(tmp / "redis")
    gw = worker = None
    try:
        gw = Gateway(GatewaySettings(broker=broker.url, redis=store.url, bundles=(str(tmp / "bundle"),),
                                     id="bench", batch=batch, wait_ms=wait_ms, runtime=runtime,
                                     stats_interval_s=5.0)).start()
        worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(store.url), bundles=(tmp / "bundle",),
                                       runtime=runtime, block_ms=50)).start()
        done = threading.Event()
        got = [0]

        def on_result(client, userdata, msg):
            got[0] += 1
            if got[0] >= count:
                done.set()

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-threads")
        client.on_message = on_result
        client.max_inflight_messages_set(256)
        client.connect("127.0.0.1", broker.port)
        client.subscribe("privedge/+/result", qos=1)
        client.loop_start()
        time.sleep(0.3)
        cpu0, t0 = thread_cpu(), time.perf_counter()
        for i, p in enumerate(payloads):
            client.publish(f"privedge/cam{i % devices}/image", p, qos=1)
        finished = done.wait(max(60.0, count / 20))
        wall = time.perf_counter() - t0
        cpu1, names = thread_cpu(), names_by_id()
        client.loop_stop()
        client.disconnect()
    finally:
        if worker is not None:
            worker.stop()
        if gw is not None:
            gw.stop()
        broker.stop()
        store.stop()
    per: dict[str, float] = {}
    for tid, c in cpu1.items():
        per[group(names.get(tid, "main/unnamed"))] = per.get(group(names.get(tid, "main/unnamed")), 0.0) + \
            (c - cpu0.get(tid, 0.0))
    n = max(got[0], 1)
    gateway = {k: v / n * 1e3 for k, v in per.items() if k.startswith("gateway")}
    return {"results": got[0], "complete": finished, "wall_s": wall, "results_per_s_wall": got[0] / wall,
            "source": source, "gateway_cpu_ms_per_inference": gateway,
            "gateway_total_cpu_ms_per_inference": sum(gateway.values()),
            "other_cpu_ms_per_inference": {k: v / n * 1e3 for k, v in per.items() if not k.startswith("gateway")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_threads", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=2000, help="frames to send")
    p.add_argument("--devices", type=int, default=16)
    p.add_argument("--batch", type=int, action="append", help="gateway micro-batch (repeatable)")
    p.add_argument("--wait-ms", type=float, default=None, help="gateway micro-batch wait (default: the gateway's)")
    p.add_argument("--runtime", default="onnx", choices=("onnx", "torch"))
    p.add_argument("--codec", default="jpeg", choices=("jpeg", "png", "raw"))
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = p.parse_args(argv)
    from bench.report import header, machine, setup_lines, table_head
    from gateway.config import GatewaySettings
    from models.onnx_runtime import limit_threads

    limit_threads(1)
    wait_ms = GatewaySettings().wait_ms if args.wait_ms is None else args.wait_ms
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": {}}
    print(setup_lines(result["machine"], result["settings"]), flush=True)
    lines = [*header("privedge gateway CPU per inference, by thread", result["machine"], result["settings"]),
             *table_head("batch", "wait ms", "results", "results/s (wall)", "gateway thread: CPU ms / inference")]
    for batch in args.batch or [GatewaySettings().batch]:
        r = run(args.count, args.devices, batch, wait_ms, args.runtime, args.codec,
                None if args.data == "none" else Path(args.data))
        result["runs"][str(batch)] = r
        split = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["gateway_cpu_ms_per_inference"].items()))
        lines.append(f"| {batch} | {wait_ms} | {r['results']} | {r['results_per_s_wall']:.0f} | "
                     f"total {r['gateway_total_cpu_ms_per_inference']:.3f}: {split} |")
        print(lines[-1], flush=True)
    (out / "gateway_threads.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gateway_threads.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'gateway_threads.json'} and {out / 'gateway_threads.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
