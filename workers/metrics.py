"""A worker's Prometheus metrics, through prometheus_client's own types, in a registry of its own.

- ``privedge_worker_entries_total``: stream entries read (new and reclaimed);
- ``privedge_worker_results_total``: results written;
- ``privedge_worker_dead_letters_total{reason}``: entries dead-lettered, by reason;
- ``privedge_worker_batch_seconds``: a histogram of one batch's analysis and write, seconds;
- ``privedge_worker_group_lag{stream}`` and ``privedge_worker_group_pending{stream}``: the consumer group's
  lag (entries no consumer has read) and pending count (read, not yet acknowledged) of every stream the
  worker serves, read from XINFO GROUPS at scrape time: what an operator scales the pool on;
- the process metrics (CPU, memory, open files).

One registry per worker, so that several workers in one process (tests, benchmarks) do not mix.
"""
from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from schemas.names import GROUP

log = logging.getLogger(__name__)

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Batch-time histogram buckets, seconds (a batch of 64 features takes a few milliseconds)."""


class _GroupCollector:
    """Lag and pending of the consumer group on each served stream, asked of Redis when scraped."""

    def __init__(self, redis_client, streams: Callable[[], list[str]]) -> None:
        self.redis = redis_client
        self.streams = streams

    def collect(self):
        lag = GaugeMetricFamily("privedge_worker_group_lag", "entries of the stream no consumer of the group "
                                "has read yet", labels=["stream"])
        pending = GaugeMetricFamily("privedge_worker_group_pending", "entries read by the group and not yet "
                                    "acknowledged", labels=["stream"])
        keys = self.streams()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.xinfo_groups(key)
            answers = pipe.execute(raise_on_error=False) if keys else []
        except Exception as e:  # noqa: BLE001 - a scrape during a Redis outage shows no group figures
            log.debug("group metrics unavailable: %s", e)
            answers = []
        for key, groups in zip(keys, answers):
            if isinstance(groups, Exception):
                continue
            for g in groups:
                name = g.get("name", b"")
                if (name.decode() if isinstance(name, bytes) else name) == GROUP:
                    lag.add_metric([key], float(g.get("lag") or 0))
                    pending.add_metric([key], float(g.get("pending") or 0))
        yield lag
        yield pending


class WorkerMetrics:
    """The counters a worker updates, and the registry its health server exports."""

    def __init__(self, redis_client=None, streams: Callable[[], list[str]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)  # registering must not ask Redis yet
        self.entries = Counter("privedge_worker_entries", "stream entries read (new and reclaimed)",
                               registry=self.registry)
        self.results = Counter("privedge_worker_results", "results written", registry=self.registry)
        self.dead = Counter("privedge_worker_dead_letters", "entries dead-lettered, by reason", ["reason"],
                            registry=self.registry)
        self.batch_seconds = Histogram("privedge_worker_batch_seconds", "one batch's analysis and write, seconds",
                                       buckets=BATCH_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        if redis_client is not None and streams is not None:
            self.registry.register(_GroupCollector(redis_client, streams))
