"""Start and stop local mosquitto and redis-server processes on free loopback ports.

Used by ``privedge demo``, the integration tests and the benchmarks: each gets its own broker and Redis
with their data in a private directory, so that nothing touches a system-wide service. Both run with the
persistence settings privedge ships (broker/mosquitto.dev.conf, docker-compose.yml), so that the crash
drills (``LocalServer.kill``: SIGKILL) measure what a deployment would lose.
"""
from __future__ import annotations

import getpass
import logging
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """A server binary is missing or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find(binary: str) -> str:
    path = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()), None
    )
    if path is None:
        raise ServerError(f"{binary} not found: run scripts/setup.sh to install it")
    return path


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{what} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"{what} did not listen on port {port} within {timeout} s")


@dataclass
class LocalServer:
    """One server process we started; ``stop()`` ends it, ``start()`` runs it again on the same port."""

    name: str
    argv: list[str]
    port: int
    workdir: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)
    tls: bool = False
    """Whether ``port`` speaks TLS (``url`` is then mqtts:// or rediss://)."""

    @property
    def url(self) -> str:
        scheme = ("mqtt" if self.name == "mosquitto" else "redis") + ("s" if self.tls else "")
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> "LocalServer":
        logf = open(self.workdir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        logf.close()
        _wait_port(self.port, self.proc, self.name)
        log.info("%s listening on 127.0.0.1:%s (pid %s)", self.name, self.port, self.proc.pid)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def mosquitto(workdir: Path, port: int | None = None, *, persistence: bool = True,
              extra_conf: str = "") -> LocalServer:
    """A mosquitto 2 broker on 127.0.0.1:port with its config, persistence and log in ``workdir``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = workdir / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        # Run as whoever started us: as root, mosquitto would otherwise switch to the "mosquitto" user,
        # which cannot write the persistence file into a private temporary directory.
        f"user {getpass.getuser()}",
        "allow_anonymous true",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {workdir}/",
        # The settings we ship (broker/mosquitto.dev.conf explains them): a snapshot every second, and a
        # backlog held by the broker far above mosquitto's default of 1000 queued messages.
        "autosave_on_changes false",
        "autosave_interval 1",
        "max_queued_messages 1000000",
        "max_queued_bytes 1073741824",
        "max_inflight_messages 1000",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
    ]
    conf.write_text("\n".join(lines) + "\n" + extra_conf)
    return LocalServer("mosquitto", [_find("mosquitto"), "-c", str(conf)], port, workdir).start()


def redis(workdir: Path, port: int | None = None, *, appendonly: bool = False,
          password: str | None = None, acl_users: list | None = None,
          extra: list[str] | None = None, tls_files: tuple[Path, Path, Path] | None = None) -> LocalServer:
    """A redis-server on 127.0.0.1:port with its data in ``workdir`` (``appendonly``: the AOF settings we
    ship, appendfsync everysec).

    ``tls_files`` (CA, server certificate, server key): TLS only, on ``port`` (no plain port), and every
    client must present a certificate that CA signed (redis-server's ``tls-auth-clients yes``).

    ``acl_users`` (:class:`broker.redis_acl.AclUser`, e.g. ``gateway_user`` and ``worker_user``): write
    them to ``workdir/users.acl`` and start with ``--aclfile``; the anonymous default user is then off.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    listen = ["--port", str(port)]
    if tls_files:
        ca, cert, key = tls_files
        listen = ["--port", "0", "--tls-port", str(port), "--tls-ca-cert-file", str(ca), "--tls-cert-file", str(cert),
                  "--tls-key-file", str(key), "--tls-auth-clients", "yes"]
    argv = [_find("redis-server"), *listen, "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "yes" if appendonly else "no", "--protected-mode", "no"]
    if appendonly:
        # As shipped (docker-compose.yml): everysec loses nothing written before a kill of the process,
        # up to about a second on an OS crash or power cut (README, "Security").
        argv += ["--appendfsync", "everysec"]
    if password:
        argv += ["--requirepass", password]
    if acl_users:
        from broker.redis_acl import acl_file_text

        acl = workdir / "users.acl"
        acl.write_text(acl_file_text(list(acl_users)))
        acl.chmod(0o600)
        argv += ["--aclfile", str(acl)]
    argv += extra or []
    return LocalServer("redis", argv, port, workdir, tls=bool(tls_files)).start()
