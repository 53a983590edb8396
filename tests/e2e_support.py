"""Helpers for the end-to-end tests: ``privedge worker`` processes, a ``privedge`` process that records
every file it opens, what the sensors published as seen on the broker, and the scan of everything
Redis holds for raw media.

Run as ``python -m tests.e2e_support OPEN_LOG WATCHED_DIR -- privedge-args...``: the ``privedge`` command
with an audit hook (installed before privedge is imported) that appends to OPEN_LOG the absolute path
of every file opened under WATCHED_DIR.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RAW_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"RIFF": "RIFF", b"WAVEfmt": "WAVE"}
"""Byte strings that start (or, for WAVE, sit inside the header of) a raw media file."""


# ``privedge worker`` processes --------------------------------------------------------------------------
class WorkerProcesses:
    """``n`` real ``privedge worker`` processes named ``{stem}1..{stem}n``, each logging to its own file
    (``module``: ``python -m MODULE`` with the worker's flags instead, e.g. the cloud-only baseline's)."""

    def __init__(self, redis_url: str, bundles, n: int, log_dir: Path, *, module: str | None = None,
                 stem: str = "w", batch: int = 2, block_ms: int = 1000) -> None:
        self.names = [f"{stem}{i}" for i in range(1, n + 1)]
        self.logs = [Path(log_dir) / f"{name}.log" for name in self.names]
        self.procs: list[subprocess.Popen] = []
        for name, log in zip(self.names, self.logs):
            head = [module] if module else ["privedge.cli", "worker"]
            cmd = [sys.executable, "-m", *head, "--redis", redis_url, "--name", name,
                   "--batch", str(batch), "--block-ms", str(block_ms)]
            for b in bundles:
                cmd += ["--bundle", str(b)]
            with open(log, "w") as out:
                self.procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until every worker says it is consuming (its consumer group exists, its loop is reading)."""
        deadline = time.monotonic() + timeout
        for i, (name, proc) in enumerate(zip(self.names, self.procs)):
            while f"worker {name} consuming" not in self.log(i):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"worker {name} not ready (exit {proc.poll()}):\n{self.log(i)[-3000:]}")
                time.sleep(0.1)

    def running(self) -> list[str]:
        return [name for name, proc in zip(self.names, self.procs) if proc.poll() is None]

    def stop(self, keep: int = 0, timeout: float = 30.0) -> list[int]:
        """SIGTERM every worker but the first ``keep`` and wait for them; a worker that does not stop in
        time is killed (exit -9). Returns the exit codes of those stopped."""
        stopping = self.procs[keep:]
        for proc in stopping:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in stopping:
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


# a privedge process that records the files it opens -----------------------------------------------------
def audited_command(open_log: Path, watched: Path, privedge_args: list[str]) -> list[str]:
    """The command line that runs ``privedge *privedge_args`` recording opens under ``watched``."""
    return [sys.executable, "-m", "tests.e2e_support", str(open_log), str(watched), "--", *privedge_args]


def _run_audited(argv: list[str]) -> int:
    open_log, watched, sep, *rest = argv
    if sep != "--":
        raise SystemExit("usage: python -m tests.e2e_support OPEN_LOG WATCHED_DIR -- PRIVEDGE_ARGS...")
    root = os.path.abspath(watched) + os.sep
    out = open(open_log, "a", buffering=1)

    def hook(event: str, args: tuple) -> None:
        # "open" is raised by open(), io.open and os.open alike; its first argument is a path or an fd.
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if path.startswith(root):
                out.write(path + "\n")

    sys.addaudithook(hook)
    from privedge.cli import main

    return main(rest)


def arm_atimes(paths) -> dict[Path, int]:
    """Set each file's access time one second before its modification time, so that the next read of it
    moves the access time (relatime mounts update it when it is not newer than the modification time):
    evidence of a read that no hook in the reader can hide. Returns {path: armed atime in ns}."""
    armed = {}
    for path in map(Path, paths):
        mtime = path.stat().st_mtime_ns
        os.utime(path, ns=(mtime - 10**9, mtime))
        armed[path] = mtime - 10**9
    return armed


def read_since_armed(armed: dict[Path, int]) -> set[Path]:
    """The files of :func:`arm_atimes` whose access time moved (read since)."""
    return {path for path, atime in armed.items() if path.stat().st_atime_ns != atime}


# what the sensors published -----------------------------------------------------------------------------
@dataclass
class Published:
    """The inputs seen on the broker's sensor topics: frames by id, utterances (joined PCM) by id."""

    frames: dict = field(default_factory=dict)      # id -> ImageFrame
    utterances: dict = field(default_factory=dict)  # id -> (joined pcm bytes, rate)

    @classmethod
    def from_listener(cls, listener, gateway: str, prefix: str = "privedge") -> "Published":
        """Decode every ImageFrame/AudioChunk the listener recorded; an utterance's id is its first seq."""
        from schemas.features import make_id
        from schemas.media import AudioChunk, ImageFrame

        out, chunks = cls(), defaultdict(list)
        for topic, payloads in list(listener.messages.items()):
            parts = topic.split("/")
            if len(parts) != 3 or parts[0] != prefix:
                continue
            device, kind = parts[1:]
            if kind == "image":
                for p in payloads:
                    f = ImageFrame.decode(p)
                    out.frames[make_id(gateway, device, f.seq, f.boot)] = f
            elif kind == "audio":
                for p in payloads:
                    c = AudioChunk.decode(p)
                    chunks[(device, c.utt)].append(c)
        for (device, _), cs in chunks.items():
            cs.sort(key=lambda c: c.seq)
            out.utterances[make_id(gateway, device, cs[0].seq, cs[0].boot)] = (b"".join(c.data for c in cs),
                                                                               cs[0].rate)
        return out

    def ids(self) -> set[str]:
        return set(self.frames) | set(self.utterances)

    def probes(self, width: int = 64, per_blob: int = 16) -> list[bytes]:
        """Byte strings whose presence in Redis would mean raw media went up: each encoded frame, its
        decoded pixels, each utterance's PCM and its float32 samples, whole and as ``per_blob``
        windows of ``width`` bytes (windows of nearly constant bytes, like silence, are left out)."""
        import numpy as np

        from models.preprocess import pcm16_to_float

        blobs = []
        for f in self.frames.values():
            blobs += [f.data, np.ascontiguousarray(f.pixels()).tobytes()]
        for pcm, _ in self.utterances.values():
            blobs += [pcm, pcm16_to_float(pcm, 1).tobytes()]
        probes = []
        for blob in blobs:
            probes.append(blob)
            step = max(1, (len(blob) - width) // per_blob)
            probes += [w for w in (blob[i:i + width] for i in range(0, len(blob) - width + 1, step))
                       if len(set(w)) >= 16]
        return probes


def results_of(listener) -> list[tuple[str, dict]]:
    """(topic, Result JSON) of every message a gateway_fixtures.Listener got on a ``.../result`` topic."""
    import json

    with listener._cond:
        return [(t, json.loads(p)) for t, ps in listener.messages.items() if t.endswith("/result") for p in ps]


# the scan of Redis --------------------------------------------------------------------------------------
def redis_entries(r) -> list[tuple[str, list[bytes]]]:
    """Everything Redis holds, as (where, [bytes...]): one item per key (its name), per stream entry
    (all its field names and values), per hash field, list item, set or sorted-set member, string."""
    out: list[tuple[str, list[bytes]]] = []
    for key in r.scan_iter(count=1000):
        name = key.decode(errors="replace")
        kind = r.type(key).decode()
        out.append((f"key {name}", [key]))
        if kind == "stream":
            last = "-"
            while True:
                batch = r.xrange(key, min=last, count=500)
                out += [(f"{name} entry {eid.decode()}", [b for kv in fields.items() for b in kv])
                        for eid, fields in batch]
                if len(batch) < 500:
                    break
                last = "(" + batch[-1][0].decode()
        elif kind == "string":
            out.append((name, [r.get(key)]))
        elif kind == "hash":
            out += [(f"{name} field {f!r}", [f, v]) for f, v in r.hgetall(key).items()]
        elif kind == "list":
            out += [(f"{name}[{i}]", [v]) for i, v in enumerate(r.lrange(key, 0, -1))]
        elif kind == "set":
            out += [(f"{name} member", [v]) for v in r.smembers(key)]
        elif kind == "zset":
            out += [(f"{name} member", [v]) for v in r.zrange(key, 0, -1)]
        else:
            raise AssertionError(f"unexpected Redis type {kind} at {name}")
    return out


def raw_media_findings(entries, probes: list[bytes], bound: int) -> list[str]:
    """What in ``entries`` (from :func:`redis_entries`) holds a media signature, a probe, or exceeds
    ``bound`` bytes; empty when Redis holds nothing but small non-media values."""
    findings = []
    for where, values in entries:
        size = sum(len(v) for v in values)
        if size > bound:
            findings.append(f"{where}: {size} bytes > {bound}")
        for v in values:
            findings += [f"{where}: {kind} signature" for sig, kind in RAW_SIGNATURES.items() if sig in v]
            hits = sum(p in v for p in probes)
            if hits:
                findings.append(f"{where}: {hits} pieces of published media")
    return findings


# bundles ------------------------------------------------------------------------------------------------
def without_pitch_shift(bundle: Path) -> str:
    """Turn a speech bundle's random pitch shift off (manifest edited, model id recomputed, signed again
    with the session's provider key), so that two runs of its front end on one utterance give the same
    input; returns the new model id."""
    import json

    from models import signing
    from models.bundle import MANIFEST, model_id

    path = Path(bundle) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["input"]["shift_semitones"] = [0.0, 0.0]
    manifest["model"] = model_id(manifest)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    signing.sign_bundle(bundle, signing.signing_key_from_env())
    return manifest["model"]


if __name__ == "__main__":
    sys.exit(_run_audited(sys.argv[1:]))
