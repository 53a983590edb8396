"""Shared fixtures: real mosquitto and redis-server processes on free loopback ports, data paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from privedge import servers

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PRIVEDGE_DATA", REPO.parent / "shared" / "data"))
FAST = os.environ.get("PRIVEDGE_FAST") == "1"


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


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real datasets (fsdd/, orl/); set-up guarantees they are beside the repository."""
    if not (DATA / "fsdd").is_dir() or not (DATA / "orl").is_dir():
        raise FileNotFoundError(f"real datasets not found under {DATA} (set PRIVEDGE_DATA)")
    return DATA
