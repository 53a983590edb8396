"""A bounded on-disk FIFO of ``(stream, message)`` records: where the gateway keeps what Redis cannot take.

Layout: a directory of numbered segment files (``0000000001.seg``...) plus ``head`` (the segment and
byte offset of the first record not yet handed on). A record is ``length (u32 LE), crc32 (u32 LE),
msgpack [stream, message]``. Appends go to the last segment and are fsync'd before
:meth:`Spool.append` returns, so an input acknowledged to the broker after an append survives a crash of
the gateway (and of the machine, with ``fsync``). A record torn by a crash is cut off when the spool is
opened again. Records are read from the head and the head is advanced only once they are in Redis, so a
crash between the two replays a few records twice (harmless: ids are stable, results de-duplicated).

Crash consistency: a new segment file and a rewritten ``head`` (written to ``head.tmp``, fsync'd, renamed)
are made durable by an fsync of the directory, since a file's own fsync does not make its directory
entry survive a power cut. Writes go through ``os.write`` on a raw descriptor (no buffered file object),
so the spool knows exactly which bytes reached the file.

A failing write (a full disk, EIO) takes the whole batch back: every segment is truncated to the last
whole record it held before the batch (segments the batch created are removed), the failure is counted in
``write_errors`` and the OSError reaches the caller, which then holds the batch's inputs unacknowledged
(gateway/upstream.py). All or nothing per batch, so a batch is never both spooled in part and sent again
whole. If even the truncation fails, the damaged segment is sealed: later appends go to a fresh segment
and reads stop at the last whole record, which is also where the next open cuts it. A ``head`` that cannot
be written is kept in memory only: a crash then replays some records again, it never loses one.

The bound is on bytes: an append that would take the spool past ``max_bytes`` raises :class:`SpoolFull`
and writes nothing. Every record in the spool stands for inputs already acknowledged to the broker, so a
full spool drops none of them: the caller holds the new batch's inputs unacknowledged instead (the broker
keeps the rest of the backlog) and tries again as the replay makes room.
"""
from __future__ import annotations

import errno
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
    sealed: bool = False  # bytes past ``size`` could not be cut off: append nothing more here


@dataclass(frozen=True)
class Position:
    """Where a read stopped: commit it once the records read are safely in Redis."""

    segment: int
    offset: int
    records: int        # records between the head and this position


class SpoolFull(Exception):
    """The batch would take the spool past its bound; nothing of it was written. ``fits_ever``: False
    when the batch alone is larger than the bound."""

    def __init__(self, message: str, *, fits_ever: bool = True) -> None:
        super().__init__(message)
        self.fits_ever = fits_ever


class Spool:
    """Append ``(stream, message)`` records at the tail, read them at the head. Thread-safe."""

    def __init__(self, directory: str | Path, max_bytes: int, *, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, max_bytes // SEGMENTS_PER_BOUND)
        self.fsync = fsync
        self.write_errors = 0
        """Appends that failed (full disk, I/O error) and were taken back since the spool was opened."""
        self._lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"cannot create spool directory {self.dir}: {e}") from e
        self._segments: list[_Segment] = []
        self._head_offset = 0
        self._tail: int | None = None  # raw descriptor of the last segment, opened for appending
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
            self._close_tail()

    def _close_tail(self) -> None:
        if self._tail is not None:
            try:
                os.close(self._tail)
            except OSError as e:
                log.warning("closing spool segment in %s: %s", self.dir, e)
            self._tail = None

    # writing ---------------------------------------------------------------------------------------
    def append(self, entries: list[tuple[str, bytes]]) -> None:
        """Write ``entries`` durably at the tail.

        Raises SpoolFull, writing nothing, when the batch would take the spool past ``max_bytes``; raises
        OSError (the disk's own: ENOSPC, EIO...) when the batch could not be written: none of it is then
        in the spool, and the failure is counted in ``write_errors``.
        """
        records = [self._pack(stream, message) for stream, message in entries]
        need = sum(len(rec) for rec in records)
        with self._lock:
            held = sum(s.size for s in self._segments)
            if held + need > self.max_bytes:
                raise SpoolFull(f"spool {self.dir} holds {held} bytes: {need} more would pass its bound "
                                f"of {self.max_bytes}", fits_ever=need <= self.max_bytes)
            # Where each segment stood before this batch, to take the batch back on a failed write.
            marks = {s.number: (s.size, s.records) for s in self._segments}
            try:
                for rec in records:
                    tail = self._tail_segment(len(rec))
                    _write_all(self._tail, rec)
                    tail.size += len(rec)
                    tail.records += 1
                if self._tail is not None and self.fsync:
                    os.fsync(self._tail)
            except OSError as e:
                self.write_errors += 1
                self._take_back(marks)
                log.error("spool %s: write failed (%s); %d records taken back", self.dir, e, len(records))
                raise

    def _take_back(self, marks: dict[int, tuple[int, int]]) -> None:
        """Cut every segment back to ``marks`` (number -> (size, records)); remove segments made since."""
        for seg in list(self._segments):
            if seg.number not in marks:
                if self._tail is not None and seg is self._segments[-1]:
                    self._close_tail()
                self._segments.remove(seg)
                try:
                    seg.path.unlink(missing_ok=True)
                except OSError as e:
                    log.error("spool %s: cannot remove %s (%s); it is cut when the spool is opened again",
                              self.dir, seg.path, e)
                continue
            seg.size, seg.records = marks[seg.number]
            try:
                os.truncate(seg.path, seg.size)
            except OSError as e:
                seg.sealed = True
                log.error("spool %s: cannot cut %s back to %d bytes (%s); sealed", self.dir, seg.path,
                          seg.size, e)
        if self._segments and self._tail is None and not self._segments[-1].sealed:
            try:
                self._tail = _open_append(self._segments[-1].path)
            except OSError as e:
                self._segments[-1].sealed = True
                log.error("spool %s: cannot reopen %s (%s); sealed", self.dir, self._segments[-1].path, e)
        if not self._segments:
            self._head_offset = 0
            self._write_head()
        elif self._segments[-1].sealed:
            self._close_tail()

    @staticmethod
    def _pack(stream: str, message: bytes) -> bytes:
        payload = msgpack.packb([stream, message], use_bin_type=True)
        return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload

    def _tail_segment(self, need: int) -> _Segment:
        last = self._segments[-1] if self._segments else None
        if last is None or last.sealed or (last.size + need > self.segment_bytes and last.size):
            number = last.number + 1 if last is not None else 1
            self._close_tail()
            seg = _Segment(number, self.dir / f"{number:010d}{_SUFFIX}")
            self._tail = _open_append(seg.path)
            self._segments.append(seg)
            if self.fsync:
                _fsync_dir(self.dir)  # the new file's name survives a power cut
            if len(self._segments) == 1:
                self._head_offset = 0
                self._write_head()
        return self._segments[-1]

    def _drop_segment(self, index: int) -> None:
        seg = self._segments.pop(index)
        if not self._segments:
            self._close_tail()
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
        """Persist the head; on failure (a full disk) keep it in memory: a crash then replays, not loses."""
        number = self._segments[0].number if self._segments else 0
        tmp = self.dir / "head.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, f"{number} {self._head_offset}\n".encode())
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / "head")
            if self.fsync:
                _fsync_dir(self.dir)
        except OSError as e:
            log.error("spool %s: cannot write the head (%s); kept in memory, records after %d:%d may be "
                      "handed on again after a crash", self.dir, e, number, self._head_offset)

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
            self._tail = _open_append(self._segments[-1].path)
            log.info("spool %s: %d records from an earlier run to hand on", self.dir, sum(s.records for s in self._segments))
        self._write_head()


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written (a write may be short); raises the disk's OSError."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # not expected from a regular file; never loop forever on it
            raise OSError(errno.EIO, "short write of 0 bytes")
        view = view[n:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
