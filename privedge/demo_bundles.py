"""The demo's bundles: trained once on the synthetic data with ``privedge train``, then found in a cache.

A cached bundle lives in ``{cache}/{key}/`` where the key is a hash of every setting that ``privedge
train`` would use (its parser's defaults included, so a new default embedding gets its own entry), the
training-code version and the torch version. Training runs ``privedge train`` in child processes, one per
modality and one torch thread each, writing to a temporary folder that is renamed into place only when
complete, so an interrupted run never leaves a half-written bundle in the cache.

The demo is its own provider: it signs what it trains with the provider key ``PRIVEDGE_SIGNING_KEY``
names or, without one, with an Ed25519 key it makes in the cache on first use (``{cache}/provider.key``,
mode 600, and ``provider.key.pub``), and pins the public half in the gateway and workers it starts
(``--bundle-key``), as a real provider and a real home would. A cached bundle that does not verify
with that key (made before bundles were signed, or by another key) is trained again rather than
trusted. Bundles given on the command line are not the demo's: the services pin
``PRIVEDGE_BUNDLE_KEY`` for them.
"""
from __future__ import annotations

import hashlib
import json
import re
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from models import signing
from privedge.children import Child

log = logging.getLogger(__name__)

MODALITIES = ("image", "speech")
# Settings that change how training runs, not what it produces: left out of the cache key.
_NOT_IN_KEY = ("out", "no_progress", "threads", "sign_key")
PROVIDER_KEY = "provider.key"
_PERCENT = re.compile(r"(\d+)%\|")


class BundleCacheError(RuntimeError):
    """Training a demo bundle failed."""


class TrainingInterrupted(BundleCacheError):
    """The stop event was set while bundles were being trained."""


def default_cache_dir() -> Path:
    """``$PRIVEDGE_CACHE/bundles``, else ``$XDG_CACHE_HOME/privedge/bundles``, else ``~/.cache/privedge/bundles``."""
    if os.environ.get("PRIVEDGE_CACHE"):
        return Path(os.environ["PRIVEDGE_CACHE"]) / "bundles"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "privedge" / "bundles"


def train_argv(modality: str, *, size: str = "small", epochs: int | None = None, seed: int = 0) -> list[str]:
    """The ``privedge train`` arguments (without ``--out``) for one demo bundle on the synthetic data.

    ``epochs`` sets the primary, Siamese and PCA-tuning epochs alike (None: the training defaults). The
    embedding is left to ``privedge train``'s default on purpose.
    """
    argv = ["--modality", modality, "--data", "synthetic", "--size", size, "--seed", str(seed)]
    if epochs is not None:
        argv += ["--epochs", str(epochs), "--siamese-epochs", str(epochs), "--analyzer-epochs", str(epochs)]
    return argv


def resolved_settings(argv: list[str]) -> dict:
    """Every setting ``privedge train argv`` would use, defaults filled in by its own parser."""
    from models.train_cli import build_parser

    args = vars(build_parser().parse_args([*argv, "--out", "-"]))
    return {k: v for k, v in sorted(args.items()) if k not in _NOT_IN_KEY}


def bundle_key(argv: list[str]) -> str:
    """``{modality}-{embedding}-{hash}``: the cache entry of the bundle that ``privedge train argv`` makes."""
    import torch

    from models import embedding_training

    settings = resolved_settings(argv)
    versioned = {"train": settings, "training_version": getattr(embedding_training, "TRAINING_VERSION", 0),
                 "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(versioned, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{settings['modality']}-{settings['embedding']}-{digest}"


def provider_key(cache: Path, *, create: bool = True) -> tuple[Path, Path]:
    """(private, public) files of the key the demo signs with: ``PRIVEDGE_SIGNING_KEY`` (its public half
    beside it as ``KEY.pub``), else the demo's own in ``cache``, made on first use (``create``)."""
    key = signing.signing_key_from_env()
    if key is not None:
        pub = signing.public_path(key)
        if not pub.is_file():
            raise signing.KeyFileError(f"{pub}: the public half of {signing.ENV_SIGNING_KEY} is missing")
        return key, pub
    key = Path(cache) / PROVIDER_KEY
    if not create:
        return key, signing.public_path(key)
    try:
        signing.generate_key(key)
    except signing.KeyFileError:
        if not (key.is_file() and signing.public_path(key).is_file()):
            raise
    return key, signing.public_path(key)


def cached_bundle(cache: Path, key: str, pub: Path | None = None) -> Path | None:
    """The complete bundle stored under ``key``, signed by the provider key whose public half is ``pub``
    (default: that of :func:`provider_key`); or None."""
    d = Path(cache) / key
    pub = pub or provider_key(cache, create=False)[1]
    if not ((d / "manifest.json").is_file() and (d / "extractor.pt").is_file() and pub.is_file()):
        return None
    try:
        signing.verify_bundle(d, pub, "full")
    except signing.SignatureError as e:
        log.info("cached bundle %s does not verify (%s): training it again", d, e)
        return None
    return d


@dataclass
class DemoBundle:
    """One bundle the demo serves; ``train_s`` is the training time when it was made by this run."""

    modality: str
    path: Path
    key: str | None = None
    train_s: float | None = None
    public_key: Path | None = None
    """The provider key the bundle is signed with, when the demo signed it (None: given by the user)."""

    @property
    def manifest(self) -> dict:
        return json.loads((self.path / "manifest.json").read_text())

    @classmethod
    def given(cls, path: str | Path) -> "DemoBundle":
        """A bundle named on the command line; BundleCacheError when it cannot be read."""
        try:
            return cls(json.loads((Path(path) / "manifest.json").read_text())["modality"], Path(path))
        except (OSError, ValueError, KeyError) as e:
            raise BundleCacheError(f"cannot read bundle {path}: {e}") from e


def training_percent(log_text: str) -> int | None:
    """The last percentage a ``privedge train`` progress bar wrote into its log, if any."""
    found = _PERCENT.findall(log_text)
    return int(found[-1]) if found else None


def ensure_bundles(cache: Path, argvs: dict[str, list[str]], stop: threading.Event, *, log_dir: Path,
                   report: Callable[[dict[str, int | None], float], None] | None = None) -> list[DemoBundle]:
    """The cached bundle for each ``modality -> train argv``, training those that are missing (in
    parallel child processes, logs in ``log_dir``). ``report({modality: percent}, elapsed_s)`` is called
    about once a second while training. Raises BundleCacheError when training fails, TrainingInterrupted
    when ``stop`` is set."""
    cache = Path(cache)
    out: list[DemoBundle] = []
    jobs: list[tuple[DemoBundle, Child, Path]] = []
    cache.mkdir(parents=True, exist_ok=True)
    sign_key, pub = provider_key(cache)
    try:
        for modality, argv in argvs.items():
            key = bundle_key(argv)
            found = cached_bundle(cache, key, pub)
            if found is not None:
                log.info("%s bundle from cache %s", modality, found)
                out.append(DemoBundle(modality, found, key, public_key=pub))
                continue
            tmp = cache / f".{key}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            cmd = [sys.executable, "-m", "privedge.cli", "train", *argv, "--out", str(tmp), "--threads", "1",
                   "--sign-key", str(sign_key)]
            child = Child(f"train-{modality}", cmd, log_dir).start()
            bundle = DemoBundle(modality, cache / key, key, train_s=None, public_key=pub)
            jobs.append((bundle, child, tmp))
        t0 = next_report = time.monotonic()
        pending = list(jobs)
        while pending:
            if stop.wait(0.2):
                raise TrainingInterrupted("interrupted while training (nothing was cached)")
            if report is not None and time.monotonic() >= next_report:
                next_report += 1.0
                report({b.modality: training_percent(c.tail()) for b, c, _ in pending}, time.monotonic() - t0)
            for job in list(pending):
                bundle, child, tmp = job
                rc = child.poll()
                if rc is None:
                    continue
                pending.remove(job)
                if rc != 0:
                    raise BundleCacheError(f"privedge train ({bundle.modality}) exited with status {rc}:\n"
                                           f"{child.tail(1000)}")
                bundle.train_s = round(time.monotonic() - t0, 1)
                shutil.rmtree(bundle.path, ignore_errors=True)
                os.replace(tmp, bundle.path)
                log.info("%s bundle trained in %.0f s: %s", bundle.modality, bundle.train_s, bundle.path)
                out.append(bundle)
    finally:
        for _, child, tmp in jobs:
            child.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    order = {m: i for i, m in enumerate(argvs)}
    return sorted(out, key=lambda b: order[b.modality])


def key_args(bundles: list[DemoBundle]) -> list[str]:
    """``--bundle-key PUB`` for the services, when the demo signed every bundle with one key; else no
    flag (the services pin ``PRIVEDGE_BUNDLE_KEY``, or refuse)."""
    keys = {b.public_key for b in bundles}
    return ["--bundle-key", str(keys.pop())] if len(keys) == 1 and None not in keys else []
