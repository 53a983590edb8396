"""``privedge worker``: one consumer in the ``analyzers`` group, features in, results out.

Each loop: XREADGROUP COUNT B BLOCK T over every stream of the served tasks (one per gateway and shard,
found by workers.streams every few seconds), group the batch by ``model``, run the network once per group,
then write every Result to its ``reply`` stream, every rejected entry to its shard's ``{p}:dead:{{task}:{NN}}``
and the XACKs.

On one Redis that is one XREADGROUP over every stream and one MULTI/EXEC for all the writes, so a result
and its ack go together. On a Redis Cluster, where a command or a transaction may touch one hash slot only,
the worker reads with one XREADGROUP per shard (:meth:`workers.streams.StreamSet.read`) and writes the
results before one MULTI/EXEC of dead letters and XACKs per shard, an order in which a crash between the
two only makes a redelivery that the gateway's deduplication absorbs (workers/batch_write.py).

Nothing one entry does may end the loop: decoding, the origin check, the model input, the network (per
model group) and the Result's encoding (per result) each catch any Exception, dead-letter the entry with
a reason, log it with its id and count it; :meth:`Worker.run` survives any Exception of a whole step
(logged, counted as ``loop_errors``, then a back-off). Should the loop thread die anyway (a
BaseException), :func:`main` notices and exits non-zero, so that a supervisor restarts the process
instead of leaving one that only logs stats.
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import socket
import threading
import time
from collections import defaultdict
from typing import Mapping

import redis

from common.health import HealthServer
from common.health import check as health_check
from common.backoff import Backoff
from common.tls import add_flags as add_tls_flags, certificate_refused
from common.top_k import top_k
from common.warm_up import freeze_start_up
from models.signing import SignatureError
from schemas.compact import Origin
from schemas.limits import DEFAULT_LIMITS
from schemas.names import FIELD, GROUP, Names
from schemas.results import Result
from workers.analysis import Analysis, FeatureAnalysis, Rejected, run_network
from workers.batch_write import BatchWriter
from workers.config import SettingsError, WorkerSettings, load_settings
from workers.metrics import WorkerMetrics
from workers.probes import worker_probes
from workers.stats import WorkerStats
from workers.streams import StreamSet, check_origin

log = logging.getLogger(__name__)

def default_name() -> str:
    """A consumer name unique across machines and restarts: hostname-pid-random."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Worker:
    """A consumer of the ``analyzers`` group; ``start()`` runs it in a thread, ``stop()`` ends it."""

    def __init__(self, settings: WorkerSettings, analysis: Analysis | None = None) -> None:
        self.settings = settings
        self.analysis: Analysis = analysis or FeatureAnalysis()
        self.names = Names(settings.prefix)
        self.name = settings.name or default_name()
        self.served = self.analysis.load(settings.bundles, settings.runtime, settings.threads,
                                         bundle_key=settings.bundle_key, allow_unsigned=settings.allow_unsigned)
        self.stats = WorkerStats()
        self.redis = settings.redis.client()
        self.metrics = WorkerMetrics(self.redis, lambda: list(self.streams))  # Prometheus (workers/metrics.py)
        self.stream_set = StreamSet(self.redis, self.names, self.analysis.stream_kind,
                                    {s.task for s in self.served.values()}, settings.max_streams,
                                    settings.trim_retention_s, settings.pinned_shards)
        self.writer = BatchWriter(self.redis, self.names, self.stream_set, self.name,
                                  reply_maxlen=settings.reply_maxlen, dead_maxlen=settings.dead_maxlen,
                                  wait_replicas=settings.wait_replicas, wait_timeout_ms=settings.wait_timeout_ms)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_claim = 0.0
        self._next_discover = 0.0
        self._next_trim = 0.0

    @property
    def streams(self) -> dict[str, str]:
        """The streams consumed now: key -> task."""
        return {key: found.task for key, found in self.stream_set.streams.items()}

    def ensure_groups(self) -> None:
        """Discover the streams of the served tasks and create the group on each new one."""
        self.stream_set.discover()
        self._next_discover = time.monotonic() + self.settings.discover_every_s

    def start(self) -> "Worker":
        from models.onnx_runtime import limit_threads

        limit_threads(self.settings.threads)  # torch, ONNX Runtime and numpy's BLAS: one share of the cores
        self.ensure_groups()
        self._thread = threading.Thread(target=self.run, name=f"worker-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, then return."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        """Whether the loop thread runs (False before start() and after it ended)."""
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        """The loop: steps until stop(); a failed step is logged, counted and retried after a pause
        (retry_initial_s doubling to retry_max_s, with jitter: common.backoff)."""
        log.info("worker %s consuming %s", self.name, ", ".join(self.streams) or "(no streams yet)")
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        while not self._stop.is_set():
            try:
                self.step()
                backoff.reset()
            except redis.RedisError as e:
                self.stats.add(redis_errors=1)
                delay = backoff.next()
                log.warning("redis round trip failed (%s); retrying in %.1f s", e, delay)
                self._stop.wait(delay)
                if isinstance(e, redis.ResponseError) and "NOGROUP" in str(e):
                    self._recover_groups()
            except Exception:  # a bug, not bad input: never let it end the loop
                self.stats.add(loop_errors=1)
                delay = backoff.next()
                log.exception("worker step failed; retrying in %.1f s", delay)
                self._stop.wait(delay)

    def _recover_groups(self) -> None:
        try:
            self.stream_set.forget_missing()
            self.ensure_groups()
        except redis.RedisError as e:
            log.warning("could not recreate the consumer groups (%s)", e)

    def step(self) -> int:
        """One read-analyze-write cycle; returns the number of entries handled."""
        t0 = time.perf_counter()
        now = time.monotonic()
        if now >= self._next_discover:
            self.ensure_groups()
        if now >= self._next_trim:
            self._next_trim = now + self.settings.trim_every_s
            self.stats.add(trimmed=self.stream_set.trim())
        entries = []
        if now >= self._next_claim:
            self._next_claim = now + self.settings.claim_every_s
            entries += self._reclaim()
        if not self.stream_set.streams:
            self._stop.wait(self.settings.block_ms / 1000)
            return 0
        entries += self.stream_set.read(self.name, self.settings.batch, self.settings.block_ms)
        self.stats.add(read_s=time.perf_counter() - t0)
        if entries:
            self.handle(entries)
        return len(entries)

    def _reclaim(self) -> list:
        """Entries idle longer than claim_idle_ms at a dead consumer; over max_deliveries -> dead."""
        out, dead = [], []
        streams = list(self.streams)
        pipe = self.redis.pipeline(transaction=False)  # one round trip however many homes there are
        for stream in streams:
            pipe.xautoclaim(stream, GROUP, self.name, self.settings.claim_idle_ms, start_id="0-0",
                            count=self.settings.batch)
        for stream, reply in zip(streams, pipe.execute()):
            claimed = [(eid, f) for eid, f in reply[1] if f]
            if not claimed:
                continue
            pend = self.redis.xpending_range(stream, GROUP, min=claimed[0][0], max=claimed[-1][0],
                                             count=len(claimed), consumername=self.name)
            times = {p["message_id"]: p["times_delivered"] for p in pend}
            for eid, fields in claimed:
                if times.get(eid, 0) > self.settings.max_deliveries:
                    dead.append((stream, eid, fields, Rejected("redelivered too often",
                                                               f"{times[eid]} deliveries")))
                else:
                    out.append((stream, eid, fields))
        self.stats.add(reclaimed=len(out) + len(dead))
        if dead:
            acks = defaultdict(list)
            for stream, eid, _, _ in dead:
                acks[stream].append(eid)
            self._write([], dead, acks)
        return out

    def _admit(self, stream: str, fields: dict):
        """One entry -> (message, Served, network input); Rejected with a reason when it is not analysable."""
        raw = fields.get(FIELD.encode())
        if raw is None:
            raise Rejected("undecodable: missing field", f"stream entry has no field {FIELD}")
        known = self.stream_set.streams.get(stream)
        if known is None:
            raise Rejected("unknown stream", stream)
        task, gateway = known.task, known.gateway
        msg = self.analysis.decode(raw, DEFAULT_LIMITS, Origin(gateway, task, self.names.results(gateway)))
        served = self.served.get(msg.model)
        if served is None:
            raise Rejected("unknown model", msg.model)
        if served.task != task:
            raise Rejected("task mismatch", f"model {msg.model} serves {served.task}, stream {stream}")
        check_origin(msg, gateway, self.names)
        return msg, served, self.analysis.model_input(msg, served)

    def handle(self, entries: list) -> None:
        """Analyze a batch of (stream, entry id, fields) and write results, dead letters and acks."""
        t0 = time.perf_counter()
        groups: dict[str, list] = defaultdict(list)
        dead, acks = [], defaultdict(list)
        for stream, eid, fields in entries:
            acks[stream].append(eid)
            try:
                msg, served, x = self._admit(stream, fields)
                groups[msg.model].append(((stream, eid, fields), msg, x))
            except Rejected as e:
                dead.append((stream, eid, fields, e))
            except Exception as e:  # a bug on one entry: that entry is dead, the batch goes on
                log.exception("entry %s of %s failed", _id(eid), stream)
                dead.append((stream, eid, fields, Rejected("worker error", f"{type(e).__name__}: {e}")))
        results = []
        for model, items in groups.items():
            served = self.served[model]
            try:
                probs = run_network(served, [x for _, _, x in items])
            except Exception as e:  # noqa: BLE001 - whatever the network raises, only this group fails
                log.exception("analysis of %d entries of model %s failed", len(items), model)
                dead += [(*entry, Rejected("analysis failed", f"{type(e).__name__}: {e}")) for entry, _, _ in items]
                continue
            done = time.time()
            for (entry, msg, _), row in zip(items, probs):
                try:
                    results.append((msg.reply, self._result(msg, served, row, done)))
                except Exception as e:  # noqa: BLE001 - e.g. non-finite scores: no Result may carry them
                    log.warning("no result for entry %s (%s): %s", _id(entry[1]), msg.id, e)
                    dead.append((*entry, Rejected("result not encodable", f"{type(e).__name__}: {e}")))
        self.stats.add(analyze_s=time.perf_counter() - t0, received=len(entries), batches=1)
        self.metrics.entries.inc(len(entries))
        self._write(results, dead, acks)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)

    def _result(self, msg, served, row, done: float) -> bytes:
        """The encoded Result of one input (raises if the scores cannot be written, e.g. NaN)."""
        best = top_k(row, served.labels)
        return Result(id=msg.id, task=served.task, model=served.model_id, label=best[0][0],
                      score=min(1.0, max(0.0, best[0][1])), scores=dict(best), ts=msg.ts, ts_done=done,
                      worker=self.name).encode()

    def _write(self, results: list, dead: list, acks: dict) -> None:
        """Encoded results to their reply streams, dead letters, then the XACKs (workers/batch_write.py)."""
        t0 = time.perf_counter()
        for stream, eid, _, err in dead:
            log.warning("dead-letter %s %s: %s", stream, _id(eid), err)
        short = self.writer.write(results, dead, acks)
        self.stats.add(results=len(results), dead=len(dead), write_s=time.perf_counter() - t0, wait_short=short)
        self.metrics.results.inc(len(results))
        for _, _, _, err in dead:
            self.metrics.dead.labels(err.reason).inc()


def _id(eid) -> str:
    return eid.decode() if isinstance(eid, bytes) else str(eid)


MODE_REMOVED = ("--mode was removed: a worker serves features only; the benchmark's cloud-only baseline is "
                "a process of its own, python -m bench.baselines.cloud_worker (privedge bench starts it)")


def build_parser(prog: str = "privedge worker", description: str | None = None) -> argparse.ArgumentParser:
    """The worker's flags (the benchmark's cloud-only worker takes the same); each defaults to None (not
    given), so that the environment, a config file and the settings' defaults apply below it
    (workers.config.load_settings)."""
    p = argparse.ArgumentParser(prog=prog, description=description or __doc__.splitlines()[0])
    p.add_argument("--config", help="YAML or TOML settings file (flat keys named like the settings; "
                                    "unknown keys are refused)")
    p.add_argument("--redis", help="redis://[USER:PASSWORD@]HOST:PORT[/DB] (default redis://127.0.0.1:6379, or "
                                   "PRIVEDGE_REDIS; password also from PRIVEDGE_REDIS_PASSWORD); a Redis Cluster: "
                                   "redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]")
    p.add_argument("--redis-password-file", help="file holding the Redis password")
    add_tls_flags(p, "redis", "Redis")
    p.add_argument("--bundle", dest="bundles", action="append",
                   help="bundle directory (repeatable; at least one, here or in the config file)")
    p.add_argument("--name", help="consumer name (PRIVEDGE_WORKER_NAME; default hostname-pid-random)")
    p.add_argument("--mode", help=argparse.SUPPRESS)  # removed: refused below, saying what replaces it
    p.add_argument("--prefix", help="key prefix (PRIVEDGE_PREFIX; default privedge)")
    p.add_argument("--batch", type=int, help="messages per XREADGROUP (default 64)")
    p.add_argument("--block-ms", type=int, help="XREADGROUP BLOCK, milliseconds (default 100)")
    p.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default 1)")
    p.add_argument("--runtime", choices=("auto", "onnx", "torch"),
                   help="network runtime (PRIVEDGE_RUNTIME; default auto: ONNX Runtime when the bundle carries "
                        "the .onnx files)")
    p.add_argument("--claim-idle-ms", type=int, help="pending entries idle this long are reclaimed (default 30000)")
    p.add_argument("--max-deliveries", type=int, help="deliveries before an entry is dead-lettered (default 5)")
    p.add_argument("--trim-every-s", type=float,
                   help="seconds between trims of the acknowledged entries of each stream (XTRIM MINID; default 5)")
    p.add_argument("--bundle-key",
                   help="the provider's public key file; bundles must be signed with it (PRIVEDGE_BUNDLE_KEY)")
    p.add_argument("--allow-unsigned", action="store_const", const=True,
                   help="load unsigned or wrongly signed bundles with a warning (development only; "
                        "PRIVEDGE_ALLOW_UNSIGNED)")
    p.add_argument("--shards", help="read only these shards of each task, e.g. 0,3 (default: every shard; "
                                    "schemas.names)")
    p.add_argument("--wait-replicas", type=int,
                   help="on a Redis Cluster: WAIT for this many replicas of the results before the XACKs (default 0)")
    p.add_argument("--health-port", type=int, help="serve /healthz, /readyz and /metrics on this port")
    p.add_argument("--health-host", help="address of that endpoint (default 127.0.0.1)")
    p.add_argument("--check", action="store_true",
                   help="exit 0 if the worker these settings describe answers ready on its health port, else 1")
    return p


def parse_args(argv: list[str], parser: argparse.ArgumentParser | None = None,
               env: Mapping[str, str] | None = None) -> WorkerSettings:
    """The settings of ``privedge worker ARGV``: flags > environment > ``--config`` file > defaults.
    Invalid settings end the program as a usage error does (exit status 2, the reason on stderr)."""
    p = parser or build_parser()
    a = p.parse_args(argv)
    if a.mode is not None:
        p.error(MODE_REMOVED)
    flags = {k: v for k, v in vars(a).items() if k not in ("config", "mode", "check")}
    try:
        return load_settings(flags, config_file=a.config, env=env)
    except SettingsError as e:
        p.error(str(e))


def main(argv: list[str] | None = None, analysis: Analysis | None = None,
         parser: argparse.ArgumentParser | None = None) -> int:
    """``privedge worker`` (features); the benchmark's cloud-only worker passes its own ``analysis``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = parser or build_parser()
    settings = parse_args(list(argv or []), parser)
    if parser.parse_args(list(argv or [])).check:  # as arq's --check: is that worker running and ready?
        if not settings.health_port:
            print(f"{parser.prog}: --check needs the worker's --health-port", file=sys.stderr)
            return 1
        return health_check(f"http://{settings.health_host}:{settings.health_port}")
    try:  # credentials first: a refused login should not wait for the models to load
        settings.redis.client().ping()
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as e:
        log.error("Redis refused the worker: %s", e)
        return 1
    except redis.RedisError as e:
        if certificate_refused(e):  # a settings problem: retrying would never succeed
            log.error("Redis's certificate is not trusted (redis_ca_file, the URL's host): %s", e)
            return 1
        log.warning("Redis not reachable yet (%s); the worker retries", e)
    try:
        worker = Worker(settings, analysis)
    except SignatureError as e:
        log.error("refusing to serve: %s", e)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # From another thread: done.set() in the handler itself can deadlock on the lock done.wait() holds.
        signal.signal(sig, lambda *_: threading.Thread(target=done.set, daemon=True).start())
    try:
        worker.start()
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as e:
        log.error("Redis refused worker %s: %s", worker.name, e)
        return 1
    log.info("froze %d start-up objects out of the garbage collector's full collections", freeze_start_up())
    health = None
    if settings.health_port is not None:
        health = HealthServer(worker_probes(worker), worker.metrics.registry, host=settings.health_host,
                              port=settings.health_port).start()
    next_stats = time.monotonic() + worker.settings.stats_every_s
    while not done.wait(0.5):
        if not worker.alive():  # a supervisor restarts a process, not a thread
            log.error("worker %s: loop thread died; exiting so that it is restarted; stats %s",
                      worker.name, worker.stats.as_dict())
            return 3
        if time.monotonic() >= next_stats:
            next_stats += worker.settings.stats_every_s
            log.info("stats %s", worker.stats.as_dict())
    worker.stop()
    if health is not None:
        health.stop()
    log.info("stopped; stats %s", worker.stats.as_dict())
    return 0
