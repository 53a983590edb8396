"""Where Redis is, how to log in, and the one way both services build a client from that.

The client's timeouts are bounded so that a dead server cannot hang a loop: a connection whose far end
vanished without a word (a half-open TCP connection) would otherwise hold a read forever.

Inside redis-py a failed command is retried once, and only on a connection error (a connection Redis
closed since its last use: a restart, an idle timeout), with redis-py's ``Retry`` and
``ExponentialWithJitterBackoff``. A timeout is not retried there: a path that hangs would hang again, and
redis-py's default (10 tries, on timeouts too) kept the gateway waiting up to ten socket timeouts inside
one XADD while Redis was unreachable, instead of spooling. What to do after a failure belongs to the
services' own loops: spool, hold, or back off between steps (:mod:`common.backoff`).

A Redis Cluster is named by a ``redis+cluster://`` (or ``rediss+cluster://``) URL, or by several seed
nodes, ``redis://HOST:PORT,HOST:PORT,...``; the client is then redis-py's ``RedisCluster``, which learns the
slot map from the seeds (CLUSTER SLOTS) and follows MOVED/ASK redirections and failovers itself, and the
services run the same code on it (which keys may share a command is :mod:`common.redis_slots`). Inside
``RedisCluster`` a command that meets a connection error, a timeout or a cluster that is down (a failover
under way) is retried ``CLUSTER_RETRIES`` times, re-reading the slot map in between, with a short back-off:
the promotion of a replica takes about a node timeout, and the services' own loops wait beyond that.
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
CLUSTER_RETRIES = 3
"""Retries of one command inside RedisCluster (connection errors, timeouts, CLUSTERDOWN), re-reading the
slot map before each."""
CLUSTER_RETRY_BASE_S = 0.05
"""First delay of those retries, seconds (doubling, with jitter, up to COMMAND_RETRY_CAP_S)."""
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
"""URL schemes of a Redis Cluster: scheme -> TLS."""


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
    cluster: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    """A cluster's seed nodes (``host``/``port`` are the first of them)."""

    @classmethod
    def from_dsn(cls, dsn: str, password: str | None = None, *, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None) -> "RedisSettings":
        """Parse ``redis://[USER[:PASSWORD]@]HOST:PORT[/DB]`` or ``rediss://`` (TLS) URLs; the path, if
        any, is the database number. ``password`` is used when the URL carries none (e.g. from
        ``PRIVEDGE_REDIS_PASSWORD``, so that it need not appear on a command line). The TLS files are
        checked here (readable, and only with ``rediss://`` or ``rediss+cluster://``); SettingsError otherwise.

        A Redis Cluster: ``redis+cluster://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...]`` (``rediss+cluster``
        for TLS), or a ``redis://`` URL with more than one ``HOST:PORT``; its database is 0."""
        scheme = dsn.partition("://")[0] if isinstance(dsn, str) else ""
        netloc = urlsplit(dsn).netloc if scheme else ""
        if scheme in CLUSTER_SCHEMES or "," in netloc.rpartition("@")[2]:
            return cls._cluster_from_dsn(dsn, password, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
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

    @classmethod
    def _cluster_from_dsn(cls, dsn: str, password: str | None, **tls_files: str | None) -> "RedisSettings":
        scheme, _, rest = dsn.partition("://")
        if scheme not in (*CLUSTER_SCHEMES, "redis", "rediss"):
            raise SettingsError(f"a cluster URL starts with redis+cluster:// or rediss+cluster://, got {dsn!r}")
        netloc, _, path = rest.partition("/")
        if path.strip("/") not in ("", "0"):
            raise SettingsError(f"a Redis Cluster has database 0 only, got {dsn!r}")
        creds, _, hosts = netloc.rpartition("@")
        user, _, secret = creds.partition(":")
        nodes = []
        for hostport in hosts.split(","):
            host, _, port = hostport.rpartition(":")
            try:
                nodes.append((host or "127.0.0.1", int(port)))
            except ValueError:
                raise SettingsError(f"bad cluster node {hostport!r} in {dsn!r}: use HOST:PORT") from None
        return cls(host=nodes[0][0], port=nodes[0][1], db=0, username=unquote(user) if user else None,
                   password=unquote(secret) if secret else password,
                   ssl=CLUSTER_SCHEMES.get(scheme, scheme == "rediss"), cluster=True, nodes=tuple(nodes),
                   **tls_files)

    def client(self, **kwargs):
        """A redis-py client that returns bytes (messages are msgpack); ``kwargs`` override the bounded
        defaults (``socket_timeout=...``). With TLS it verifies the server's certificate and hostname."""
        # Imported here so that settings stay importable (and printable) without a Redis client.
        import redis
        from redis.backoff import ExponentialWithJitterBackoff
        from redis.retry import Retry

        retry = Retry(ExponentialWithJitterBackoff(cap=COMMAND_RETRY_CAP_S, base=COMMAND_RETRY_BASE_S),
                      COMMAND_RETRIES, supported_errors=(redis.ConnectionError,))
        if self.cluster:
            from redis.cluster import ClusterNode, RedisCluster

            retry = Retry(ExponentialWithJitterBackoff(cap=COMMAND_RETRY_CAP_S, base=CLUSTER_RETRY_BASE_S),
                          CLUSTER_RETRIES)
        kwargs = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S,
                  "health_check_interval": HEALTH_CHECK_INTERVAL_S, "retry": retry, **kwargs}
        if self.ssl:
            kwargs = {"ssl_ca_certs": self.ca_file, "ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file,
                      **kwargs}
        if self.cluster:
            return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.nodes], username=self.username,
                                password=self.password, ssl=self.ssl, **kwargs)
        return redis.Redis(host=self.host, port=self.port, db=self.db, username=self.username,
                           password=self.password, ssl=self.ssl, **kwargs)
