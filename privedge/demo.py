"""``privedge demo``: the whole system on this machine, with live results and a closing summary.

    privedge demo [--duration SECONDS] [--summary-json FILE] [--bundle DIR ...] [--rate PER_S]
                  [--mic-rate PER_S] [--scenes N] [--workers N] [--train-size small|full] [--train-epochs N]

It starts mosquitto and redis-server on free loopback ports, finds the bundles in the cache or trains them
on the synthetic data (``privedge train`` with its default embedding), then starts a gateway, the workers
and a camera and a microphone sensor, each as a process of its own. The camera loops over ``--scenes``
640x480 scenes of two or three procedural faces on real photographs (:mod:`privedge.demo_scenes`), sent as
JPEG: the gateway's face stage finds and crops each face, and each face's result is shown on its own line
(frame, face index, box, label, score). Results are shown as they arrive.
After ``--duration`` seconds, or on Ctrl-C / SIGTERM, the sensors stop first, the results of everything
they sent are awaited (a second Ctrl-C skips this wait), then the gateway, the workers and the servers
stop. Everything it started is ended, whatever happens.

Every figure is measured: inputs and raw bytes as the broker delivered the sensors' messages, bytes to the
cloud as the entries of the Redis feature streams, latency as each result's ``latency_ms`` (capture to
the result published for home apps).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from broker import servers
from broker.redis_cluster import redis_cluster
from privedge import demo_scenes
from privedge.children import Child
from privedge.demo_bundles import (MODALITIES, BundleCacheError, DemoBundle, TrainingInterrupted, default_cache_dir,
                                   ensure_bundles, key_args, train_argv)
from privedge.demo_view import LiveView, Tally, result_line, status_text, summary_text
from privedge.demo_watch import Monitor, RedisTap
from schemas import Names

log = logging.getLogger(__name__)

GATEWAY_ID = "demo"
SENSORS = (("camera", "camera-1", "image"), ("mic", "mic-1", "speech"))
"""(sensor kind, device id, bundle modality it needs) of the demo's sensors."""


GATEWAY_FIGURES = ("received", "extracted", "published", "results_relayed", "rejected", "dropped")
"""Counters of the gateway's last stats message that the summary carries."""


class DemoError(RuntimeError):
    """A component did not start or died during the run."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privedge demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds the sensors publish (default %(default)s; 0 = until Ctrl-C)")
    p.add_argument("--summary-json", help="write the summary figures to this JSON file")
    p.add_argument("--bundle", action="append", default=[],
                   help="serve this bundle instead of the cached/trained ones (one per modality; repeat)")
    p.add_argument("--rate", type=float, default=2.0, help="camera frames per second (default %(default)s)")
    p.add_argument("--mic-rate", type=float, default=1.0, help="spoken digits per second (default %(default)s)")
    p.add_argument("--scenes", type=int, default=12,
                   help="distinct camera scenes, sent in a loop (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="cloud worker processes (default %(default)s)")
    p.add_argument("--train-size", choices=("small", "full"), default="small",
                   help="synthetic training set when a bundle is not cached (default %(default)s: minutes)")
    p.add_argument("--train-epochs", type=int, default=None,
                   help="epochs of every training stage (default: privedge train's own)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"where trained bundles are kept (default {default_cache_dir()})")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the servers' data and every process's log here (default: a temporary folder, "
                        "removed at the end unless something failed)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds to wait for the results of the last inputs (default %(default)s)")
    p.add_argument("--redis-cluster", type=int, default=0, metavar="N",
                   help="run a local Redis Cluster of N masters (at least 3), a replica each, instead of one "
                        "redis-server; the gateway spreads each task over N shards (default: one redis-server)")
    p.add_argument("--plain", action="store_true", help="plain lines, no status bar")
    return p


def python_cmd(command: str, *args: str) -> list[str]:
    """``privedge COMMAND ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "privedge.cli", command, *args]


class Demo:
    """One run: ``run()`` starts everything and returns the summary; ``close()`` stops everything."""

    def __init__(self, args: argparse.Namespace, workdir: Path, stop: threading.Event, view: LiveView) -> None:
        self.args = args
        self.workdir = workdir
        self.stop = stop
        self.hurry = threading.Event()
        self.view = view
        self.names = Names()
        self.tally = Tally()
        self.bundles: list[DemoBundle] = []
        self.servers: list = []  # broker.servers.LocalServer, broker.redis_cluster.LocalCluster
        self.sensors: list[Child] = []
        self.services: list[Child] = []  # gateway first, then the workers
        self.monitor: Monitor | None = None
        self.tap: RedisTap | None = None
        self.publish_s = 0.0
        self._dead_shown: Counter = Counter()  # reason -> dead letters shown so far

    # the run ------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Start everything, publish for the duration, wait for the last results (``close()`` stops it all)."""
        self.bundles = self._bundles()
        broker = servers.mosquitto(self.workdir / "mosquitto", persistence=False)
        self.servers.append(broker)
        shards = max(1, self.args.redis_cluster)
        if self.args.redis_cluster:
            redis = redis_cluster(self.workdir / "cluster", masters=self.args.redis_cluster, replicas=1)
            self.servers.append(redis)
            self.view.line(f"broker {broker.url} (pid {broker.proc.pid}), Redis Cluster of {redis.masters} masters "
                           f"and {len(redis.nodes) - redis.masters} replicas {redis.url}")
        else:
            redis = servers.redis(self.workdir / "redis")
            self.servers.append(redis)
            self.view.line(f"broker {broker.url} (pid {broker.proc.pid}), redis {redis.url} (pid {redis.proc.pid})")
        self.monitor = Monitor(broker.port, self.names, GATEWAY_ID, self.tally)
        tasks = sorted({b.manifest["task"] for b in self.bundles})
        self.tap = RedisTap(redis.url, [self.names.features(t, GATEWAY_ID, n) for t in tasks for n in range(shards)],
                            [self.names.dead(t, n) for t in tasks for n in range(shards)], self.tally).start()
        bundle_args = [*(a for b in self.bundles for a in ("--bundle", str(b.path))), *key_args(self.bundles)]
        self.services.append(Child("gateway", python_cmd(
            "gateway", "--broker", broker.url, "--redis", redis.url, *bundle_args, "--id", GATEWAY_ID,
            "--stats-interval-s", "1", "--shards", str(shards)), self.workdir).start())
        for i in range(1, self.args.workers + 1):
            self.services.append(Child(f"worker-{i}", python_cmd(
                "worker", "--redis", redis.url, *bundle_args, "--name", f"demo-worker-{i}"), self.workdir).start())
        self._wait_for_gateway()
        if self.stop.is_set():
            return
        served = {b.modality for b in self.bundles}
        for kind, device, modality in SENSORS:
            if modality not in served:
                self.view.line(f"no {modality} bundle: {device} stays off")
                continue
            rate = self.args.rate if kind == "camera" else self.args.mic_rate
            source = ["--source", "synthetic"]
            if kind == "camera":
                source = ["--source", str(self._scenes()), "--codec", demo_scenes.CODEC]
            self.sensors.append(Child(device, python_cmd(
                "sensor", kind, "--broker", broker.url, "--device", device, *source,
                "--rate", str(rate), "--loop"), self.workdir).start())
        pids = ", ".join(str(c.pid) for c in self.children)
        self.view.line(f"running: gateway, {self.args.workers} workers, sensors "
                       f"{', '.join(c.name for c in self.sensors)} (pids {pids})")
        self._publish_phase()
        self._drain_phase()

    @property
    def children(self) -> list[Child]:
        return [*self.services, *self.sensors]

    def _bundles(self) -> list[DemoBundle]:
        if self.args.bundle:
            return [DemoBundle.given(b) for b in self.args.bundle]
        cache = self.args.cache_dir or default_cache_dir()
        argvs = {m: train_argv(m, size=self.args.train_size, epochs=self.args.train_epochs, seed=self.args.seed)
                 for m in MODALITIES}

        def report(percents: dict, elapsed: float) -> None:
            done = ", ".join(f"{m} {'?' if p is None else p}%" for m, p in percents.items())
            self.view.status(f"training on synthetic data (first run only): {done}, {elapsed:.0f} s")

        bundles = ensure_bundles(cache, argvs, self.stop, log_dir=self.workdir, report=report)
        for b in bundles:
            how = f"trained in {b.train_s:.0f} s" if b.train_s is not None else "cached"
            self.view.line(f"{b.modality} bundle {how}: {b.path}")
        return bundles

    def _scenes(self) -> Path:
        """The camera's folder of scenes, made for this run."""
        folder = self.workdir / "scenes"
        made = demo_scenes.write_scenes(folder, self.args.scenes, self.args.seed)
        w, h = demo_scenes.SIZE
        self.view.line(f"camera scenes: {made['frames']} frames of {w}x{h} with {made['faces']} procedural "
                       f"faces on photographs ({folder})")
        return folder

    def _check_children(self) -> None:
        for child in self.children:
            rc = child.poll()
            if rc is not None:
                raise DemoError(f"{child.name} exited with status {rc}:\n{child.tail(1500)}")

    def _wait_for_gateway(self, timeout: float = 300.0) -> None:
        """The gateway announces itself online once its models are loaded and warmed up."""
        t0 = time.monotonic()
        while not self.monitor.gateway_online.wait(0.2):
            self._check_children()
            if self.stop.is_set():
                return
            if time.monotonic() - t0 > timeout:
                raise DemoError(f"the gateway did not come online within {timeout:.0f} s")
            self.view.status(f"starting gateway and workers (loading models): {time.monotonic() - t0:.0f} s")

    def _refresh(self, elapsed: float) -> None:
        while self.monitor.new_results:
            self.view.line(result_line(self.monitor.new_results.popleft()))
        while self.tap.new_dead:
            reason, detail = self.tap.new_dead.popleft()
            self._dead_shown[reason] += 1
            n = self._dead_shown[reason]
            if n == 1 or n % 100 == 0:  # the first of each reason, then now and then: not a line per input
                self.view.line(f"a worker dead-lettered an input ({n} so far): {reason}: {detail}")
        self.view.status(status_text(self.tally, elapsed))

    def _publish_phase(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            elapsed = time.monotonic() - t0
            if self.args.duration and elapsed >= self.args.duration:
                break
            self._check_children()
            self._refresh(elapsed)
            self.stop.wait(0.25)
        self.publish_s = time.monotonic() - t0

    def _drain_phase(self) -> None:
        """Stop the sensors (each flushes what it sent), then wait for the results of their inputs."""
        for child in self.sensors:
            child.signal(signal.SIGTERM)
        for child in self.sensors:
            child.stop()
        t0 = time.monotonic()
        stopping_already = self.stop.is_set()
        time.sleep(0.2)  # the broker's last deliveries to the monitor
        # A Ctrl-C now (or a second one) skips the wait.
        while not self.tally.answered() and not self.hurry.is_set() and (stopping_already or not self.stop.is_set()):
            if time.monotonic() - t0 > self.args.drain_timeout:
                log.warning("%d inputs still without a result after %.0f s", sum(self.tally.inputs.values())
                            - sum(self.tally.answered_inputs.values()), self.args.drain_timeout)
                break
            self._refresh(self.publish_s)
            self.hurry.wait(0.1)
        self._refresh(self.publish_s)

    # shutdown ---------------------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Stop everything in order (sensors, gateway and workers, observers, servers); the problems seen."""
        problems = []
        for group, timeout in ((self.sensors, 15.0), (self.services, self.args.drain_timeout + 15.0)):
            for child in group:
                child.signal(signal.SIGTERM)  # together: the gateway drains while the workers finish
            for child in group:
                rc = child.stop(5.0 if self.hurry.is_set() else timeout)
                if rc not in (0, None, -signal.SIGTERM):
                    problems.append(f"{child.name} exited with status {rc} (log {child.log_path})"
                                    + (f"; its log ends:\n{child.tail(3000)}" if rc == -signal.SIGKILL else ""))
        if self.tap is not None:
            try:
                self.tap.stop()  # the final count of what went up, after the gateway drained
            except Exception as e:  # noqa: BLE001 - shutdown goes on whatever the tap says
                problems.append(f"could not count the feature streams: {e}")
        if self.monitor is not None:
            self.monitor.close()
        for server in reversed(self.servers):
            server.stop()
        return problems


def _install_signals(demo_stop: threading.Event, hurry: threading.Event) -> None:
    def on_signal(signum, frame):
        # Set from another thread: set() in the handler can deadlock on the lock the main thread's wait() holds.
        threading.Thread(target=(hurry if demo_stop.is_set() else demo_stop).set, daemon=True).start()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal went away
        signal.signal(sig, on_signal)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1 or args.scenes < 1 or args.duration < 0 or args.drain_timeout < 0:
        parser.error("--workers and --scenes must be at least 1, --duration and --drain-timeout not negative")
    if args.redis_cluster and not 3 <= args.redis_cluster <= 100:
        parser.error("--redis-cluster takes 3 to 100 masters (Redis Cluster needs at least 3)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="privedge-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    view = LiveView(tty=False if args.plain else None)
    demo = Demo(args, workdir, stop, view)
    _install_signals(stop, demo.hurry)
    t0 = time.monotonic()
    problems, status = [], 0
    try:
        demo.run()
    except TrainingInterrupted as e:
        view.line(f"privedge demo: {e}")
        status = 130
    except (BundleCacheError, servers.ServerError, DemoError) as e:
        problems.append(str(e))
    finally:
        if demo.servers:
            view.status("stopping: sensors, gateway, workers, servers")
        problems += demo.close()
        view.close()
    if demo.servers:
        summary = demo.tally.summary()
        missing = summary["inputs"] - summary["answered"]
        if missing and not demo.hurry.is_set():  # a second Ctrl-C skipped the wait: then it is expected
            problems.append(f"{missing} of {summary['inputs']} inputs got no result")
        summary.update(publish_s=round(demo.publish_s, 1), wall_s=round(time.monotonic() - t0, 1),
                       interrupted=stop.is_set(), workers=args.workers,
                       rates={"camera": args.rate, "mic": args.mic_rate},
                       bundles=[{"modality": b.modality, "path": str(b.path), "key": b.key, "train_s": b.train_s}
                                for b in demo.bundles], problems=problems)
        if demo.monitor is not None and demo.monitor.gateway_stats:
            summary["gateway"] = {k: demo.monitor.gateway_stats.get(k) for k in GATEWAY_FIGURES}
        print(summary_text(summary, demo.publish_s), flush=True)
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    for p in problems:
        print(f"privedge demo: {p}", file=sys.stderr)
    if problems and any(workdir.iterdir()):
        print(f"privedge demo: logs kept in {workdir}", file=sys.stderr)
    elif args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else status
