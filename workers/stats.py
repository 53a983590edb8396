"""Counters and stage timings of one worker, so that a benchmark can say where the time goes."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, fields


@dataclass
class WorkerStats:
    """Cumulative since start. Counts are messages; ``*_s`` are wall-clock seconds spent in a stage."""

    received: int = 0       # stream entries read (new and reclaimed)
    results: int = 0        # results written
    dead: int = 0           # entries moved to a dead-letter stream
    reclaimed: int = 0      # entries taken over from idle consumers (XAUTOCLAIM)
    batches: int = 0        # XREADGROUP calls that returned something
    redis_errors: int = 0   # failed round trips (the loop retries)
    loop_errors: int = 0    # steps that failed on something unexpected (logged; the loop retries)
    trimmed: int = 0        # acknowledged entries trimmed from the streams (XTRIM MINID)
    wait_short: int = 0     # result writes fewer replicas had within wait_timeout_ms than wait_replicas (Cluster)
    read_s: float = 0.0     # XREADGROUP / XAUTOCLAIM, including the BLOCK wait when idle
    analyze_s: float = 0.0  # decode + network
    write_s: float = 0.0    # the XADD + XACK transaction
    started: float = field(default_factory=time.time)  # Unix seconds
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        """Add to several counters at once (thread-safe)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def as_dict(self) -> dict[str, float]:
        """A snapshot of every counter, plus uptime in seconds."""
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out["uptime_s"] = time.time() - out["started"]
        return out
