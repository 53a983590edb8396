"""Install verified copies of bundles into a directory the services read (a deployment's bundles volume).

``privedge bundle install --key PUB --part home|full --into DEST SRC...`` checks each source bundle against
the provider's public key, copies the files of its part (``home``: all but ``analyzer.*``, which a home
must never hold) into ``DEST/<name of SRC>``, verifies the copy again, and makes it readable by every user
and writable by none (files 0444, folders 0555): the services run as their own users and must not be able
to change what they load. A copy is made beside its destination and renamed into place, so a service never
sees half a bundle; an installed bundle that is already the same signed listing is left as it is.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from models import signing


def install_bundle(src: str | os.PathLike, into: str | os.PathLike, key: str | os.PathLike,
                   part: str = "full") -> tuple[Path, bool]:
    """Install bundle ``src`` as ``into/<src's name>``; returns (installed path, whether it changed).
    Raises SignatureError when the source (or the copy) does not verify with ``key``."""
    if part not in ("full", "home"):
        raise ValueError(f"part must be full or home, got {part!r}")
    src, into = Path(src), Path(into)
    verified = signing.verify_bundle(src, key, part)
    dest = into / src.name
    if dest.is_dir() and _same(dest, src, key, part):
        return dest, False
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{src.name}.", dir=into))
    try:
        for name in (*verified.files, signing.SIGNATURE):
            shutil.copyfile(src / name, tmp / name)
            (tmp / name).chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        signing.verify_bundle(tmp, key, part)
        tmp.chmod(0o555)
        old = None
        if dest.exists():
            old = into / f".{src.name}.old"
            _remove(old)
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise
    return dest, True


def _same(dest: Path, src: Path, key, part: str) -> bool:
    """Whether ``dest`` verifies and carries the same signature as ``src``."""
    try:
        signing.verify_bundle(dest, key, part)
    except signing.SignatureError:
        return False
    return (dest / signing.SIGNATURE).read_bytes() == (src / signing.SIGNATURE).read_bytes()


def _remove(path: Path) -> None:
    if not path.exists():
        return
    for p in [path, *path.rglob("*")]:  # read-only folders: make them writable to empty them
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(path)
