"""Worker scaling: inferences/s of 1 and of 2 ``privedge worker`` processes when the cloud side is the
bottleneck (issue 7).

The stream is pre-filled with far more messages than the workers can finish in the measured window,
so they never wait for input; the rate is the growth of the results stream over that window. Two modes:
``split`` (FeatureMessages made by the bundle's own extractor, the analyzer runs per message) and, for
images, ``cloud_only`` (MediaMessages, the whole network per message: a heavier analyzer).
"""
from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import redis

from bench.baselines import CLOUD_PROCESS
from bench.loadgen import Inputs, load_inputs
from bench.procs import Service
from bench.report import table_head
from schemas.features import FeatureMessage
from schemas.media import ImageFrame
from schemas.names import Names
from schemas.upload import MediaMessage

log = logging.getLogger(__name__)

WORKER_COUNTS = (1, 2)
BACKLOG = {"split": 40_000, "cloud_only": 8_000}
"""Messages pre-filled per measurement: more than 2 workers finish in the window on this class of machine."""


def _messages(bundle: Path, inputs: Inputs, mode: str, names: Names, gateway: str,
              n: int) -> tuple[str, list[bytes]]:
    """(stream, ``n`` encoded messages) for one measurement, cycling over the inputs."""
    from models.bundle import load_extractor, read_manifest

    manifest = read_manifest(bundle)
    reply = names.results(gateway)
    now = time.time()
    if mode == "split":
        ext = load_extractor(bundle)
        feats = ext.extract_batch([ext.preprocess(r) for r in inputs.raws])  # (len(inputs), *feature_shape)
        msgs = [FeatureMessage.from_array(feats[i % len(feats)], gateway=gateway, device="scale", seq=i, ts=now,
                                          ts_sent=now, task=manifest["task"], model=manifest["model"],
                                          reply=reply).encode() for i in range(n)]
        return names.features(manifest["task"], gateway), msgs
    frames = [ImageFrame(device="scale", seq=i, ts=now, **inputs.frames[i % len(inputs.frames)]) for i in range(n)]
    msgs = [MediaMessage.wrap(f, gateway=gateway, ts_sent=now, task=manifest["task"], model=manifest["model"],
                              reply=reply).encode() for f in frames]
    return names.media(manifest["task"], gateway), msgs


def _fill(client: redis.Redis, stream: str, msgs: list[bytes]) -> None:
    for i in range(0, len(msgs), 1000):
        pipe = client.pipeline(transaction=False)
        for m in msgs[i:i + 1000]:
            pipe.xadd(stream, {"m": m})
        pipe.execute()


def _wait(pred, timeout: float, what: str, workers: list[Service]) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker exited during {what}:\n{w.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def drain_rate(redis_url: str, bundle: Path, inputs: Inputs, mode: str, workers: int, seconds: float,
               logs: Path, backlog: int | None = None) -> dict:
    """Inferences/s of ``workers`` worker processes on a pre-filled stream, and their CPU per inference."""
    token = secrets.token_hex(3)
    prefix, gateway = f"scale-{token}", f"scale-{token}"
    client = redis.Redis.from_url(redis_url)
    reply = Names(prefix).results(gateway)
    n = backlog or BACKLOG[mode]
    stream, msgs = _messages(bundle, inputs, mode, Names(prefix), gateway, n + 64 * workers)
    procs = [Service("worker", ["--redis", redis_url, "--bundle", str(bundle), "--prefix", prefix,
                                "--name", f"s{token}-{i}"], logs / f"scale-{mode}-{workers}-{token}-{i}.log",
                     module=CLOUD_PROCESS[mode])
             for i in range(workers)]
    try:
        # A consumer shows in XINFO only once it has read something: wait for each worker's start-up line.
        _wait(lambda: all("consuming" in p.tail(50) for p in procs), 240, "the workers to start", procs)
        # Warm-up one message at a time, so that each blocked worker takes some and runs its network once.
        for m in msgs[:64 * workers]:
            client.xadd(stream, {"m": m})
            time.sleep(0.01)
        _wait(lambda: client.xlen(reply) >= 64 * workers, 240, "the warm-up results", procs)
        _fill(client, stream, msgs[64 * workers:])
        time.sleep(min(1.0, seconds / 5))  # let every worker get going on the backlog
        c1, t1, cpu1 = client.xlen(reply), time.monotonic(), sum(p.cpu_s() for p in procs)
        time.sleep(seconds)
        c2, t2, cpu2 = client.xlen(reply), time.monotonic(), sum(p.cpu_s() for p in procs)
        dead = sum(client.xlen(k) for k in client.scan_iter(match=f"{prefix}:dead:*"))
    finally:
        for p in procs:
            p.stop()
    done = c2 - c1
    out = {"per_s": done / (t2 - t1), "results": done, "window_s": t2 - t1,
           "worker_cpu_s_per_inference": (cpu2 - cpu1) / max(done, 1), "dead_letters": dead,
           "backlogged": c2 < len(msgs)}
    log.info("[scaling %s %s] %d worker(s): %.1f inferences/s%s", inputs.modality, mode, workers, out["per_s"],
             "" if out["backlogged"] else " (backlog ran out: a lower bound)")
    return out


def worker_scaling(stack, bundles: dict[str, Path], seconds: float, inputs: dict[str, Inputs] | None = None) -> dict:
    """{modality: {mode: {"1": {...}, "2": {...}, "speedup": x}}} for split (and cloud_only on images)."""
    out: dict = {}
    for modality, bundle in bundles.items():
        ins = (inputs or {}).get(modality) or load_inputs(modality, 16, None)
        modes = ("split", "cloud_only") if modality == "image" else ("split",)
        out[modality] = {}
        for mode in modes:
            runs = {str(k): drain_rate(stack.redis.url, bundle, ins, mode, k, seconds, stack.logs)
                    for k in WORKER_COUNTS}
            out[modality][mode] = {**runs, "speedup": runs["2"]["per_s"] / max(runs["1"]["per_s"], 1e-9)}
    return out


def scaling_markdown(scaling: dict) -> list[str]:
    """Markdown lines of the worker-scaling table."""
    lines = ["## Worker scaling (pre-filled stream, cloud side the bottleneck)", "",
             *table_head("modality", "mode", "1 worker /s", "2 workers /s", "speedup",
                         "worker CPU ms / inference (1, 2)")]
    for modality, modes in scaling.items():
        for mode, r in modes.items():
            flag = "" if r["1"]["backlogged"] and r["2"]["backlogged"] else " (backlog ran out)"
            lines.append(f"| {modality} | {mode}{flag} | {r['1']['per_s']:.1f} | {r['2']['per_s']:.1f} | "
                         f"{r['speedup']:.2f}x | {r['1']['worker_cpu_s_per_inference'] * 1e3:.2f}, "
                         f"{r['2']['worker_cpu_s_per_inference'] * 1e3:.2f} |")
    return lines + [""]
