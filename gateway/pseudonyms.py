"""Rotating device pseudonyms: what the cloud sees of a sensor changes every period, and only the home maps it back.

Without them the cloud reads each feature message's device id, boot id and sequence number, and can link
every release of one camera or microphone across days, then average them (issue: privacy at scale). With
them the gateway replaces, for each period (default one UTC day):

- the device id by ``d`` + 20 base32 characters of HMAC-SHA256(home key, ``device|period|id``) (100 bits);
- the boot id by 53 bits of HMAC(home key, ``boot|period|id|boot``) (also when the sensor sent none, so
  the cloud does not learn which sensors lack one);
- the sequence number by ``seq`` plus a 48-bit offset HMAC(home key, ``seq|period|id|boot``) (modulo 2^63), so that the
  numbers of one period do not continue those of the last one.

All three are deterministic within a period, so retries and the cloud's deduplication stay exact, and the
gateway's dedup window sees one id per input. A result comes back under the pseudonymous id; the gateway
maps it back through the table of what it issued (:meth:`Pseudonyms.reveal`), which it keeps for the
current and the previous period (results of inputs sent just before a rotation still find their way) and
saves beside its spool each time it grows (once per device, boot and period, before the first message
under the new names goes), so a restart does not orphan the results of inputs already sent.

What is left for the cloud to link: the gateway id (the home's account, by design), capture times and
the features themselves within one period (measured by ``privedge audit``'s linkage attack). HMAC-SHA256
from the standard library: a keyed hash is all this needs.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

DAY_S = 86400
KEY_BYTES = 32
OFFSET_BITS = 48
BOOT_BITS = 53
SEQ_MOD = 2**63
"""Sequence numbers are 0 .. 2^63-1 on the wire: the offset is added modulo 2^63, so it is always undone."""


class Real(NamedTuple):
    """What a pseudonymous (device, boot) stands for in one period."""

    device: str
    boot: int | None
    period: int


def load_or_make_key(path: str | Path) -> bytes:
    """The home's pseudonym key: read from ``path``, or made (32 random bytes, mode 0600) when absent."""
    path = Path(path)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return key
    if len(key) < 16:
        raise ValueError(f"pseudonym key {path} holds {len(key)} bytes; want at least 16")
    return key


class Pseudonyms:
    """Issues and reverses the pseudonyms of one home; thread-safe."""

    def __init__(self, key: bytes, *, period_s: int = DAY_S, table: str | Path | None = None) -> None:
        if len(key) < 16:
            raise ValueError("a pseudonym key needs at least 16 bytes")
        if period_s < 60:
            raise ValueError(f"period_s must be at least 60 s, got {period_s}")
        self._key = key
        self.period_s = int(period_s)
        self._table_path = Path(table) if table else None
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # one writer of the table file at a time (image and audio loops)
        self._issued: dict[tuple[str, int], Real] = {}   # (pseudonymous device, pseudonymous boot) -> real
        self._dirty = False
        if self._table_path and self._table_path.exists():
            self._load()

    def _mac(self, *parts: object) -> bytes:
        msg = "|".join(str(p) for p in parts).encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def period(self, ts: float | None = None) -> int:
        return int((time.time() if ts is None else ts) // self.period_s)

    def device(self, device: str, period: int) -> str:
        return "d" + base64.b32encode(self._mac("device", period, device)).decode()[:20].lower()

    def boot(self, device: str, boot: int | None, period: int) -> int:
        return int.from_bytes(self._mac("boot", period, device, boot)[:8], "big") >> (64 - BOOT_BITS)

    def _offset(self, device: str, boot: int | None, period: int) -> int:
        return int.from_bytes(self._mac("seq", period, device, boot)[:8], "big") >> (64 - OFFSET_BITS)

    def hide(self, device: str, boot: int | None, seq: int, ts: float | None = None) -> tuple[str, int, int]:
        """(device, boot, seq) as the cloud is to see them now (or at ``ts``, the send time)."""
        p = self.period(ts)
        pd, pb = self.device(device, p), self.boot(device, boot, p)
        with self._lock:
            new = (pd, pb) not in self._issued
            if new:
                self._issued[(pd, pb)] = Real(device, boot, p)
                self._prune(p)
                self._dirty = True
        if new:  # before the message goes: a gateway killed later still maps its results back
            self.save()
        return pd, pb, (int(seq) + self._offset(device, boot, p)) % SEQ_MOD

    def reveal(self, device: str, boot: int | None, seq: int) -> tuple[str, int | None, int] | None:
        """The real (device, boot, seq) of a pseudonymous one this gateway issued, or None."""
        with self._lock:
            real = self._issued.get((device, boot)) if boot is not None else None
        if real is None:
            return None
        return real.device, real.boot, (int(seq) - self._offset(real.device, real.boot, real.period)) % SEQ_MOD

    def _prune(self, current: int) -> None:
        for k in [k for k, r in self._issued.items() if r.period < current - 1]:
            del self._issued[k]

    # the table beside the spool ----------------------------------------------------------------------
    def save(self) -> None:
        """Write the table if it changed (atomically: a temporary file, fsync, rename)."""
        if self._table_path is None:
            return
        with self._save_lock:
            with self._lock:
                if not self._dirty:
                    return
                rows = [[pd, pb, r.device, r.boot, r.period] for (pd, pb), r in self._issued.items()]
                self._dirty = False
            self._table_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._table_path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump(rows, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._table_path)

    def _load(self) -> None:
        rows = json.loads(self._table_path.read_text() or "[]")
        for pd, pb, device, boot, period in rows:
            self._issued[(str(pd), int(pb))] = Real(str(device), None if boot is None else int(boot), int(period))
        self._prune(self.period())


def from_settings(settings) -> Pseudonyms | None:
    """A gateway's pseudonyms when ``pseudonym_period_s`` asks for them: key and table beside its spool
    (``spool_dir/{id}``), or the key in ``pseudonym_key_file``; without either, a key held in memory."""
    if not settings.pseudonym_period_s:
        return None
    state = Path(settings.spool_dir) / settings.id if settings.spool_dir else None
    key_file = settings.pseudonym_key_file or (state / "pseudonym.key" if state else None)
    if key_file is None:
        log.warning("pseudonyms without a spool_dir or pseudonym_key_file: the key lives in memory, so the "
                    "results of inputs sent before a restart cannot be mapped back")
    key = load_or_make_key(key_file) if key_file else secrets.token_bytes(KEY_BYTES)
    return Pseudonyms(key, period_s=settings.pseudonym_period_s, table=state / "pseudonyms.json" if state else None)
