"""Gateway counters, gauges and timings: JSON snapshots for the stats topic, Prometheus at scrape time.

One :class:`Metrics` per gateway (so several gateways in one process do not mix): plain counters, counters
with one label (reason, device), declared gauges, and stage timers (total seconds and count per stage:
``decode``, ``detect`` (the face stage), ``preprocess``, ``extract``, ``encode`` (the upstream
messages), ``publish`` (the Redis round trip), ``relay``). A prometheus_client collector
reads the same numbers when scraped, so there is one bookkeeping and no drift between the two views; the
counters and gauges stay hand-kept here (not prometheus_client's ``Counter``) because the JSON stats read
them back and their labels are bounded (``MAX_LABELS``). The end-to-end latency, which only Prometheus
shows, is prometheus_client's own :class:`~prometheus_client.Histogram`.

Prometheus names (``privedge_gateway_`` then the name; every family has a ``gateway`` label):

- each of ``COUNTERS`` and ``LABELLED`` as a counter, ``..._total``;
- each of ``GAUGES`` and ``KIND_GAUGES`` (those with a ``kind`` label, ``image`` or ``audio``) under its
  own name, units in the suffix (``_bytes``, ``_entries``);
- ``stage_seconds_total{stage}`` and ``stage_items_total{stage}``: time per item is their rates' ratio;
- ``result_latency_seconds{task}``: a histogram of capture (the sensor's ``ts``) to the result's
  publication at home;
- the process metrics (CPU, memory, open files).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

COUNTERS = {
    "received": "MQTT inputs taken in (image frames and audio chunks)",
    "extracted": "inputs run through the extractor (the whole network in the local-only baseline)",
    "published": "messages handed on upstream (feature or media messages added to Redis)",
    "results_relayed": "results published to MQTT result topics",
    "duplicates_dropped": "results dropped because their id was already relayed",
    "upstream_retries": "failed attempts to hand a batch on to Redis",
    "results_errors": "failed reads of the results stream",
    "spooled": "messages written to the on-disk spool while Redis was unreachable",
    "replayed": "spooled messages handed on to Redis once it was back",
    "duplicate_chunks": "audio chunks received twice (same utterance and seq): acknowledged and dropped",
    "spool_full": "batches the full spool could not take: their inputs were held at the broker until it had room",
    "cloud_behind_events": "times a stream's backlog went over stream_max_backlog (the gateway spooled or held)",
    "spool_write_errors": "spool appends that failed (full disk, I/O error): the batch was held instead",
    "wait_short": "round trips of XADDs fewer replicas had within redis_wait_timeout_ms than redis_wait_replicas",
    "faces_found": "faces the face stage found in camera frames, before the size and count bounds",
    "faces_skipped_small": "faces found smaller than min_face_px: not sent",
    "faces_over_max": "faces past a frame's max_faces largest: not sent",
    "frames_without_faces": "camera frames with no face to answer: nothing sent, a no_face result published",
}
LABELLED = {
    "rejected": ("reason", "inputs rejected, by reason"),
    "rejected_by_device": ("device", "inputs rejected, by device"),
    "dropped": ("device", "camera frames dropped as stale under sustained overload, by device"),
}
GAUGES = {
    "upstream_available": ("upstream_available", "1 while Redis takes the hand-ons, 0 while it does not"),
    "cloud_behind": ("cloud_behind", "1 while a stream's backlog is over stream_max_backlog (the gateway "
                                     "spools or holds), else 0"),
    "stream_backlog": ("stream_backlog_entries", "entries waiting in the longest of this gateway's streams"),
    "spool_pending": ("spool_pending_messages", "messages in the on-disk spool, not yet handed on to Redis"),
    "spool_bytes": ("spool_size_bytes", "size of the on-disk spool"),
}
"""JSON gauge name -> (Prometheus name after ``privedge_gateway_``, help)."""
KIND_GAUGES = {
    "queue": ("queued_inputs", "inputs held in the extraction loop's queue, by kind"),
    "open_utterances": ("open_utterances", "utterances begun and not yet complete, by kind"),
    "held_chunks": ("held_chunks", "audio chunks held by the open utterances, by kind"),
}
"""Per extraction loop (JSON name ``{kind}_{name}``): name -> (Prometheus name, help), labelled ``kind``."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""End-to-end latency buckets, seconds: tens of milliseconds when all is well, minutes after a spool replay."""


MAX_LABELS = 1000
"""Distinct labels kept per labelled counter."""
OTHER_LABEL = "(other)"
"""The label that counts the rest past MAX_LABELS."""


class Metrics:
    """Thread-safe counters and timers of one gateway."""

    def __init__(self, gateway: str = "") -> None:
        self.gateway = gateway
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._labelled: dict[str, dict[str, int]] = {name: defaultdict(int) for name in LABELLED}
        self._stage_s: dict[str, float] = defaultdict(float)
        self._stage_n: dict[str, int] = defaultdict(int)
        self._gauges: dict[tuple[str, str | None], float] = {}
        self.started = time.time()
        # registry=None: the registry is made per gateway by prometheus_registry(), which registers it
        self.latency = Histogram("privedge_gateway_result_latency_seconds",
                                 "capture (the sensor's ts) to the result's publication at home, seconds",
                                 ["gateway", "task"], buckets=LATENCY_BUCKETS, registry=None)

    def inc(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a plain counter (one of COUNTERS)."""
        with self._lock:
            self._counts[name] += n

    def inc_label(self, name: str, label: str, n: int = 1) -> None:
        """Add ``n`` to a labelled counter, e.g. ``inc_label("rejected", "too large")``; past
        ``MAX_LABELS`` distinct labels of one counter, new ones are counted under ``OTHER_LABEL`` (any
        device name may appear on an open broker: the stats and every scrape must stay bounded)."""
        with self._lock:
            values = self._labelled[name]
            if label not in values and len(values) >= MAX_LABELS:
                label = OTHER_LABEL
            values[label] += n

    def set_gauge(self, name: str, value: float, kind: str | None = None) -> None:
        """Record a current value: one of GAUGES, or with ``kind`` (an extraction loop's) one of KIND_GAUGES."""
        if name not in (GAUGES if kind is None else KIND_GAUGES):
            raise KeyError(f"undeclared gateway gauge {name!r}" + (f" (kind {kind})" if kind else ""))
        with self._lock:
            self._gauges[(name, kind)] = value

    def observe_latency(self, task: str, seconds: float) -> None:
        """One result published at home, ``seconds`` after its input's capture (a sensor clock ahead of
        the gateway's counts as 0: a histogram's sum must not go down)."""
        self.latency.labels(self.gateway, task).observe(max(0.0, seconds))

    def observe(self, stage: str, seconds: float, n: int = 1) -> None:
        """Add ``seconds`` of work on ``n`` items to a stage's timer."""
        with self._lock:
            self._stage_s[stage] += seconds
            self._stage_n[stage] += n

    @contextmanager
    def timed(self, stage: str, n: int = 1) -> Iterator[None]:
        """Time the block as ``n`` items of ``stage``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - t0, n)

    def count(self, name: str, label: str | None = None) -> int:
        """One counter's value (labelled counters: one label, or their sum when label is None)."""
        with self._lock:
            if name in self._labelled:
                values = self._labelled[name]
                return values.get(label, 0) if label is not None else sum(values.values())
            return self._counts[name]

    def snapshot(self) -> dict:
        """All figures as a JSON-ready dict; stage entries give ``seconds``, ``items`` and ``ms_per_item``."""
        with self._lock:
            stages = {
                s: {"seconds": round(self._stage_s[s], 6), "items": self._stage_n[s],
                    "ms_per_item": round(1000 * self._stage_s[s] / self._stage_n[s], 4) if self._stage_n[s] else None}
                for s in sorted(self._stage_s)
            }
            return {
                "ts": time.time(),
                "uptime_s": round(time.time() - self.started, 3),
                **self._counts,
                **{name: dict(values) for name, values in self._labelled.items()},
                "stages": stages,
                "gauges": {name if kind is None else f"{kind}_{name}": value
                           for (name, kind), value in self._gauges.items()},
            }

    def gauges(self) -> dict[tuple[str, str | None], float]:
        """The current gauges, ``(name, kind or None) -> value``."""
        with self._lock:
            return dict(self._gauges)


class _Collector:
    """A prometheus_client collector that reads a Metrics snapshot at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        gw = self.metrics.gateway
        snap = self.metrics.snapshot()
        for name, doc in COUNTERS.items():
            c = CounterMetricFamily(f"privedge_gateway_{name}", doc, labels=["gateway"])
            c.add_metric([gw], snap[name])
            yield c
        for name, (label, doc) in LABELLED.items():
            c = CounterMetricFamily(f"privedge_gateway_{name}", doc, labels=["gateway", label])
            for value, n in snap[name].items():
                c.add_metric([gw, value], n)
            yield c
        secs = CounterMetricFamily("privedge_gateway_stage_seconds", "time spent per stage, seconds",
                                   labels=["gateway", "stage"])
        items = CounterMetricFamily("privedge_gateway_stage_items", "items processed per stage",
                                    labels=["gateway", "stage"])
        for stage, st in snap["stages"].items():
            secs.add_metric([gw, stage], st["seconds"])
            items.add_metric([gw, stage], st["items"])
        yield secs
        yield items
        gauges = self.metrics.gauges()
        for name, (metric, doc) in GAUGES.items():
            g = GaugeMetricFamily(f"privedge_gateway_{metric}", doc, labels=["gateway"])
            if (name, None) in gauges:
                g.add_metric([gw], gauges[(name, None)])
            yield g
        for name, (metric, doc) in KIND_GAUGES.items():
            g = GaugeMetricFamily(f"privedge_gateway_{metric}", doc, labels=["gateway", "kind"])
            for (gauge, kind), value in sorted(gauges.items(), key=lambda kv: str(kv[0])):
                if gauge == name and kind is not None:
                    g.add_metric([gw, kind], value)
            yield g


def prometheus_registry(metrics: Metrics):
    """A prometheus_client registry of its own holding the gateway's collector, its latency histogram and
    the process metrics (CPU, memory, open files), for common.health's ``/metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics))
    registry.register(metrics.latency)
    ProcessCollector(registry=registry)
    return registry
