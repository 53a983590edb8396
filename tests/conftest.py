"""Shared fixtures: real mosquitto and redis-server processes on free loopback ports, data paths, and
the provider key of the test session.

One Ed25519 provider key is made per session, before any test runs, and named in the environment:
``PRIVEDGE_SIGNING_KEY`` (every bundle the tests save or train is signed with it) and
``PRIVEDGE_BUNDLE_KEY`` (every gateway and worker the tests start pins its public half, in-process or as
a subprocess, which inherits the environment). So the tests run the services as they ship, refusing
unsigned bundles; the tests of that refusal sign, unsign or pin other keys explicitly.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from models import signing
from broker import redis_cluster as cluster_servers
from broker import servers

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PRIVEDGE_DATA", REPO.parent / "shared" / "data"))
FAST = os.environ.get("PRIVEDGE_FAST") == "1"
_KEY_DIR: Path | None = None


def pytest_configure(config) -> None:
    """The session's provider key, in the environment before any test (or fixture) makes a bundle."""
    global _KEY_DIR
    _KEY_DIR = Path(tempfile.mkdtemp(prefix="privedge-test-provider-"))
    key, pub = signing.generate_key(_KEY_DIR / "provider.key")
    os.environ[signing.ENV_SIGNING_KEY] = str(key)
    os.environ[signing.ENV_BUNDLE_KEY] = str(pub)


def pytest_unconfigure(config) -> None:
    if _KEY_DIR is not None:
        shutil.rmtree(_KEY_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def provider_key() -> tuple[Path, Path]:
    """(private, public) key files of the session's provider: what signs and what is pinned."""
    return Path(os.environ[signing.ENV_SIGNING_KEY]), Path(os.environ[signing.ENV_BUNDLE_KEY])


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh mosquitto broker for one test; yields the LocalServer (``.url``, ``.port``, ``.stop()``)."""
    server = servers.mosquitto(tmp_path / "mosquitto")
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server for one test; yields the LocalServer (``.url``, ``.port``, ``.stop()``)."""
    server = servers.redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A real local Redis Cluster for one test module: 3 masters and a replica each, joined by
    ``redis-cli --cluster create``; yields the LocalCluster (``.url``, ``.client()``, ``.kill_master_of()``)."""
    cluster = cluster_servers.redis_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real datasets (fsdd/, orl/); set-up guarantees they are beside the repository."""
    if not (DATA / "fsdd").is_dir() or not (DATA / "orl").is_dir():
        raise FileNotFoundError(f"real datasets not found under {DATA} (set PRIVEDGE_DATA)")
    return DATA
