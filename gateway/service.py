"""``privedge gateway``: the home gateway service, and :class:`Gateway` for running it in-process.

Start-up order matters: bundles are loaded and the model warmed up (ONNX Runtime or torch, the speech front end) before the MQTT
session is opened, because with a persistent session the broker starts delivering as soon as we connect.
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

import numpy as np

from gateway.config import SECRET_FIELDS, ConfigError, GatewaySettings, load_settings
from gateway.extraction import ExtractionLoop
from gateway.intake import Intake, IntakeError
from gateway.metrics import Metrics, serve_prometheus
from gateway.results import STOP_GRACE_S, ResultsRelay
from gateway.upstream import Upstream, UpstreamRefused, safe_url, connect_redis, open_spool
from schemas import ErrorReport, Names, SchemaError
from schemas.names import check_device

log = logging.getLogger(__name__)

KIND_OF_MODALITY = {"image": "image", "speech": "audio"}
"""Bundle modality -> the sensor topic kind it serves."""


class GatewayError(RuntimeError):
    """The gateway cannot run with these settings or bundles."""


def load_models(settings: GatewaySettings) -> dict[str, tuple[object, dict]]:
    """kind -> (model, manifest) for each bundle; the model is an Extractor (split), FullModel
    (local_only) or None (cloud_only: only the manifest is read). analyzer.pt is read in local_only only."""
    from models.bundle import BundleError, load_extractor, load_full, read_manifest
    from models.signing import SignatureError, check_bundle

    out: dict[str, tuple[object, dict]] = {}
    serve = {"runtime": settings.runtime, "threads": settings.torch_threads}
    part = "full" if settings.mode == "local_only" else "home"  # a home never reads analyzer.*
    for d in settings.bundles:
        try:
            # The provider's signature first: nothing is unpickled or run from an unauthenticated bundle.
            check_bundle(d, key=settings.bundle_key, allow_unsigned=settings.allow_unsigned, part=part)
            if settings.mode == "split":
                model = load_extractor(d, **serve, shift_semitones=settings.pitch_shift_range)
                manifest = model.manifest
            elif settings.mode == "local_only":
                model = load_full(d, **serve)
                manifest = model.manifest
            else:
                model, manifest = None, read_manifest(d)
        except (BundleError, SignatureError, OSError, ValueError, KeyError) as e:
            raise GatewayError(f"cannot load bundle {d}: {e}") from e
        kind = KIND_OF_MODALITY.get(manifest.get("modality"))
        if kind is None:
            raise GatewayError(f"bundle {d}: unknown modality {manifest.get('modality')!r}")
        if kind in out:
            raise GatewayError(f"two bundles serve {manifest['modality']} inputs ({d} and "
                               f"{out[kind][1]['model']}): give at most one per modality")
        out[kind] = (model, manifest)
        log.info("bundle %s: %s model %s serves %s topics on %s", d, settings.mode, manifest["model"], kind,
                 getattr(model, "runtime", "no network"))
    if not out:
        raise GatewayError("no bundle given (--bundle DIR)")
    return out


def warm_up(model: object, kind: str) -> None:
    """One dummy inference, so that the runtime and the speech front end are warm before the first real input."""
    raw = np.zeros((64, 64), np.uint8) if kind == "image" else (np.zeros(4000, np.float32), 8000)
    x = model.preprocess(raw)
    (model.extract_batch if hasattr(model, "extract_batch") else model.predict_batch)([x])


class Gateway:
    """The gateway service: ``start()`` (returns once serving), ``stop()`` (drains), ``wait()``."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.s = settings
        self.names = Names(settings.prefix)
        self.metrics = Metrics()
        self.loops: list[ExtractionLoop] = []
        self.intake: Intake | None = None
        self.relay: ResultsRelay | None = None
        self.redis = None
        self.upstream: Upstream | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stats_thread: threading.Thread | None = None
        self._metrics_server = None

    # lifecycle ------------------------------------------------------------------------------------
    def start(self) -> "Gateway":
        from models.onnx_runtime import limit_threads

        limit_threads(self.s.torch_threads)  # torch, ONNX Runtime and numpy's BLAS: one share of the cores
        models = load_models(self.s)
        if self.s.warm_up and self.s.mode != "cloud_only":
            t0 = time.perf_counter()
            for kind, (model, _) in models.items():
                warm_up(model, kind)
            log.info("warmed up in %.1f s", time.perf_counter() - t0)
        self.intake = Intake(self.s, self.names, self.metrics, tuple(models), self.report)
        upstream = None
        if self.s.mode != "local_only":
            self.redis = connect_redis(self.s)
            upstream = self.upstream = Upstream(self.s, self.redis, self.metrics, spool=open_spool(self.s),
                                                on_available=self._upstream_available)
            try:
                upstream.start()
            except UpstreamRefused as e:
                raise GatewayError(str(e)) from e
        for kind, (model, manifest) in models.items():
            self.loops.append(ExtractionLoop(kind, model, manifest, self.s, self.names, self.intake, upstream,
                                             self.metrics, self.report))
        for loop in self.loops:
            loop.start()
        if self.s.mode != "local_only":
            self.relay = ResultsRelay(self.s, self.names, self.redis, self.intake, self.metrics)
        if self.s.metrics_port is not None:
            self._metrics_server = serve_prometheus(self.metrics, self.s.id, self.s.metrics_port,
                                                    self.s.metrics_host)[0]
        try:
            self.intake.start()
        except IntakeError as e:
            self._stopped.set()
            for loop in self.loops:
                loop.drain(time.monotonic())
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
            raise GatewayError(str(e)) from e
        if self.relay is not None:
            self.relay.start()
        self._stats_thread = threading.Thread(target=self._stats_loop, name="gateway-stats", daemon=True)
        self._stats_thread.start()
        log.info("gateway %s serving %s in %s mode (batch %d, wait %.1f ms)", self.s.id,
                 "/".join(models), self.s.mode, self.s.batch, self.s.wait_ms)
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
                self._metrics_server.shutdown()
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
        """``http://HOST:PORT/metrics`` when the Prometheus endpoint runs (port 0 picks a free port)."""
        if self._metrics_server is None:
            return None
        return f"http://{self.s.metrics_host}:{self._metrics_server.server_port}/metrics"

    def stats_topic(self) -> str:
        """``{prefix}/gateway/{id}/stats``, where the JSON stats go."""
        return self.names.gateway_stats(self.s.id)

    def _upstream_available(self, ok: bool) -> None:
        # Nothing to switch: inputs are never dropped for want of room, only held (unacknowledged, within
        # the broker's in-flight window) until upstream takes them.
        self.metrics.set_gauge("upstream_available", 1.0 if ok else 0.0)

    def _publish_stats(self) -> None:
        snap = self.metrics.snapshot()
        snap["gateway"], snap["mode"] = self.s.id, self.s.mode
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
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privedge gateway", description=__doc__.splitlines()[0])
    p.add_argument("--broker", help="MQTT broker, mqtt://HOST:PORT")
    p.add_argument("--redis", help="Redis, redis://[USER:PASSWORD@]HOST:PORT[/DB]")
    p.add_argument("--bundle", dest="bundles", action="append", help="bundle directory (repeat per modality)")
    p.add_argument("--id", help="gateway name (MQTT client id privedge-gateway-ID)")
    p.add_argument("--bundle-key", help="the provider's public key file; bundles must be signed with it")
    p.add_argument("--allow-unsigned", action="store_const", const=True,
                   help="load unsigned or wrongly signed bundles with a warning (development only)")
    p.add_argument("--config", help="YAML or TOML settings file (flat keys named like the settings)")
    p.add_argument("--mode", choices=("split", "cloud_only", "local_only"))
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
    p.add_argument("--spool-dir", help="on-disk spool for while Redis is unreachable (default: none, hold)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    p.add_argument("--print-settings", action="store_true",
                   help="print the merged settings as JSON (secrets hidden) and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "log_level", "print_settings")}
    if flags["bundles"]:
        flags["bundles"] = tuple(str(Path(b)) for b in flags["bundles"])
    try:
        settings = load_settings(flags, config_file=args.config)
    except ConfigError as e:
        print(f"privedge gateway: {e}", file=sys.stderr)
        return 2
    if args.print_settings:
        shown = {k: ("***" if k in SECRET_FIELDS and v else v) for k, v in dataclasses.asdict(settings).items()}
        shown["redis"] = safe_url(settings.redis)
        print(json.dumps(shown, indent=2))
        return 0
    gateway = Gateway(settings)
    stop_requested = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        gateway.start()
    except GatewayError as e:
        print(f"privedge gateway: {e}", file=sys.stderr)
        return 1
    while not stop_requested.wait(0.5) and not gateway.wait(0):
        pass
    gateway.stop()
    return 1 if gateway.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
