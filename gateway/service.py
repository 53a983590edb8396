"""``privedge gateway``: the home gateway service, and :class:`Gateway` for running it in-process.

Start-up order matters: bundles are loaded and the model warmed up (ONNX Runtime or torch, the speech front
end) before the MQTT session is opened, because with a persistent session the broker starts delivering as
soon as we connect.
Shutdown (stop(), SIGTERM, SIGINT): stop taking inputs, drain what the queues hold through the model and
upstream (bounded by ``drain_timeout_s``), stop the results loop, publish ``offline``, disconnect.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

from common.health import HealthServer, check as health_check
from common.tls import add_flags as add_tls_flags
from common.warm_up import freeze_start_up
from gateway.config import SECRET_FIELDS, ConfigError, GatewaySettings, load_settings
from gateway.extraction import ExtractionLoop, HandOn
from gateway.faces import FaceLedger, FaceStage, FaceStageError
from gateway.hand_on import FeaturesUpstream
from gateway.home_results import HomeResults, home_results
from gateway.homeassistant import Discovery
from gateway.probes import gateway_probes
from gateway.pseudonyms import Pseudonyms, from_settings as pseudonyms_from_settings
from gateway.intake import Intake, IntakeError
from gateway.metrics import Metrics, prometheus_registry
from gateway.results import STOP_GRACE_S, ResultsRelay
from gateway.upstream import Upstream, UpstreamRefused, safe_url, connect_redis, open_spool
from schemas import ErrorReport, Names, SchemaError
from schemas.names import check_device

log = logging.getLogger(__name__)

KIND_OF_MODALITY = {"image": "image", "speech": "audio"}
"""Bundle modality -> the sensor topic kind it serves."""


class GatewayError(RuntimeError):
    """The gateway cannot run with these settings or bundles."""


def open_extractor(d: str, settings: GatewaySettings) -> tuple[object, dict]:
    """The home half of bundle ``d``: its signature checked first (``part="home"``: a home never reads
    ``analyzer.*``), then its Extractor. Returns (extractor, manifest)."""
    from models.bundle import load_extractor
    from models.signing import check_bundle

    # The provider's signature first: nothing is unpickled or run from an unauthenticated bundle.
    check_bundle(d, key=settings.bundle_key, allow_unsigned=settings.allow_unsigned, part="home")
    model = load_extractor(d, runtime=settings.runtime, threads=settings.torch_threads,
                           shift_semitones=settings.pitch_shift_range)
    return model, model.manifest


class Serving(Protocol):
    """What a gateway process serves: how it opens a bundle, and what its extraction loops hand on.

    The gateway serves :class:`SplitServing` only; the benchmark's baselines (``bench/baselines/``) run
    this same service with servings of their own."""

    mode: str         # named in the stats
    uses_cloud: bool  # connect to Redis: an upstream for the hand-ons, and the results relayed back

    def open_bundle(self, d: str, settings: GatewaySettings) -> tuple[object | None, dict]:
        """(network or None, manifest) of bundle directory ``d``, its signature checked first."""

    def hand_on(self, gateway: "Gateway", kind: str, network: object | None, manifest: dict) -> HandOn:
        """The hand-on of the ``kind`` loop (the gateway's upstream is made, not yet started)."""


class SplitServing:
    """privedge: the extractor at home, its features to this home's features stream."""

    mode = "split"
    uses_cloud = True

    def open_bundle(self, d: str, settings: GatewaySettings) -> tuple[object, dict]:
        return open_extractor(d, settings)

    def hand_on(self, gateway: "Gateway", kind: str, network: object | None, manifest: dict) -> HandOn:
        streams = [gateway.names.features(manifest["task"], gateway.s.id, n) for n in range(gateway.s.shards)]
        return FeaturesUpstream(network, gateway.upstream, streams, pseudonyms=gateway.pseudonyms,
                                wire_version=gateway.s.wire_version)


def load_models(settings: GatewaySettings, serving: Serving) -> dict[str, tuple[object | None, dict]]:
    """kind -> (network, manifest) for each bundle, opened by ``serving``; at most one per modality."""
    from models.bundle import BundleError
    from models.signing import SignatureError

    out: dict[str, tuple[object | None, dict]] = {}
    for d in settings.bundles:
        try:
            model, manifest = serving.open_bundle(d, settings)
        except (BundleError, SignatureError, OSError, ValueError, KeyError) as e:
            raise GatewayError(f"cannot load bundle {d}: {e}") from e
        kind = KIND_OF_MODALITY.get(manifest.get("modality"))
        if kind is None:
            raise GatewayError(f"bundle {d}: unknown modality {manifest.get('modality')!r}")
        if kind in out:
            raise GatewayError(f"two bundles serve {manifest['modality']} inputs ({d} and "
                               f"{out[kind][1]['model']}): give at most one per modality")
        out[kind] = (model, manifest)
        log.info("bundle %s: %s model %s serves %s topics on %s", d, serving.mode, manifest["model"], kind,
                 getattr(model, "runtime", "no network"))
    if not out:
        raise GatewayError("no bundle given (--bundle DIR)")
    return out


class Gateway:
    """The gateway service: ``start()`` (returns once serving), ``stop()`` (drains), ``wait()``."""

    def __init__(self, settings: GatewaySettings, serving: Serving | None = None) -> None:
        self.s = settings
        self.serving: Serving = serving or SplitServing()
        self.names = Names(settings.prefix)
        self.metrics = Metrics(settings.id)
        self.loops: list[ExtractionLoop] = []
        self.intake: Intake | None = None
        self.relay: ResultsRelay | None = None
        self.face_ledger = FaceLedger()  # the boxes of the faces whose results are out (gateway/faces.py)
        self.redis = None
        self.upstream: Upstream | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stats_thread: threading.Thread | None = None
        self._metrics_server = None
        self.discovery: Discovery | None = None
        self.pseudonyms: Pseudonyms | None = None
        self.home: HomeResults | None = None

    # lifecycle ------------------------------------------------------------------------------------
    def start(self) -> "Gateway":
        from models.onnx_runtime import limit_threads

        limit_threads(self.s.torch_threads)  # torch, ONNX Runtime and numpy's BLAS: one share of the cores
        models = load_models(self.s, self.serving)
        self.intake = Intake(self.s, self.names, self.metrics, tuple(models), self.report)
        self.pseudonyms = pseudonyms_from_settings(self.s)
        self.home, self.discovery = home_results(self.s, self.names, self.intake,
                                                 {manifest["task"]: kind for kind, (_, manifest) in models.items()},
                                                 self.metrics)
        faces = {kind: self._face_stage(kind, model, manifest) for kind, (model, manifest) in models.items()}
        if self.serving.uses_cloud:
            self.redis = connect_redis(self.s)
            self.upstream = Upstream(self.s, self.redis, self.metrics, spool=open_spool(self.s),
                                     on_available=self._upstream_available)
            self._upstream_available(True)  # as the upstream assumes, until it says otherwise
        for kind, (model, manifest) in models.items():
            self.loops.append(ExtractionLoop(kind, manifest, self.s, self.names, self.intake, self.metrics,
                                             self.report, self.serving.hand_on(self, kind, model, manifest),
                                             faces=faces[kind]))
        if self.s.warm_up and any(loop.model is not None for loop in self.loops):
            t0 = time.perf_counter()
            for loop in self.loops:
                loop.warm_up()
            log.info("warmed up in %.1f s", time.perf_counter() - t0)
        if self.upstream is not None:
            try:
                self.upstream.start()
            except UpstreamRefused as e:
                raise GatewayError(str(e)) from e
        for loop in self.loops:
            loop.start()
        if self.serving.uses_cloud:
            self.relay = ResultsRelay(self.s, self.names, self.redis, self.intake, self.metrics, self.face_ledger,
                                      self.home, self.pseudonyms)
        if self.s.metrics_port is not None:
            self._metrics_server = HealthServer(gateway_probes(self), prometheus_registry(self.metrics),
                                                host=self.s.metrics_host, port=self.s.metrics_port).start()
        try:
            self.intake.start()
        except IntakeError as e:
            self._stopped.set()
            for loop in self.loops:
                loop.drain(time.monotonic())
            if self._metrics_server is not None:
                self._metrics_server.stop()
            raise GatewayError(str(e)) from e
        if self.discovery is not None:
            self.discovery.start()
        if self.relay is not None:
            self.relay.start()
        self._stats_thread = threading.Thread(target=self._stats_loop, name="gateway-stats", daemon=True)
        self._stats_thread.start()
        log.info("gateway %s serving %s in %s mode (batch %d, wait %.1f ms)", self.s.id,
                 "/".join(models), self.serving.mode, self.s.batch, self.s.wait_ms)
        return self

    def stop(self) -> None:
        """Stop taking inputs, drain them upstream, publish offline, disconnect. Idempotent."""
        with self._stop_lock:
            if self._stopped.is_set() or self.intake is None:
                self._stopped.set()
                return
            log.info("gateway %s stopping: draining %d held inputs", self.s.id,
                     sum(q.depth() for q in self.intake.queues.values()))
            self.intake.stop_accepting()
            deadline = time.monotonic() + self.s.drain_timeout_s
            for loop in self.loops:
                loop.drain(deadline)
            for loop in self.loops:
                loop.thread.join(max(0.1, deadline - time.monotonic() + 1.0))
                if loop.thread.is_alive():
                    log.error("%s loop still busy after the drain timeout", loop.kind)
            if self.relay is not None:
                self.relay.stop()
                self.relay.thread.join(self.s.results_block_ms / 1000 + STOP_GRACE_S + 1)
            if self.upstream is not None:
                self.upstream.close()
            self._stopped.set()
            self._publish_stats()
            self.intake.close()
            if self._metrics_server is not None:
                self._metrics_server.stop()
            if self.redis is not None:
                self.redis.close()
            log.info("gateway %s stopped: %s", self.s.id, json.dumps(self.metrics.snapshot()))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or ``timeout`` seconds pass (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def failed(self) -> BaseException | None:
        """The exception that ended a loop, if any (a bug: bad input never ends a loop)."""
        for t in [*self.loops, self.relay, self.upstream]:
            if t is not None and t.error is not None:
                return t.error
        return None

    # helpers ---------------------------------------------------------------------------------------
    def _face_stage(self, kind: str, model, manifest: dict) -> FaceStage | None:
        """The image loop's face stage (gateway/faces.py), when the settings ask for one, on the detector
        the bundle carries; split mode only (the comparison baselines serve frames whole)."""
        if kind != "image" or self.serving.mode != "split":
            return None
        try:
            return FaceStage.from_settings(self.s, manifest, metrics=self.metrics, ledger=self.face_ledger,
                                           intake=self.intake, names=self.names, on_result=self.home.publish,
                                           detector_path=getattr(model, "face_detector", None))
        except FaceStageError as e:
            raise GatewayError(str(e)) from e

    def report(self, device: str, seq: int | None, topic: str, reason: str, detail: str) -> None:
        """Count a rejected input (by reason, and by device) and publish ``{device, seq, reason, ...}`` on
        the errors topic (QoS 0)."""
        self.metrics.inc_label("rejected", reason)
        self.metrics.inc_label("rejected_by_device", _device_label(device))
        log.warning("rejected input device=%s seq=%s topic=%s: %s (%s)", device, seq, topic, reason, detail)
        report = ErrorReport(source=self.s.id, device=str(device)[:256], seq=seq, topic=topic[:512],
                             reason=reason[:256], detail=detail[:256], ts=time.time())
        body = report.to_wire()
        body.setdefault("seq", None)  # the contract's {device, seq, reason}: seq null when unreadable
        self.intake.publish(self.names.gateway_errors(self.s.id),
                            json.dumps(body, separators=(",", ":")).encode(), qos=0)

    @property
    def metrics_url(self) -> str | None:
        """``http://HOST:PORT/metrics`` when the HTTP endpoint runs (port 0 picks a free port)."""
        return None if self._metrics_server is None else self._metrics_server.url + "/metrics"

    @property
    def health_url(self) -> str | None:
        """``http://HOST:PORT`` of ``/healthz`` and ``/readyz`` (common.health), with the metrics."""
        return None if self._metrics_server is None else self._metrics_server.url

    def stats_topic(self) -> str:
        """``{prefix}/gateway/{id}/stats``, where the JSON stats go."""
        return self.names.gateway_stats(self.s.id)

    def _upstream_available(self, ok: bool) -> None:
        # Nothing to switch: inputs are never dropped for want of room, only held (unacknowledged, within
        # the broker's in-flight window) until upstream takes them.
        self.metrics.set_gauge("upstream_available", 1.0 if ok else 0.0)

    def _publish_stats(self) -> None:
        snap = self.metrics.snapshot()
        snap["gateway"], snap["mode"] = self.s.id, self.serving.mode
        snap["cloud_behind"] = bool(self.upstream is not None and self.upstream.behind)  # backlog over the bound
        self.intake.publish(self.stats_topic(), json.dumps(snap, separators=(",", ":")).encode(), qos=0)

    def _stats_loop(self) -> None:
        while not self._stopped.wait(self.s.stats_interval_s):
            self._publish_stats()
            err = self.failed()
            if err is not None:
                log.error("a gateway loop died (%s): stopping", err)
                threading.Thread(target=self.stop, daemon=True).start()
                return


def _device_label(device: object) -> str:
    """The device id as a metrics label; a malformed one (from a hostile topic name) is counted under one
    label, so that topic names cannot grow the metrics without bound."""
    try:
        return check_device(device)
    except SchemaError:
        return "(bad name)"


# command line -----------------------------------------------------------------------------------------
def build_parser(prog: str = "privedge gateway", description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__.splitlines()[0])
    p.add_argument("--broker", help="MQTT broker, mqtt://HOST:PORT (mqtts:// for TLS)")
    p.add_argument("--redis", help="Redis, redis://[USER:PASSWORD@]HOST:PORT[/DB] (rediss:// for TLS); a Redis "
                                   "Cluster: redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]")
    p.add_argument("--bundle", dest="bundles", action="append", help="bundle directory (repeat per modality)")
    p.add_argument("--id", help="gateway name (MQTT client id privedge-gateway-ID)")
    p.add_argument("--bundle-key", help="the provider's public key file; bundles must be signed with it")
    p.add_argument("--allow-unsigned", action="store_const", const=True,
                   help="load unsigned or wrongly signed bundles with a warning (development only)")
    p.add_argument("--config", help="YAML or TOML settings file (flat keys named like the settings)")
    p.add_argument("--mode", help=argparse.SUPPRESS)  # removed: refused by load_settings, saying why
    p.add_argument("--prefix", help="topic and key prefix (default privedge)")
    p.add_argument("--batch", type=int, help="largest micro-batch")
    p.add_argument("--wait-ms", type=float, help="longest micro-batch wait, milliseconds")
    p.add_argument("--receive-maximum", type=int,
                   help="unacknowledged MQTT messages the broker may send us: all the gateway holds")
    p.add_argument("--image-max-age-s", type=float,
                   help="camera frames older than this (seconds) are dropped and counted; audio never is")
    p.add_argument("--torch-threads", type=int, help="torch and ONNX Runtime threads in this process (default 1)")
    p.add_argument("--runtime", choices=("auto", "onnx", "torch"),
                   help="network runtime (default auto: ONNX Runtime when the bundle carries extractor.onnx)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--stats-interval-s", type=float, help="period of the JSON stats topic, seconds")
    p.add_argument("--mqtt-username", help="MQTT user (password: PRIVEDGE_MQTT_PASSWORD or --mqtt-password-file)")
    p.add_argument("--mqtt-password-file", help="file holding the MQTT password")
    p.add_argument("--redis-password-file", help="file holding the Redis password")
    add_tls_flags(p, "mqtt", "MQTT broker")
    add_tls_flags(p, "redis", "Redis")
    p.add_argument("--spool-dir", help="on-disk spool for while Redis is unreachable (default: none, hold)")
    p.add_argument("--shards", type=int, help="features streams (shards) per task, 1-100 (default 1)")
    p.add_argument("--redis-wait-replicas", type=int,
                   help="WAIT for this many replicas after each round trip of XADDs (default 0: no WAIT)")
    p.add_argument("--redis-wait-timeout-ms", type=int, help="longest such WAIT, milliseconds (default 100)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    p.add_argument("--print-settings", action="store_true",
                   help="print the merged settings as JSON (secrets hidden) and exit")
    p.add_argument("--check", action="store_true",
                   help="exit 0 if the gateway these settings describe answers ready on its metrics_port "
                        "(/readyz), else 1 (for healthchecks)")
    return p


def main(argv: list[str] | None = None, serving: Serving | None = None,
         parser: argparse.ArgumentParser | None = None) -> int:
    """``privedge gateway`` (the split serving); the benchmark's baselines pass their own ``serving``."""
    parser = parser or build_parser()
    prog = parser.prog
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "log_level", "print_settings", "check")}
    if flags["bundles"]:
        flags["bundles"] = tuple(str(Path(b)) for b in flags["bundles"])
    try:
        settings = load_settings(flags, config_file=args.config)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.print_settings:
        shown = {k: ("***" if k in SECRET_FIELDS and v else v) for k, v in dataclasses.asdict(settings).items()}
        shown["redis"] = safe_url(settings.redis)
        print(json.dumps(shown, indent=2))
        return 0
    if args.check:  # as arq's --check: is the gateway these settings describe running and ready?
        if not settings.metrics_port:
            print(f"{prog}: --check needs the gateway's metrics_port (its /readyz)", file=sys.stderr)
            return 1
        return health_check(f"http://{settings.metrics_host}:{settings.metrics_port}")
    gateway = Gateway(settings, serving)
    stop_requested = threading.Event()

    def on_signal(signum, frame):
        # Set the event from another thread: the handler runs in the main thread, possibly while that thread
        # holds the event's own lock inside stop_requested.wait(), and set() would then wait for it forever.
        log.info("signal %s: stopping", signal.Signals(signum).name)
        threading.Thread(target=stop_requested.set, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        gateway.start()
    except GatewayError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    log.info("froze %d start-up objects out of the garbage collector's full collections", freeze_start_up())
    while not stop_requested.wait(0.5) and not gateway.wait(0) and gateway.failed() is None:
        pass
    if gateway.failed() is not None:  # a loop thread died (a bug): stop and say so in the exit status
        log.error("a gateway thread failed: %r; stopping", gateway.failed())
    gateway.stop()
    return 1 if gateway.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
