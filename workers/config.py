"""Worker settings: typed, frozen, read once at the entry point.

Precedence (DESIGN.md "Command line"): flags, then ``PRIVEDGE_*`` environment variables, then defaults.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from models.runtimes import RUNTIMES  # the one definition; imports no torch

SOCKET_TIMEOUT_S = 10.0
"""Longest wait for one Redis reply, seconds (the worker's BLOCK is 100 ms by default)."""


class SettingsError(ValueError):
    """A setting has a value the worker cannot run with."""


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to log in; built from a ``redis://[user:pass@]host:port[/db]`` URL."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False

    @classmethod
    def from_dsn(cls, dsn: str, password: str | None = None) -> "RedisSettings":
        """Parse ``redis://[USER[:PASSWORD]@]HOST:PORT[/DB]`` or ``rediss://`` (TLS) URLs; the path, if
        any, is the database number. ``password`` is used when the URL carries none (e.g. from
        ``PRIVEDGE_REDIS_PASSWORD``, so that it need not appear on a command line)."""
        parts = urlsplit(dsn)
        if parts.scheme not in ("redis", "rediss"):
            raise SettingsError(f"redis URL must start with redis:// or rediss://, got {dsn!r}")
        try:
            db = int(parts.path.strip("/") or 0)
            port = parts.port or 6379
        except ValueError as e:
            raise SettingsError(f"bad redis URL {dsn!r}: {e}") from e
        return cls(host=parts.hostname or "127.0.0.1", port=port, db=db,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else password,
                   ssl=parts.scheme == "rediss")

    def client(self, **kwargs):
        """A redis-py client that returns bytes (messages are msgpack).

        Socket timeouts are bounded (``SOCKET_TIMEOUT_S``, well above any BLOCK the worker asks for): a
        connection whose far end vanished without a word (a half-open TCP connection) would otherwise
        hold a read forever, and the worker with it."""
        import redis  # the worker's only transport; imported here so that settings stay importable alone

        kwargs = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": 2.0,
                  "health_check_interval": 30, **kwargs}
        return redis.Redis(host=self.host, port=self.port, db=self.db, username=self.username,
                           password=self.password, ssl=self.ssl, **kwargs)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything one worker process needs.

    ``batch`` and ``block_ms`` are the XREADGROUP COUNT and BLOCK: a batch of 64 keeps the analyzer's
    matrix multiplies efficient while a 100 ms bound keeps an idle worker responsive to SIGTERM.
    """

    redis: RedisSettings = RedisSettings()
    bundles: tuple[Path, ...] = ()
    name: str | None = None                # consumer name; None -> hostname-pid-random
    prefix: str = "privedge"               # key prefix (schemas.names)
    batch: int = 64                        # messages per XREADGROUP, per stream
    block_ms: int = 100                    # XREADGROUP BLOCK, milliseconds
    threads: int = 1                       # torch and ONNX Runtime threads: N workers on N cores, no fights
    runtime: str = "auto"                  # onnx | torch | auto (ONNX Runtime when the bundle has the .onnx)
    reply_maxlen: int = 100_000            # MAXLEN ~ of each results stream, entries
    dead_maxlen: int = 10_000              # MAXLEN ~ of each dead-letter stream, entries
    claim_idle_ms: int = 30_000            # a pending entry idle this long belongs to a dead consumer
    claim_every_s: float = 5.0             # how often to look for such entries, seconds
    max_deliveries: int = 5                # delivered more often than this -> dead-letter
    stats_every_s: float = 5.0             # stats hash refresh period, seconds
    discover_every_s: float = 2.0          # SCAN for new gateways' streams this often, seconds (a new home's
    #                                        first entries wait at most this long; a SCAN costs O(keys))
    trim_every_s: float = 5.0              # XTRIM MINID below the acknowledged entries this often, seconds
    trim_retention_s: float = 30.0         # acknowledged entries younger than this are kept (inspection)
    max_streams: int = 10_000              # streams read at most (one per gateway and task): bounds each read
    # The provider's public key file; every bundle must carry its signature (models/signing.py). Default
    # PRIVEDGE_BUNDLE_KEY, also for settings built in code. None and not allow_unsigned: refuse to start.
    bundle_key: str | None = field(default_factory=lambda: os.environ.get("PRIVEDGE_BUNDLE_KEY") or None)
    allow_unsigned: bool = False           # load unsigned/wrongly signed bundles with a warning (development)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise SettingsError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if not self.bundles:
            raise SettingsError("a worker needs at least one --bundle")
        for name in ("batch", "threads", "max_deliveries", "reply_maxlen", "dead_maxlen", "max_streams"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.block_ms < 0 or self.claim_idle_ms < 0:
            raise SettingsError("block_ms and claim_idle_ms must be >= 0")
        if self.discover_every_s <= 0 or self.trim_every_s <= 0 or self.trim_retention_s < 0:
            raise SettingsError("discover_every_s and trim_every_s must be > 0, trim_retention_s >= 0")
        object.__setattr__(self, "bundles", tuple(Path(b) for b in self.bundles))


def env_default(name: str, default: str | None = None) -> str | None:
    """``PRIVEDGE_{NAME}`` from the environment, else ``default``."""
    return os.environ.get(f"PRIVEDGE_{name.upper()}", default)
