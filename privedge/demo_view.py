"""What the demo counts and shows: inputs and bytes seen on the sensor topics, results and their latency,
bytes that went up to Redis; a live view (a status bar on a terminal, plain lines otherwise) and the
closing summary."""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks; None when empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Tally:
    """Thread-safe running totals of one demo run (the MQTT monitor and the Redis tap add to it)."""

    inputs: Counter = field(default_factory=Counter)       # device -> frames / complete utterances
    messages_raw: int = 0                                   # sensor MQTT messages (frames + audio chunks)
    bytes_raw: int = 0                                      # their payload bytes, as the broker delivered them
    results: Counter = field(default_factory=Counter)      # device -> results relayed to MQTT (one per face)
    answered_inputs: Counter = field(default_factory=Counter)  # device -> inputs all of whose results came
    labels: Counter = field(default_factory=Counter)       # (device, label) -> results
    latencies_ms: list = field(default_factory=list)       # capture -> result published, per result
    rejected: int = 0                                       # inputs the gateway reported as rejected
    dead: Counter = field(default_factory=Counter)         # reason -> inputs a worker dead-lettered
    messages_cloud: int = 0                                 # feature messages added to Redis
    bytes_cloud: int = 0                                    # their bytes (every field name and value)
    faces: int = 0                                          # results that answer one face of a frame
    no_face: int = 0                                        # frames answered with no face found
    _seen: set = field(default_factory=set, repr=False)    # result ids already counted
    _pending: dict = field(default_factory=dict, repr=False)  # (device, boot, seq) -> results still due
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_raw(self, device: str, nbytes: int, complete_input: bool) -> None:
        with self._lock:
            self.messages_raw += 1
            self.bytes_raw += nbytes
            if complete_input:
                self.inputs[device] += 1

    def add_result(self, result: dict) -> bool:
        """Count a result JSON once per id; False for a duplicate. A camera frame is answered by one result
        per face (each says how many the frame has: ``faces.answered``) or by one ``no_face`` result."""
        with self._lock:
            if result["id"] in self._seen:
                return False
            self._seen.add(result["id"])
            self.results[result["device"]] += 1
            if result.get("face") is not None:
                self.faces += 1
            elif "faces" in result:
                self.no_face += 1
            due = int((result.get("faces") or {}).get("answered") or 1) if result.get("face") is not None else 1
            key = (result["device"], result.get("boot"), result.get("seq", result["id"]))
            left = self._pending.get(key, due) - 1
            if left <= 0:
                self._pending.pop(key, None)
                self.answered_inputs[result["device"]] += 1
            else:
                self._pending[key] = left
            self.labels[(result["device"], str(result["label"]))] += 1
            self.latencies_ms.append(float(result["latency_ms"]))
            return True

    def add_rejected(self) -> None:
        with self._lock:
            self.rejected += 1

    def add_dead(self, reason: str) -> None:
        with self._lock:
            self.dead[reason] += 1

    def add_cloud(self, messages: int, nbytes: int) -> None:
        with self._lock:
            self.messages_cloud += messages
            self.bytes_cloud += nbytes

    def answered(self) -> bool:
        """Every input seen so far has a result, was rejected or was dead-lettered."""
        with self._lock:
            done = sum(self.answered_inputs.values()) + self.rejected + sum(self.dead.values())
            return done >= sum(self.inputs.values())

    def summary(self) -> dict:
        """The figures of ``--summary-json``."""
        with self._lock:
            lat = list(self.latencies_ms)
            n_in, n_res = sum(self.inputs.values()), sum(self.results.values())

            def pct(q: float) -> float | None:
                v = percentile(lat, q)
                return None if v is None else round(v, 3)
            return {
                "inputs": n_in, "results": n_res, "answered": sum(self.answered_inputs.values()),
                "faces": self.faces, "frames_without_faces": self.no_face, "rejected": self.rejected,
                "dead_lettered": sum(self.dead.values()), "dead_reasons": dict(self.dead),
                "bytes_cloud": self.bytes_cloud, "bytes_raw": self.bytes_raw,
                "messages_cloud": self.messages_cloud, "messages_raw": self.messages_raw,
                "bytes_cloud_per_input": round(self.bytes_cloud / n_in, 1) if n_in else None,
                "bytes_raw_per_input": round(self.bytes_raw / n_in, 1) if n_in else None,
                "latency_p50_ms": pct(50), "latency_p99_ms": pct(99),
                "latency_max_ms": round(max(lat), 3) if lat else None,
                "inputs_by_device": dict(self.inputs), "results_by_device": dict(self.results),
                "answered_by_device": dict(self.answered_inputs),
                "labels": {f"{d}:{label}": n for (d, label), n in sorted(self.labels.items())},
            }


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def result_line(r: dict) -> str:
    """One result, as a home app would show it: a camera frame's faces one line each (frame, face index,
    box in frame pixels), a frame without a face as such, anything else by its label alone."""
    clock = time.strftime("%H:%M:%S", time.localtime(r.get("ts", time.time())))
    head = f"{clock}  {r['device']:<10} {r.get('task', ''):<8} "
    tail = f"score {float(r['score']):.2f}  latency {float(r['latency_ms']):7.1f} ms"
    if r.get("face") is not None:
        box = r.get("box")
        where = "box unknown" if box is None else "box {},{} {}x{}".format(*box)
        return f"{head}frame {r.get('seq', '?'):<5} face {r['face']}  {where:<22} {str(r['label']):<12} {tail}"
    if "faces" in r:
        return f"{head}frame {r.get('seq', '?'):<5} no face ({r['faces']['found']} found, none sent)  {tail}"
    return f"{head}{str(r['label']):<12} {tail}"


def status_text(t: Tally, elapsed_s: float) -> str:
    s = t.summary()
    p50 = s["latency_p50_ms"]
    return (f"{elapsed_s:5.0f} s  inputs {s['inputs']}  results {s['results']}  "
            f"raw {human_bytes(s['bytes_raw'])}  to cloud {human_bytes(s['bytes_cloud'])}  "
            f"p50 {'-' if p50 is None else f'{p50:.0f} ms'}")


class LiveView:
    """Results as they come and a status line: a redrawn bar on a terminal, plain lines otherwise
    (a status line every ``plain_every_s`` seconds)."""

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None, plain_every_s: float = 5.0) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.plain_every_s = plain_every_s
        self._bar = None
        self._next_plain = 0.0
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """Print a line above the status bar (or just print it)."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(text, file=self.out)
            else:
                print(text, file=self.out, flush=True)

    def status(self, text: str) -> None:
        """Show the current status: redraw the bar, or print it now and then."""
        with self._lock:
            if self.tty:
                if self._bar is None:
                    from tqdm import tqdm
                    self._bar = tqdm(total=None, bar_format="{desc}", file=self.out, leave=False)
                self._bar.set_description_str(text)
            elif time.monotonic() >= self._next_plain:
                self._next_plain = time.monotonic() + self.plain_every_s
                print(text, file=self.out, flush=True)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


def summary_text(s: dict, seconds: float) -> str:
    """The closing summary, for people."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"
    by_device = ", ".join(f"{d} {n}" for d, n in sorted(s["inputs_by_device"].items()))
    lost = (f"  ({s['rejected']} rejected by the gateway)" if s["rejected"] else "") + (
        f"  ({s['dead_lettered']} dead-lettered by workers: {s['dead_reasons']})" if s["dead_lettered"] else "")
    lines = [
        f"summary after {seconds:.0f} s",
        f"  inputs            {s['inputs']}  ({by_device})",
        f"  results           {s['results']}{lost}"
        + (f"  ({s['faces']} faces, {s['frames_without_faces']} frames without one)" if s["faces"] or
           s["frames_without_faces"] else ""),
        f"  inputs answered   {s['answered']}",
        f"  raw bytes in      {s['bytes_raw']:,}  ({s['messages_raw']} sensor messages)",
        f"  bytes to cloud    {s['bytes_cloud']:,}  ({s['messages_cloud']} feature messages"
        + (f", {s['bytes_raw'] / s['bytes_cloud']:.0f}x less than raw)" if s["bytes_cloud"] else ")"),
        f"  latency p50 / p99 {ms(s['latency_p50_ms'])} / {ms(s['latency_p99_ms'])}",
    ]
    return "\n".join(lines)
