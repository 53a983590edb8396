"""Where Redis is, how to log in, and the one way both services build a client from that.

The client's timeouts are bounded so that a dead server cannot hang a loop: a connection whose far end
vanished without a word (a half-open TCP connection) would otherwise hold a read forever.

Inside redis-py a failed command is retried once, and only on a connection error (a connection Redis
closed since its last use: a restart, an idle timeout), with redis-py's ``Retry`` and
``ExponentialWithJitterBackoff``. A timeout is not retried there: a path that hangs would hang again, and
redis-py's default (10 tries, on timeouts too) kept the gateway waiting up to ten socket timeouts inside
one XADD while Redis was unreachable, instead of spooling. What to do after a failure belongs to the
services' own loops: spool, hold, or back off between steps (:mod:`common.backoff`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from common.settings import SettingsError
from common.tls import TlsFiles, endpoint

SOCKET_TIMEOUT_S = 10.0
"""Longest wait for one Redis reply, seconds (above any BLOCK the services ask for; the gateway asks for
its results BLOCK plus 5 s instead)."""
CONNECT_TIMEOUT_S = 2.0
"""Longest wait for a TCP connection to Redis, seconds."""
HEALTH_CHECK_INTERVAL_S = 30
"""A pooled connection idle this long is PINGed before use, seconds."""
COMMAND_RETRIES = 1
"""Retries of one command on a connection error, inside redis-py (none on a timeout)."""
COMMAND_RETRY_BASE_S = 0.01
"""First delay of those retries, seconds (doubling, with jitter)."""
COMMAND_RETRY_CAP_S = 1.0
"""Largest delay of those retries, seconds."""


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to log in; built from a ``redis://[user:pass@]host:port[/db]`` URL
    (``rediss://`` for TLS, with the files of :class:`~common.tls.TlsFiles`)."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ca_file: str | None = None
    """TLS: the CA certificate that signed the server's (None: the system's CAs)."""
    cert_file: str | None = None
    """TLS: a client certificate, for a server with ``tls-auth-clients yes`` (redis-server's default)."""
    key_file: str | None = None
    """TLS: that certificate's private key."""

    def __post_init__(self) -> None:
        self.tls.validate(self.ssl)

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles("Redis", self.ca_file, self.cert_file, self.key_file)

    @classmethod
    def from_dsn(cls, dsn: str, password: str | None = None, *, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None) -> "RedisSettings":
        """Parse ``redis://[USER[:PASSWORD]@]HOST:PORT[/DB]`` or ``rediss://`` (TLS) URLs; the path, if
        any, is the database number. ``password`` is used when the URL carries none (e.g. from
        ``PRIVEDGE_REDIS_PASSWORD``, so that it need not appear on a command line). The TLS files are
        checked here (readable, and only with ``rediss://``); SettingsError otherwise."""
        host, port, tls = endpoint("Redis", dsn)
        parts = urlsplit(dsn)
        try:
            db = int(parts.path.strip("/") or 0)
        except ValueError as e:
            raise SettingsError(f"bad redis URL {dsn!r}: {e}") from e
        return cls(host=host, port=port, db=db,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else password,
                   ssl=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file)

    def client(self, **kwargs):
        """A redis-py client that returns bytes (messages are msgpack); ``kwargs`` override the bounded
        defaults (``socket_timeout=...``). With TLS it verifies the server's certificate and hostname."""
        # Imported here so that settings stay importable (and printable) without a Redis client.
        import redis
        from redis.backoff import ExponentialWithJitterBackoff
        from redis.retry import Retry

        retry = Retry(ExponentialWithJitterBackoff(cap=COMMAND_RETRY_CAP_S, base=COMMAND_RETRY_BASE_S),
                      COMMAND_RETRIES, supported_errors=(redis.ConnectionError,))
        kwargs = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S,
                  "health_check_interval": HEALTH_CHECK_INTERVAL_S, "retry": retry, **kwargs}
        if self.ssl:
            kwargs = {"ssl_ca_certs": self.ca_file, "ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file,
                      **kwargs}
        return redis.Redis(host=self.host, port=self.port, db=self.db, username=self.username,
                           password=self.password, ssl=self.ssl, **kwargs)
