"""The secrets docker-compose.yml mounts: broker and Redis users, their password files, made in one step.

    python -m broker.compose_secrets --dir secrets --gateway home --device cam1 --device mic1

writes into ``secrets/`` (docker-compose.yml's ``secrets:`` name each file):

- ``mosquitto_passwd`` (mosquitto_passwd hashes) and ``mosquitto_acl``: the hardened broker's users (the
  gateway, each device, and ``health``, the broker healthcheck's read-only app user), as
  ``privedge broker add-*`` makes them (broker/secure.py);
- ``redis_acl``: the Redis users (broker/redis_acl.py: the gateway's, the workers', and ``health``, which
  may only PING), passwords stored as SHA-256;
- one ``*_password`` file per client, in clear, for the container that logs in with it:
  ``gateway_mqtt_password``, ``gateway_redis_password``, ``worker_redis_password``,
  ``mqtt_health_password``, ``redis_health_password``, ``device_<name>_password`` (for the sensors).

Passwords already in the folder are kept (run it again to add a device); new ones are random.

Modes. Compose mounts a file secret as a bind mount of the host file, keeping its owner and mode (it
cannot apply a secret's ``uid``/``gid``/``mode`` without a swarm), and each image runs as a user of its own
(``privedge``, ``redis``, ``mosquitto``), none the owner of the host file. So the files are 0644, the mode
Docker gives swarm secrets, and the folder is 0700: on the host only its owner (and root) reach them.
mosquitto, which wants its files owned by it, gets private copies when it starts (docker-compose.yml).
"""
from __future__ import annotations

import argparse
import secrets as random_secrets
import sys
import tempfile
from pathlib import Path

from broker import secure
from broker.redis_acl import AclUser, acl_file_text, gateway_user, worker_user

HEALTH_USER = "health"
"""The healthchecks' user on the broker (an app: reads results and statuses) and on Redis (PING only)."""
FILE_MODE = 0o644


def _password(folder: Path, name: str) -> str:
    """The password kept in ``folder/name``, or a new random one written there."""
    path = folder / name
    if path.exists():
        return path.read_text().strip()
    password = random_secrets.token_urlsafe(24)
    _write(path, password + "\n")
    return password


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(FILE_MODE)


def make_secrets(folder: str | Path, gateway: str = "home", devices: tuple[str, ...] = (),
                 prefix: str = "privedge") -> dict[str, Path]:
    """Write (or complete) the compose secrets in ``folder``; returns name -> file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # broker/secure.py's directory layout
        broker_dir = Path(tmp)
        clients = [(gateway, "gateway", "gateway_mqtt_password"), (HEALTH_USER, "app", "mqtt_health_password"),
                   *((d, "device", f"device_{d}_password") for d in devices)]
        for name, role, file in clients:
            secure.add_user(broker_dir, name, role, _password(folder, file), prefix=prefix)
        _write(folder / "mosquitto_passwd", (broker_dir / "passwd").read_text())
        _write(folder / "mosquitto_acl", (broker_dir / "acl").read_text())
    users = [gateway_user(gateway, _password(folder, "gateway_redis_password"), prefix),
             worker_user(_password(folder, "worker_redis_password"), prefix),
             AclUser(HEALTH_USER, _password(folder, "redis_health_password"), "")]
    _write(folder / "redis_acl", acl_file_text(users))
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m broker.compose_secrets", description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("secrets"), help="the secrets folder (default ./secrets)")
    p.add_argument("--gateway", default="home", help="the gateway's id (default home)")
    p.add_argument("--device", action="append", default=[], help="a sensor to enrol (repeatable)")
    p.add_argument("--prefix", default="privedge")
    a = p.parse_args(argv)
    try:
        files = make_secrets(a.dir, a.gateway, tuple(a.device), a.prefix)
    except secure.BrokerToolError as e:
        print(f"{p.prog}: {e}", file=sys.stderr)
        return 1
    print(f"{a.dir}: {', '.join(files)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
