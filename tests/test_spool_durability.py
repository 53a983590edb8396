"""The spool on a failing or full disk, and its crash consistency (directory fsyncs).

Write errors are injected at ``os.write`` / ``os.fsync`` (a real full disk gives a short write, then
ENOSPC); one test also fills a real size-limited tmpfs, mounted in a private mount namespace.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from gateway import spool as spool_mod
from gateway.spool import Spool
from tests.conftest import REPO


def _drain(spool: Spool) -> list[bytes]:
    out = []
    while spool.pending:
        records, pos = spool.read(1000)
        out += [m for _, m in records]
        spool.commit(pos)
    return out


def _on_disk(directory) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.seg"))


class DiskFullAfter:
    """``os.write`` replacement: lets ``budget`` bytes through, then writes what is left of the budget
    (a short write) and raises ENOSPC, as a full disk does."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.real = os.write

    def __call__(self, fd: int, data) -> int:
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.real(fd, bytes(data[:self.budget]))
        self.budget -= n
        return n


@pytest.mark.parametrize("budget", [0, 7, 1500, 5000])
def test_a_write_failing_part_way_leaves_only_whole_records(tmp_path, monkeypatch, budget):
    """A batch whose write fails (at its start, inside a header, inside a record, in a later segment) is
    taken back whole: the error reaches the caller, it is counted, the files hold only the records of
    earlier batches, and a later append and a reopened spool see exactly those plus the new ones."""
    spool = Spool(tmp_path, 1 << 20, fsync=False)  # segments of 64 KiB
    before = [b"a%d" % i + b"x" * 1000 for i in range(5)]
    spool.append([("s", m) for m in before])
    size0 = spool.size_bytes
    monkeypatch.setattr(spool_mod.os, "write", DiskFullAfter(budget))
    # 70 records of about 1 KiB: the batch crosses into a second segment.
    batch = [("s", b"b%d" % i + b"y" * 1000) for i in range(70)]
    with pytest.raises(OSError) as err:
        spool.append(batch)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert spool.write_errors == 1
    assert spool.pending == 5 and spool.size_bytes == size0 == _on_disk(tmp_path)
    spool.append([("s", b"c0"), ("s", b"c1")])
    spool.close()
    again = Spool(tmp_path, 1 << 20, fsync=False)
    assert _drain(again) == before + [b"c0", b"c1"]


def test_an_fsync_error_takes_the_batch_back(tmp_path, monkeypatch):
    spool = Spool(tmp_path, 1 << 20, fsync=True)
    spool.append([("s", b"m0")])

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_mod.os, "fsync", eio)
    with pytest.raises(OSError):
        spool.append([("s", b"m1"), ("s", b"m2")])
    monkeypatch.undo()
    assert spool.pending == 1 and spool.write_errors == 1
    spool.close()
    assert _drain(Spool(tmp_path, 1 << 20, fsync=False)) == [b"m0"]


def test_a_head_that_cannot_be_written_does_not_stop_the_replay(tmp_path, monkeypatch):
    """commit() on a full disk keeps the head in memory: at worst, records are replayed again after a
    crash (ids make that harmless), never lost, and the replay loop is not ended by the error."""
    spool = Spool(tmp_path, 1 << 20, fsync=False)
    spool.append([("s", b"m%d" % i) for i in range(6)])
    records, pos = spool.read(2)
    monkeypatch.setattr(spool_mod.os, "write", DiskFullAfter(0))
    spool.commit(pos)
    monkeypatch.undo()
    assert spool.pending == 4
    records, _ = spool.read(10)
    assert [m for _, m in records] == [b"m%d" % i for i in range(2, 6)]
    spool.close()
    replayed = _drain(Spool(tmp_path, 1 << 20, fsync=False))
    assert replayed[-4:] == [b"m%d" % i for i in range(2, 6)]


def test_the_directory_is_fsynced_after_a_segment_or_the_head_is_made(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(spool_mod.os, "fsync", record)
    spool = Spool(tmp_path, 1 << 20, fsync=True)
    synced.clear()
    spool.append([("s", b"m0")])  # a new segment (and the head naming it)
    assert True in synced, "no directory fsync after creating a segment"
    records, pos = spool.read(1)
    synced.clear()
    spool.commit(pos)  # the head rewritten
    assert True in synced, "no directory fsync after rewriting the head"


_FULL_DISK = textwrap.dedent("""
    import errno, sys
    sys.path.insert(0, sys.argv[2])
    from gateway.spool import Spool
    d = sys.argv[1]
    spool = Spool(d, 16 << 20, fsync=True)  # the bound is far above what the filesystem holds
    kept, failures, i = [], 0, 0
    while failures < 3:
        batch = [b"r%d-" % (i + k) + b"z" * 700 for k in range(5)]
        i += 5
        try:
            spool.append([("s", m) for m in batch])
            kept += batch
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            failures += 1
    assert spool.pending == len(kept), (spool.pending, len(kept))
    spool.close()
    again = Spool(d, 16 << 20, fsync=True)
    got = []
    while again.pending:
        records, pos = again.read(100)
        got += [m for _, m in records]
        again.commit(pos)
    assert got == kept, (len(got), len(kept))
    assert spool.write_errors == 3, spool.write_errors
    again.append([("s", b"after")])  # room again once the spool is handed on
    print("kept", len(kept))
""")


def test_a_spool_on_a_full_tmpfs_keeps_whole_records(tmp_path):
    """A real size-limited filesystem (tmpfs of 256 KiB in a private mount namespace): appends fail
    with ENOSPC once it is full, and the spool reopened on it replays exactly the records that were
    accepted."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not installed: cannot mount a size-limited filesystem here")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=256k tmpfs {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {probe.stderr.strip()}")
    run = subprocess.run(["unshare", "-rm", "sh", "-c",
                          f'mount -t tmpfs -o size=256k tmpfs {mnt} && exec "$0" "$1" "$2" "$3"',
                          sys.executable, str(script), str(mnt / "spool"), str(REPO)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    kept = int(run.stdout.split()[-1])
    print(f"\n[spool on a full 256 KiB tmpfs] records kept={kept}")
    assert kept > 100

