"""A bounded on-disk FIFO of ``(stream, message)`` records: where the gateway keeps what Redis cannot take.

Layout: a directory of numbered segment files (``0000000001.seg``...) plus ``head`` (the segment and
byte offset of the first record not yet handed on). A record is ``length (u32 LE), crc32 (u32 LE),
msgpack [stream, message]``. Appends go to the last segment and are flushed and fsync'd before
:meth:`Spool.append` returns, so an input acknowledged to the broker after an append survives a crash of
the gateway (and of the machine, with ``fsync``). A record torn by a crash is cut off when the spool is
opened again. Records are read from the head and the head is advanced only once they are in Redis, so a
crash between the two replays a few records twice (harmless: ids are stable, results de-duplicated).

The bound is on bytes: when an append would take the spool past ``max_bytes``, whole segments are dropped
from the oldest end (stale inputs go first, as in the device queues) and their records are counted.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # (payload length in bytes, crc32 of the payload)
_SUFFIX = ".seg"
SEGMENTS_PER_BOUND = 16
"""The byte bound is cut into about this many segments: dropping one frees a sixteenth of the spool."""


class SpoolError(OSError):
    """The spool directory cannot be used (not writable, not a directory)."""


@dataclass
class _Segment:
    number: int
    path: Path
    size: int = 0       # bytes in the file (valid records only)
    records: int = 0    # records in the file not yet handed on


@dataclass(frozen=True)
class Position:
    """Where a read stopped: commit it once the records read are safely in Redis."""

    segment: int
    offset: int
    records: int        # records between the head and this position


class Spool:
    """Append ``(stream, message)`` records at the tail, read them at the head. Thread-safe."""

    def __init__(self, directory: str | Path, max_bytes: int, *, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, max_bytes // SEGMENTS_PER_BOUND)
        self.fsync = fsync
        self.dropped = 0
        """Records dropped (oldest first) to stay under max_bytes since this process opened the spool."""
        self._lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"cannot create spool directory {self.dir}: {e}") from e
        self._segments: list[_Segment] = []
        self._head_offset = 0
        self._tail = None  # open file object of the last segment
        self._load()

    # state -----------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Records waiting to be handed on."""
        with self._lock:
            return sum(s.records for s in self._segments)

    @property
    def size_bytes(self) -> int:
        """Bytes the segment files take on disk."""
        with self._lock:
            return sum(s.size for s in self._segments)

    def close(self) -> None:
        with self._lock:
            if self._tail is not None:
                self._tail.close()
                self._tail = None

    # writing ---------------------------------------------------------------------------------------
    def append(self, entries: list[tuple[str, bytes]]) -> int:
        """Write ``entries`` durably at the tail; returns how many older records were dropped for room."""
        records = [self._pack(stream, message) for stream, message in entries]
        dropped = 0
        with self._lock:
            for rec in records:
                if len(rec) > self.max_bytes:
                    dropped += 1  # can never fit: counted like any other drop
                    continue
                dropped += self._make_room(len(rec))
                tail = self._tail_segment(len(rec))
                self._tail.write(rec)
                tail.size += len(rec)
                tail.records += 1
            if self._tail is not None:
                self._tail.flush()
                if self.fsync:
                    os.fsync(self._tail.fileno())
            self.dropped += dropped
        if dropped:
            log.warning("spool %s full (%d bytes): dropped the %d oldest records", self.dir, self.max_bytes, dropped)
        return dropped

    @staticmethod
    def _pack(stream: str, message: bytes) -> bytes:
        payload = msgpack.packb([stream, message], use_bin_type=True)
        return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload

    def _make_room(self, need: int) -> int:
        dropped = 0
        while self._segments and sum(s.size for s in self._segments) + need > self.max_bytes:
            if len(self._segments) == 1:
                # The only segment is the tail: start a fresh one instead of dropping what is unread.
                if self._segments[0].records == 0:
                    self._drop_segment(0)
                    self._head_offset = 0
                break
            dropped += self._segments[0].records
            self._drop_segment(0)
            self._head_offset = 0
            self._write_head()
        return dropped

    def _tail_segment(self, need: int) -> _Segment:
        if not self._segments or self._segments[-1].size + need > self.segment_bytes and self._segments[-1].size:
            number = self._segments[-1].number + 1 if self._segments else 1
            if self._tail is not None:
                self._tail.close()
            seg = _Segment(number, self.dir / f"{number:010d}{_SUFFIX}")
            self._tail = open(seg.path, "ab")
            self._segments.append(seg)
            if len(self._segments) == 1:
                self._head_offset = 0
                self._write_head()
        return self._segments[-1]

    def _drop_segment(self, index: int) -> None:
        seg = self._segments.pop(index)
        if not self._segments and self._tail is not None:
            self._tail.close()
            self._tail = None
        seg.path.unlink(missing_ok=True)

    # reading ---------------------------------------------------------------------------------------
    def read(self, max_records: int) -> tuple[list[tuple[str, bytes]], Position | None]:
        """Up to ``max_records`` records from the head, in order, and the position after them."""
        out: list[tuple[str, bytes]] = []
        with self._lock:
            if not self._segments:
                return out, None
            seg = self._segments[0]
            offset = self._head_offset
            with open(seg.path, "rb") as f:
                f.seek(offset)
                while len(out) < max_records and offset < seg.size:
                    rec = _read_record(f)
                    if rec is None:  # cannot happen for a loaded segment: its size counts valid records
                        break
                    out.append(rec[0])
                    offset += rec[1]
            return out, Position(seg.number, offset, len(out))

    def commit(self, pos: Position) -> None:
        """Forget the records up to ``pos`` (they are in Redis); a consumed, full segment is deleted."""
        with self._lock:
            if not self._segments or self._segments[0].number != pos.segment:
                return  # its segment was dropped for room meanwhile: nothing left to forget
            seg = self._segments[0]
            seg.records = max(0, seg.records - pos.records)
            self._head_offset = pos.offset
            if seg.records == 0:
                # Consumed: delete it (the tail too, so that an emptied spool starts over in a fresh file).
                self._drop_segment(0)
                self._head_offset = 0
            self._write_head()

    # persistence -----------------------------------------------------------------------------------
    def _write_head(self) -> None:
        number = self._segments[0].number if self._segments else 0
        tmp = self.dir / "head.tmp"
        tmp.write_text(f"{number} {self._head_offset}\n")
        os.replace(tmp, self.dir / "head")

    def _load(self) -> None:
        try:
            head_seg, head_off = (int(x) for x in (self.dir / "head").read_text().split())
        except (OSError, ValueError):
            head_seg, head_off = 0, 0
        files = sorted(p for p in self.dir.iterdir() if p.suffix == _SUFFIX and p.stem.isdigit())
        for path in files:
            number = int(path.stem)
            if number < head_seg:
                path.unlink()  # handed on before the last stop
                continue
            start = head_off if number == head_seg else 0
            seg = _scan(path, number, start)
            if seg.records == 0 and seg.size <= start:
                path.unlink()
                continue
            if not self._segments:
                self._head_offset = start
            self._segments.append(seg)
        if self._segments:
            self._tail = open(self._segments[-1].path, "ab")
            log.info("spool %s: %d records from an earlier run to hand on", self.dir, sum(s.records for s in self._segments))
        self._write_head()


def _read_record(f) -> tuple[tuple[str, bytes], int] | None:
    """``((stream, message), bytes taken)`` from the file's position, or None at the end or a torn record."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    length, crc = _HEADER.unpack(header)
    payload = f.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    try:
        stream, message = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    return (stream, message), _HEADER.size + length


def _scan(path: Path, number: int, start: int) -> _Segment:
    """Count the valid records of a segment from ``start``; cut off a record torn by a crash."""
    seg = _Segment(number, path)
    with open(path, "r+b") as f:
        f.seek(start)
        offset = start
        while True:
            rec = _read_record(f)
            if rec is None:
                break
            offset += rec[1]
            seg.records += 1
        end = f.seek(0, os.SEEK_END)
        if end > offset:
            log.warning("spool segment %s: cut %d bytes of a record torn by a crash", path, end - offset)
            f.truncate(offset)
    seg.size = offset
    return seg
