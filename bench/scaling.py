"""Worker scaling: inferences/s of 1 and of 2 ``privedge worker`` processes when the cloud side is the
bottleneck (issue 7).

The stream is pre-filled so that the workers never wait for input; the rate is the growth of the results
stream over the measured window. How much to pre-fill is measured, not guessed: a short probe (one
worker, :data:`PROBE_S` seconds, on a generous backlog, doubled until the probe itself does not run out)
gives the single-worker rate R, and each phase of N workers gets ``MARGIN x N x R x (seconds + settle +
FILL_SLACK_S)`` messages: twice what N perfectly scaling workers would finish in the whole phase (a later
phase uses the higher per-worker rate of an earlier phase that did not run out, when there is one). A
phase whose workers still finished every message before its window ended is flagged
(``ran_out``; its rate is then a lower bound), and the output says what the backlog was sized from.

Two modes: ``split`` (messages as a gateway sends them, wire version 2, made by the bundle's own
extractor; the analyzer runs per message) and, for images, ``cloud_only`` (MediaMessages, the whole
network per message: a heavier analyzer).
"""
from __future__ import annotations

import logging
import math
import secrets
import time
from pathlib import Path

import redis

from bench.baselines import CLOUD_PROCESS
from bench.loadgen import Inputs, load_inputs
from bench.procs import Service
from bench.report import table_head
from schemas import compact
from schemas.features import FeatureMessage
from schemas.media import ImageFrame
from schemas.names import Names
from schemas.upload import MediaMessage

log = logging.getLogger(__name__)

WORKER_COUNTS = (1, 2)
BACKLOG = {"split": 40_000, "cloud_only": 8_000}
"""Messages pre-filled for the probe's first try (and for :func:`drain_rate` when not told)."""
MAX_BACKLOG = {"split": 2_000_000, "cloud_only": 100_000}
"""Most messages pre-filled for one phase (Redis memory: about 60 B per split entry, 4 KB per frame)."""
PROBE_S = 2.0
"""Length of the probe's window, seconds (at most the phases' own)."""
PROBE_TRIES = 4
"""Probes at most: the backlog doubles after each that ran out."""
MARGIN = 2.0
"""Backlog over what N workers scaling perfectly from the probe's rate would finish in a phase (a short
probe may see a slower rate than a full phase does: 0.74 x on speech here)."""
FILL_SLACK_S = 1.0
"""Seconds of consumption counted for the pre-fill itself (the workers start on it while it is written)."""
BATCH = 64
"""Messages a worker holds at once (its XREADGROUP COUNT): in hand, not waiting in the stream."""


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
        msgs = [compact.encode(FeatureMessage.from_array(feats[i % len(feats)], gateway=gateway, device="scale",
                                                         seq=i, ts=now, ts_sent=now, task=manifest["task"],
                                                         model=manifest["model"], reply=reply))
                for i in range(n)]
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
        time.sleep(settle_s(seconds))  # let every worker get going on the backlog
        c1, t1, cpu1 = client.xlen(reply), time.monotonic(), sum(p.cpu_s() for p in procs)
        time.sleep(seconds)
        c2, t2, cpu2 = client.xlen(reply), time.monotonic(), sum(p.cpu_s() for p in procs)
        dead = sum(client.xlen(k) for k in client.scan_iter(match=f"{prefix}:dead:*"))
    finally:
        for p in procs:
            p.stop()
    done = c2 - c1
    # Work was waiting all through the window only if, at its end, more was left than the workers held.
    backlogged = c2 + BATCH * workers < len(msgs)
    out = {"per_s": done / (t2 - t1), "results": done, "window_s": t2 - t1,
           "worker_cpu_s_per_inference": (cpu2 - cpu1) / max(done, 1), "dead_letters": dead,
           "backlog": n, "left_at_end": len(msgs) - c2, "backlogged": backlogged, "ran_out": not backlogged}
    log.info("[scaling %s %s] %d worker(s): %.1f inferences/s on %d messages%s", inputs.modality, mode, workers,
             out["per_s"], n, "" if backlogged else " (backlog ran out: a lower bound)")
    return out


def settle_s(seconds: float) -> float:
    """Pause between the pre-fill and the window, seconds: every worker gets going on the backlog."""
    return min(1.0, seconds / 5)


def sized_backlog(rate_per_s: float, workers: int, seconds: float, mode: str) -> int:
    """Messages for a phase of ``workers`` workers lasting ``seconds``, from the single-worker rate (see
    the module docstring), at most MAX_BACKLOG."""
    want = MARGIN * workers * rate_per_s * (seconds + settle_s(seconds) + FILL_SLACK_S)
    return int(min(MAX_BACKLOG[mode], max(1000, math.ceil(want))))


def probe_rate(redis_url: str, bundle: Path, inputs: Inputs, mode: str, seconds: float, logs: Path) -> dict:
    """The single-worker rate of a short drain: ``{"per_s", "seconds", "backlog", "tries", "ran_out"}``."""
    backlog, probe_s = BACKLOG[mode], min(PROBE_S, seconds)
    for tries in range(1, PROBE_TRIES + 1):
        r = drain_rate(redis_url, bundle, inputs, mode, 1, probe_s, logs, backlog=backlog)
        if not r["ran_out"] or tries == PROBE_TRIES or backlog >= MAX_BACKLOG[mode]:
            break
        backlog = min(MAX_BACKLOG[mode], max(2 * backlog, sized_backlog(r["per_s"], 1, probe_s, mode)))
    return {"per_s": r["per_s"], "seconds": r["window_s"], "backlog": r["backlog"], "tries": tries,
            "ran_out": r["ran_out"]}


def measure_scaling(redis_url: str, bundle: Path, inputs: Inputs, mode: str, seconds: float, logs: Path,
                    counts: tuple[int, ...] = WORKER_COUNTS) -> dict:
    """``{"probe": ..., "1": ..., "2": ..., "speedup": x, "sizing": text}``: a probe, then one phase of each
    worker count on a backlog sized from the probe's rate."""
    probe = probe_rate(redis_url, bundle, inputs, mode, seconds, logs)
    rate, runs = probe["per_s"], {}
    for k in counts:
        runs[str(k)] = drain_rate(redis_url, bundle, inputs, mode, k, seconds, logs,
                                  backlog=sized_backlog(rate, k, seconds, mode))
        runs[str(k)]["sized_from_per_s"] = rate
        if not runs[str(k)]["ran_out"]:  # a full phase measures the single-worker rate better than the probe
            rate = max(rate, runs[str(k)]["per_s"] / k)
    phase_s = seconds + settle_s(seconds) + FILL_SLACK_S
    out = {**runs, "probe": probe,
           "sizing": f"backlog sized from measured rate {probe['per_s']:.0f}/s for {seconds:g} s per phase: "
                     f"{MARGIN:g} x N workers x {probe['per_s']:.0f}/s x {phase_s:g} s (window, settling, fill), "
                     f"later phases from the highest single-worker rate measured before them"
                     + (" (the probe itself ran out: its rate is a lower bound)" if probe["ran_out"] else "")}
    if len(counts) > 1:
        out["speedup"] = runs[str(counts[-1])]["per_s"] / max(runs[str(counts[0])]["per_s"], 1e-9)
    return out


def worker_scaling(stack, bundles: dict[str, Path], seconds: float, inputs: dict[str, Inputs] | None = None) -> dict:
    """{modality: {mode: {"probe": ..., "1": {...}, "2": {...}, "speedup": x, "sizing": text}}} for split (and
    cloud_only on images): :func:`measure_scaling` of each."""
    out: dict = {}
    for modality, bundle in bundles.items():
        ins = (inputs or {}).get(modality) or load_inputs(modality, 16, None)
        modes = ("split", "cloud_only") if modality == "image" else ("split",)
        out[modality] = {}
        for mode in modes:
            out[modality][mode] = measure_scaling(stack.redis.url, bundle, ins, mode, seconds, stack.logs)
    return out


def scaling_markdown(scaling: dict) -> list[str]:
    """Markdown lines of the worker-scaling table."""
    lines = ["## Worker scaling (pre-filled stream, cloud side the bottleneck)", "",
             *table_head("modality", "mode", "1 worker /s", "2 workers /s", "speedup",
                         "worker CPU ms / inference (1, 2)", "backlog (1, 2)", "probe /s")]
    notes = []
    for modality, modes in scaling.items():
        for mode, r in modes.items():
            ran_out = [k for k in ("1", "2") if not r[k]["backlogged"]]
            flag = f" (backlog ran out: {', '.join(ran_out)} worker(s), a lower bound)" if ran_out else ""
            probe = r.get("probe", {}).get("per_s")
            lines.append(f"| {modality} | {mode}{flag} | {r['1']['per_s']:.1f} | {r['2']['per_s']:.1f} | "
                         f"{r['speedup']:.2f}x | {r['1']['worker_cpu_s_per_inference'] * 1e3:.2f}, "
                         f"{r['2']['worker_cpu_s_per_inference'] * 1e3:.2f} | "
                         f"{r['1'].get('backlog', '?')}, {r['2'].get('backlog', '?')} | "
                         f"{'?' if probe is None else f'{probe:.0f}'} |")
            if r.get("sizing"):
                notes.append(f"- {modality} {mode}: {r['sizing']}"
                             + ("; every phase still had work waiting at its end" if not ran_out else ""))
    return lines + [""] + notes + ([""] if notes else [])
