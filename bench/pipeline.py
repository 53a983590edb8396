"""The three-way pipeline benchmark (DESIGN.md, "Benchmarks"): split vs cloud_only vs local_only, one
run, same inputs, real mosquitto and redis-server, the gateway and the worker as ``privedge`` processes
(split) or as the baselines' own processes (``bench/baselines/``: cloud_only, local_only).

Per modality and mode:
- ``throughput_per_s``: results per second over a steady window at saturation. The load generator keeps
  ``window`` inferences outstanding, so the pipeline always has work waiting (offered load above capacity)
  while the backlog stays bounded; the first ``skip_s`` seconds are not counted.
- ``latency_p50_ms`` / ``latency_p99_ms``: result arrival on MQTT minus capture time, at a fixed offered
  load (open loop, paced) of ``latency_fraction`` x the split mode's saturation throughput, the same for
  all three modes.
- ``bytes_up_per_inference``: the bytes of every entry the gateway added to the Redis streams, field
  names and values as Redis stores them (read back with XRANGE: schemas.compact.entry_bytes), per entry;
  0 when nothing went up.
- ``gateway_cpu_s_per_inference``: the gateway process's utime + stime over the saturation window, per
  result in that window; ``gateway_peak_rss_mb``: its VmHWM at the end of the run.

An inference is a result: for camera scenes (the ``scenes`` input) one per face the gateway sent, or one
``no_face`` answer for a frame without; the details carry the inputs (frames) answered per second beside
it (``inputs_per_s``), and the runtime ceiling of scenes is the face stage's path per frame on one core.
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from bench.baselines import CLOUD_PROCESS, HOME_PROCESS
from bench.loadgen import Inputs, LoadGenerator, ResultListener
from bench.procs import Service
from broker import servers
from schemas.compact import entry_bytes

log = logging.getLogger(__name__)

MODES = ("split", "cloud_only", "local_only")
KEYS = ("throughput_per_s", "latency_p50_ms", "latency_p99_ms", "bytes_up_per_inference",
        "gateway_cpu_s_per_inference", "gateway_peak_rss_mb")
"""Figures of one (modality, mode) entry of bench.json, in DESIGN.md's order."""


class BenchError(RuntimeError):
    """A service under test did not start, died, or produced no results."""


@dataclass(frozen=True)
class PipelineSettings:
    """How each (modality, mode) run is driven. Durations in seconds."""

    seconds: float = 10.0
    """Length of each measured phase (saturation, then fixed load)."""
    window: int = 128
    """Inferences outstanding at saturation: 4 gateway batches, enough that no stage waits for input."""
    latency_fraction: float = 0.5
    """Fixed offered load for the latency figures, as a fraction of the split saturation throughput."""
    skip_s: float = 1.0
    """Start of the saturation phase left out of the count (the pipeline filling up)."""
    warm_inputs: int = 16
    """Inputs sent and awaited before measuring (the runtimes, the speech front end and the connections warm)."""
    start_timeout_s: float = 240.0
    """How long the services may take to start and answer the first input."""
    drain_timeout_s: float = 60.0
    """How long to wait for the results still outstanding after a phase."""
    gateway_args: tuple[str, ...] = ()
    """Extra ``privedge gateway`` flags, e.g. ``("--batch", "16")``."""
    worker_args: tuple[str, ...] = ()
    """Extra ``privedge worker`` flags."""


@dataclass
class Stack:
    """One broker and one Redis for the whole benchmark; each run has its own prefix and gateway id."""

    mqtt: servers.LocalServer
    redis: servers.LocalServer
    logs: Path

    @classmethod
    @contextlib.contextmanager
    def running(cls, logs: Path):
        with tempfile.TemporaryDirectory(prefix="privedge-bench-") as tmp:
            broker = servers.mosquitto(Path(tmp) / "mosquitto", persistence=False)
            try:
                store = servers.redis(Path(tmp) / "redis")
                try:
                    yield cls(broker, store, logs)
                finally:
                    store.stop()
            finally:
                broker.stop()


def upstream_bytes(client: redis.Redis, key_prefix: str) -> tuple[int, int]:
    """(total bytes, entries) of every features/media stream under ``key_prefix``: each entry's field names
    and values (schemas.compact.entry_bytes)."""
    total = entries = 0
    for pattern in (f"{key_prefix}:features:*", f"{key_prefix}:media:*"):
        for key in client.scan_iter(match=pattern):
            last = "-"
            while True:
                chunk = client.xrange(key, min=last, max="+", count=1000)
                if last != "-":
                    chunk = chunk[1:]  # XRANGE's min is inclusive: the previous page's last entry
                if not chunk:
                    break
                total += sum(entry_bytes(fields) for _, fields in chunk)
                entries += len(chunk)
                last = chunk[-1][0]
    return total, entries


def _await(gen: LoadGenerator, n: int, timeout: float, services: list[Service], what: str) -> bool:
    """Wait for ``n`` results of ``gen``'s device, failing fast when a service died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gen.wait_results(n, min(1.0, deadline - time.monotonic())):
            return True
        for s in services:
            if not s.alive():
                raise BenchError(f"{s.name} exited ({s.proc.returncode}) during {what}:\n{s.tail()}")
    return gen.received() >= n


def _warm_up(gen: LoadGenerator, s: PipelineSettings, services: list[Service]) -> None:
    """Send one input at a time until one comes back (inputs sent before the gateway subscribed are
    lost), then ``warm_inputs`` more and wait for them all."""
    deadline = time.monotonic() + s.start_timeout_s
    while gen.received() == 0:
        if time.monotonic() > deadline:
            raise BenchError(f"no result within {s.start_timeout_s:.0f} s of starting:\n"
                             + "\n".join(x.tail() for x in services))
        gen.send_one()
        _await(gen, 1, 1.0, services, "start-up")
    for _ in range(s.warm_inputs):
        gen.send_one()
    if not _await(gen, 1 + s.warm_inputs, s.start_timeout_s, services, "warm-up"):
        raise BenchError("warm-up inputs did not all come back")


STATS_INTERVAL_S = 1.0
"""How often the benchmark's gateways publish their stats: the stage breakdown is read from two of them."""


def stage_breakdown(start: dict | None, end: dict | None) -> dict[str, float] | None:
    """Milliseconds per inference in each gateway stage between two stats snapshots (gateway/metrics.py),
    per input extracted (the whole network for local_only; per message published for cloud_only, which
    extracts nothing): where the gateway's loop time went. Wall time inside the loop threads; the MQTT
    client's own thread (receive, acknowledge) is what the process's CPU shows beyond these. None
    without two snapshots."""
    if not start or not end:
        return None
    per = "extracted" if end["extracted"] > start["extracted"] else "published"
    n = end[per] - start[per]
    if n <= 0:
        return None
    out = {}
    for stage, e in end["stages"].items():
        s = start["stages"].get(stage, {"seconds": 0.0})
        out[stage] = round(1e3 * (e["seconds"] - s["seconds"]) / n, 4)
    return out


def run_mode(stack: Stack, bundle: Path, inputs: Inputs, mode: str, s: PipelineSettings, *,
             fixed_rate: float | None = None, latency: bool = True) -> tuple[dict, dict]:
    """Run one mode on one modality: saturation, then the fixed load ``fixed_rate`` (None: this run's
    saturation x ``latency_fraction``). Returns (the KEYS figures, details); ``latency=False`` skips
    the fixed load, and the latency figures are left out."""
    token = secrets.token_hex(3)
    name = f"{inputs.kind}-{mode}".replace("_", "-")
    prefix, gw_id = f"bench-{name}-{token}", f"bench-{token}"
    logs = stack.logs / f"{name}-{token}"
    listener = ResultListener(stack.mqtt.port, prefix, client_id=f"bench-listener-{token}")
    gateway = Service("gateway", ["--broker", stack.mqtt.url, "--redis", stack.redis.url, "--bundle", str(bundle),
                                  "--id", gw_id, "--prefix", prefix,
                                  "--stats-interval-s", str(STATS_INTERVAL_S), "--log-level", "WARNING",
                                  *s.gateway_args], logs / "gateway.log", module=HOME_PROCESS[mode])
    services = [gateway]
    if mode in CLOUD_PROCESS:
        services.append(Service("worker", ["--redis", stack.redis.url, "--bundle", str(bundle),
                                           "--prefix", prefix, "--name", f"w-{token}", *s.worker_args],
                                logs / "worker.log", module=CLOUD_PROCESS[mode]))
    gens: list[LoadGenerator] = []

    def generator(device: str) -> LoadGenerator:
        gens.append(LoadGenerator(inputs, stack.mqtt.url, prefix, device, listener))
        return gens[-1]

    try:
        if not listener.wait_online(gw_id, s.start_timeout_s):
            raise BenchError(f"gateway {gw_id} not online within {s.start_timeout_s:.0f} s:\n{gateway.tail()}")
        _warm_up(generator("warm"), s, services)
        log.info("[%s] warm; saturating for %.0f s with %d outstanding", name, s.seconds, s.window)

        sat, cpu, marks = generator("sat"), {}, {}

        def mark(k: str) -> None:
            cpu[k] = [x.cpu_s() for x in services]
            marks[k] = time.time()
        satur = sat.closed_loop(s.seconds, s.window, on_start=lambda: mark("start"), on_end=lambda: mark("end"),
                                skip_s=s.skip_s)
        if satur["results"] == 0:
            raise BenchError(f"[{name}] no results in the saturation window")
        spent = [b - a for a, b in zip(cpu["start"], cpu["end"])]
        _await(sat, sat.sent, s.drain_timeout_s, services, "the saturation drain")
        log.info("[%s] saturation: %.1f inferences/s (%d in %.1f s), gateway %.2f ms CPU each", name,
                 satur["throughput_per_s"], satur["results"], satur["window_s"], 1e3 * spent[0] / satur["results"])

        figures = {"throughput_per_s": satur["throughput_per_s"],
                   "gateway_cpu_s_per_inference": spent[0] / satur["results"]}
        details = {"saturation_results": satur["results"], "saturation_window_s": satur["window_s"],
                   "outstanding": s.window, "saturation_inputs_answered": satur["inputs_answered"],
                   "inputs_per_s": satur["inputs_per_s"]}
        if len(spent) > 1:
            details["worker_cpu_s_per_inference"] = spent[1] / satur["results"]
        wait = 3 * STATS_INTERVAL_S  # the stats just after each mark (the stages are a ratio over the same span)
        details["gateway_stages_ms_per_inference"] = stage_breakdown(
            *(listener.stats_after(gw_id, marks[k], wait) for k in ("start", "end")))
        if inputs.modality == "speech" and inputs.audio_seconds:
            details["gateway_real_time_factor"] = spent[0] / satur["results"] / inputs.audio_seconds
        if latency:
            _fixed_load(name, generator("lat"), gateway, services, s, figures, details,
                        fixed_rate if fixed_rate is not None else s.latency_fraction * satur["throughput_per_s"])
        up_bytes, up_entries = upstream_bytes(redis.Redis.from_url(stack.redis.url), prefix.replace("/", ":"))
        figures["bytes_up_per_inference"] = up_bytes / up_entries if up_entries else 0.0
        figures["gateway_peak_rss_mb"] = gateway.peak_rss_mb()
        details.update(upstream_entries=up_entries, upstream_bytes=up_bytes)
        return {k: figures[k] for k in KEYS if k in figures}, details
    finally:
        for g in gens:
            g.close()
        for x in services:
            x.stop()
        listener.close()


def _fixed_load(name: str, lat: LoadGenerator, gateway: Service, services: list[Service], s: PipelineSettings,
                figures: dict, details: dict, rate: float) -> None:
    """The open-loop phase at ``rate`` inferences/s: latency percentiles into ``figures``."""
    cpu0 = gateway.cpu_s()
    offered = lat.open_loop(rate, s.seconds)
    complete = _await(lat, lat.sent, s.drain_timeout_s, services, "the fixed-load drain")
    fixed_cpu = gateway.cpu_s() - cpu0
    arrivals = lat.snapshot()
    if not arrivals:
        raise BenchError(f"[{name}] no results at the fixed load")
    ms = np.array([(a - ts) * 1e3 for a, ts in arrivals])
    served_s = max(a for a, _ in arrivals) - min(ts for _, ts in arrivals)
    log.info("[%s] fixed load %.1f/s: p50 %.1f ms, p99 %.1f ms (%d/%d results)", name, rate,
             np.percentile(ms, 50), np.percentile(ms, 99), len(arrivals), lat.sent)
    figures.update(latency_p50_ms=float(np.percentile(ms, 50)), latency_p99_ms=float(np.percentile(ms, 99)))
    details.update({
        "fixed_load_per_s": rate, "fixed_load_offered_per_s": offered["offered_per_s"],
        "fixed_load_sent": lat.sent, "fixed_load_results": len(arrivals), "fixed_load_complete": complete,
        # Kept up with the fixed load when the results came at (nearly) the offered rate.
        "fixed_load_kept_up": bool(complete and len(arrivals) / max(served_s, 1e-9) >= 0.9 * rate),
        "gateway_cpu_s_per_inference_fixed_load": fixed_cpu / len(arrivals),
    })


def runtime_ceiling(bundle: Path, inputs: Inputs, seconds_each: float = 1.0,
                    batches: tuple[int, ...] = (1, 8, 32, 64)) -> tuple[float, dict]:
    """The extractor alone, one thread: the network's best (runtime, batch), then preprocessing plus that
    network on raw inputs (what a gateway must do per input, without any messaging). Returns
    (inferences/s, details)."""
    import inspect

    import torch

    from models import bundle as bundles

    torch.set_num_threads(1)
    runtimes = ["torch"]
    if "runtime" in inspect.signature(bundles.load_extractor).parameters:
        if bundles.read_manifest(bundle).get("onnx"):
            runtimes.append("onnx")
    network: dict[str, dict[int, float]] = {}
    best = (0.0, "torch", 1, None)
    for rt in runtimes:
        kw = {"runtime": rt, "threads": 1} if rt != "torch" else {}
        try:
            ext = bundles.load_extractor(bundle, **kw)
        except Exception as e:  # an optional runtime that cannot serve here is reported, not fatal
            log.warning("runtime %s unavailable for %s: %s", rt, bundle, e)
            continue
        xs = [ext.preprocess(r) for r in inputs.raws]
        network[rt] = {}
        for b in batches:
            batch = [xs[i % len(xs)] for i in range(b)]
            network[rt][b] = _rate(lambda: ext.extract_batch(batch), b, seconds_each)
            if network[rt][b] > best[0]:
                best = (network[rt][b], rt, b, ext)
    _, rt, b, ext = best
    raws = [inputs.raws[i % len(inputs.raws)] for i in range(b)]
    ceiling = _rate(lambda: ext.extract_batch([ext.preprocess(r) for r in raws]), b, seconds_each * 2)
    log.info("[%s] runtime ceiling %.1f/s (%s, batch %d; network alone %.1f/s)", inputs.modality, ceiling,
             rt, b, best[0])
    return ceiling, {"runtime": rt, "batch": b, "network_only_per_s": network}


def _rate(step, items: int, seconds: float) -> float:
    """Items per second of ``step()`` (which handles ``items`` inputs), after one warm call."""
    step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step()
        n += 1
    return n * items / (time.perf_counter() - t0)


def run_modality(stack: Stack, bundle: Path, inputs: Inputs, s: PipelineSettings,
                 modes: tuple[str, ...] = MODES) -> tuple[dict, dict]:
    """Every mode on one modality, split first (its saturation sets the fixed load of the others).
    Returns ({mode: figures, "runtime_ceiling_per_s": x}, {mode: details, "runtime_ceiling": ...})."""
    out, details, rate = {}, {}, None
    for mode in sorted(modes, key=MODES.index):
        out[mode], details[mode] = run_mode(stack, bundle, inputs, mode, s, fixed_rate=rate)
        if rate is None:
            rate = details[mode]["fixed_load_per_s"]
    if inputs.kind == "scenes":  # the face stage's path, frame by frame (bench.scene_speed)
        from bench.scene_speed import ceiling as scene_ceiling
        ceiling, details["runtime_ceiling"] = scene_ceiling(bundle, inputs.raws)
    else:
        ceiling, details["runtime_ceiling"] = runtime_ceiling(bundle, inputs, seconds_each=min(1.0, s.seconds / 5))
    out["runtime_ceiling_per_s"] = ceiling
    return out, details
