"""TLS for the connections the services make: to the MQTT broker (``mqtts://``) and to Redis (``rediss://``).

One set of files per connection, all paths: the CA certificate that signed the server's certificate
(None: the system's trusted CAs), and a client certificate with its key for a server that asks for one
(mosquitto's ``require_certificate``, redis-server's ``tls-auth-clients``). Python's ``ssl`` reads them;
:meth:`TlsFiles.context` builds the context at settings time, so that a missing or unreadable file, or a
key that does not belong to its certificate, is a settings error that names the file, not a failed
handshake at the first connection. Hostnames are checked against the server certificate (its SAN).

A server whose certificate our CA did not sign is a settings problem, not an outage: the services refuse
to start on it (:func:`certificate_refused`) instead of retrying as if the server were down.
"""
from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.settings import SettingsError

SCHEMES = {"MQTT": ("mqtt", "mqtts"), "Redis": ("redis", "rediss")}
"""Connection -> (plain scheme, TLS scheme)."""
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "redis": 6379, "rediss": 6379}
"""Scheme -> the port when a URL names none (Redis's TLS port has no registered number of its own)."""


class TlsError(SettingsError):
    """A TLS file is missing, unreadable or inconsistent, or TLS files are set for a plain URL."""


@dataclass(frozen=True)
class TlsFiles:
    """The files of one TLS connection; ``what`` (``MQTT`` or ``Redis``) names it in errors."""

    what: str
    ca_file: str | None = None
    """PEM CA certificate(s) that the server's certificate must chain to; None: the system's CAs."""
    cert_file: str | None = None
    """PEM client certificate (its chain may follow), for a server that requires one."""
    key_file: str | None = None
    """PEM private key of ``cert_file`` (unencrypted); None: the key is in ``cert_file``."""

    @property
    def given(self) -> bool:
        """Whether any file is set."""
        return any((self.ca_file, self.cert_file, self.key_file))

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the server against ``ca_file`` (or the system's CAs), checks its
        hostname, and presents the client certificate when one is set. Raises TlsError naming the file."""
        if self.key_file and not self.cert_file:
            raise TlsError(f"{self.what} TLS: a key file ({self.key_file}) needs its certificate file too")
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"cannot read the {self.what} CA file {self.ca_file}: {e}") from e
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as e:
                raise TlsError(f"cannot load the {self.what} client certificate {self.cert_file} "
                               f"(key {self.key_file or 'in the same file'}): {e}") from e
        return ctx

    def validate(self, tls: bool) -> None:
        """Refuse files with a plain connection (it would silently go unencrypted); with TLS, read them."""
        if self.given and not tls:
            plain, secure = SCHEMES[self.what]
            raise TlsError(f"{self.what} TLS files are set but the URL is {plain}://: use {secure}:// "
                           f"(or drop the files)")
        if tls:
            self.context()

    def check(self, url: str) -> bool:
        """:func:`endpoint` and :meth:`validate` for ``url``; returns whether it asks for TLS."""
        tls = endpoint(self.what, url)[2]
        self.validate(tls)
        return tls


def endpoint(what: str, url: str) -> tuple[str, int, bool]:
    """``SCHEME://[USER[:PASSWORD]@]HOST[:PORT][/...]`` -> (host, port, tls) for the ``what`` connection
    (``MQTT``: mqtt/mqtts, default ports 1883/8883, a host required; ``Redis``: redis/rediss, 6379, default
    host 127.0.0.1); TlsError on another scheme, no host or a bad port."""
    plain, secure = SCHEMES[what]
    parts = urlsplit(url)
    if parts.scheme not in (plain, secure) or not (parts.hostname or what == "Redis"):
        raise TlsError(f"{what} URL must be {plain}://HOST:PORT or {secure}://HOST:PORT (TLS), got {_safe(url)!r}")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as e:
        raise TlsError(f"bad port in {what} URL {_safe(url)!r}") from e
    return parts.hostname or "127.0.0.1", port, parts.scheme == secure


def certificate_refused(error: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``error`` (itself, or what it was raised from or
    during, as redis-py's ConnectionError is), or None when it is something else."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ssl.SSLCertVerificationError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def add_flags(parser: argparse.ArgumentParser, key: str, what: str) -> None:
    """``--{key}-ca-file``, ``--{key}-cert-file`` and ``--{key}-key-file`` (settings ``{key}_ca_file``...)."""
    for part, help_ in (("ca", f"CA certificate that signed the {what} server's (PEM; default: the system's)"),
                        ("cert", f"client certificate for a {what} server that requires one (PEM)"),
                        ("key", "the private key of that client certificate (PEM)")):
        parser.add_argument(f"--{key}-{part}-file", help=help_)


def _safe(url: str) -> str:
    """``url`` without a password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
