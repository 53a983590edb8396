"""Worker settings: typed, frozen, read once at the entry point by the loader the gateway uses too
(common.settings).

Precedence (DESIGN.md "Command line"): flags, then environment variables, then a config file
(``--config FILE``, YAML or TOML, flat keys named like the fields below; unknown keys refused), then the
defaults. The environment variables are the worker's own few (:data:`ENVIRONMENT`), not one per field: a
worker started beside a gateway must not take the gateway's ``PRIVEDGE_BATCH``. In a file, ``redis`` is
the URL; the password comes from ``PRIVEDGE_REDIS_PASSWORD`` or the file named by ``redis_password_file``,
never from the config file. With a ``rediss://`` URL, ``redis_ca_file``, ``redis_cert_file`` and
``redis_key_file`` name the TLS files (common.tls).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from common.redis_connection import RedisSettings
from common.settings import Keys, SettingsError, check_type, keys_of, merge
from models.runtimes import RUNTIMES  # the one definition; imports no torch
from schemas.errors import BadName
from schemas.names import MAX_SHARDS, check_shard

DEFAULT_REDIS = "redis://127.0.0.1:6379"
"""The Redis URL when none is given."""

__all__ = ["DEFAULT_REDIS", "ENVIRONMENT", "KEYS", "RUNTIMES", "RedisSettings", "SettingsError",
           "WorkerSettings", "load_settings"]


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
    retry_initial_s: float = 0.1           # first pause after a failed step, seconds; doubles (with jitter)
    retry_max_s: float = 5.0               # largest pause after failed steps, seconds
    health_port: int | None = None         # /healthz, /readyz and /metrics on this port (common.health); None: off
    health_host: str = "127.0.0.1"         # the address they bind to
    shards: tuple[str, ...] = ()           # pin this worker to these shard numbers (e.g. "0,3"); () = every shard
    wait_replicas: int = 0                 # on a Cluster: WAIT for this many replicas of the results before the
    wait_timeout_ms: int = 100             # XACKs (0: no WAIT), at most this long (workers/service.py)

    @property
    def pinned_shards(self) -> tuple[int, ...]:
        """The shard numbers this worker reads (schemas.names), or () for every shard of its tasks."""
        return tuple(int(s) for s in self.shards)

    def __post_init__(self) -> None:
        for name, want in _FIELDS.items():
            if name != "redis":  # a URL in a file, a RedisSettings here
                check_type(name, want, getattr(self, name))
        if not isinstance(self.redis, RedisSettings):
            raise SettingsError(f"redis must be RedisSettings, got {type(self.redis).__name__}")
        if self.runtime not in RUNTIMES:
            raise SettingsError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if not self.bundles:
            raise SettingsError("a worker needs at least one --bundle")
        for name in ("batch", "threads", "max_deliveries", "reply_maxlen", "dead_maxlen", "max_streams"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.wait_replicas < 0 or self.wait_timeout_ms < 1:
            raise SettingsError("wait_replicas must be >= 0 and wait_timeout_ms >= 1")
        if self.block_ms < 0 or self.claim_idle_ms < 0:
            raise SettingsError("block_ms and claim_idle_ms must be >= 0")
        if self.discover_every_s <= 0 or self.trim_every_s <= 0 or self.trim_retention_s < 0:
            raise SettingsError("discover_every_s and trim_every_s must be > 0, trim_retention_s >= 0")
        if self.health_port is not None and not 0 <= self.health_port <= 65535:
            raise SettingsError(f"bad health_port {self.health_port}")
        if self.retry_initial_s < 0 or self.retry_max_s <= 0:
            raise SettingsError("retry_initial_s must be >= 0 and retry_max_s > 0")
        try:
            for shard in self.shards:
                check_shard(int(shard))
        except (ValueError, BadName) as e:
            raise SettingsError(f"shards must be shard numbers 0-{MAX_SHARDS - 1}, got {self.shards!r}") from e
        object.__setattr__(self, "bundles", tuple(Path(b) for b in self.bundles))


_FIELDS = keys_of(WorkerSettings, redis="str")

ENVIRONMENT = {"redis": "PRIVEDGE_REDIS", "redis_password": "PRIVEDGE_REDIS_PASSWORD",
               "redis_password_file": "PRIVEDGE_REDIS_PASSWORD_FILE", "name": "PRIVEDGE_WORKER_NAME",
               "prefix": "PRIVEDGE_PREFIX", "runtime": "PRIVEDGE_RUNTIME", "bundle_key": "PRIVEDGE_BUNDLE_KEY",
               "allow_unsigned": "PRIVEDGE_ALLOW_UNSIGNED", **{f"redis_{part}_file": f"PRIVEDGE_REDIS_{part.upper()}_FILE"
                                                               for part in ("ca", "cert", "key")}}
"""Setting -> the environment variable a worker reads it from; the other settings have none."""

REMOVED = {"mode": "a worker serves features only; the cloud-only baseline's worker, which decodes raw media, is "
                   "the benchmark's own process: python -m bench.baselines.cloud_worker"}
"""Settings that no longer exist -> what replaces them (refused with this message)."""

TLS_KEYS = {"redis_ca_file": "ca_file", "redis_cert_file": "cert_file", "redis_key_file": "key_file"}
"""The worker's TLS settings -> the RedisSettings fields they set (rediss:// only)."""

KEYS = Keys(types={**_FIELDS, "redis_password": "str | None", "redis_password_file": "str | None",
                   **{key: "str | None" for key in TLS_KEYS}},
            env=ENVIRONMENT, secrets=("redis_password",), removed=REMOVED)
"""What a worker's config file, environment and flags may set: every field (``redis`` as a URL), and the
Redis password (a secret: environment or ``redis_password_file`` only) and the TLS files."""


def load_settings(flags: Mapping[str, Any] | None = None, *, config_file: str | Path | None = None,
                  env: Mapping[str, str] | None = None) -> WorkerSettings:
    """Merge flags > environment (:data:`ENVIRONMENT`) > config file > defaults into validated settings.

    ``flags`` holds only the flags that were given (None values are ignored). Raises SettingsError on any
    invalid or unknown setting (the message names the key and where it came from)."""
    merged = merge(KEYS, flags, config_file=config_file, env=os.environ if env is None else env)
    password = merged.pop("redis_password", None) or None
    merged.pop("redis_password_file", None)
    tls = {field: merged.pop(key, None) for key, field in TLS_KEYS.items()}
    redis = RedisSettings.from_dsn(merged.pop("redis", DEFAULT_REDIS), password, **tls)
    return WorkerSettings(redis=redis, **merged)

