"""Redis ACL users for privedge: each client may run only the commands it needs, on the keys it owns.

- gateway ``gateway-{id}``: XADD, XLEN and XINFO GROUPS (its backlog) on its own streams only, ``{p}:features:*:{id}`` (and
  ``{p}:media:*:{id}`` for the cloud-only baseline; schemas.names); XREAD/XTRIM of its own results stream
  ``{p}:results:{id}``, GET/SET of its cursor and its dedup window; nothing else. It cannot read
  features, write or trim another home's streams, nor read another home's results. (An ACL cannot refuse
  XADD's MAXLEN or MINID argument, so a gateway can drop its own unread entries: that harms its own home
  only. The workers trim every stream below what they have acknowledged.)
- worker ``worker``: SCAN (to discover the streams, one per gateway), XREADGROUP, XAUTOCLAIM, XPENDING,
  XACK, XGROUP CREATE, XINFO GROUPS, EXISTS and XTRIM on the features and media streams, TIME; XADD to
  results and dead-letter streams only (it cannot add features).
- ``default`` (the anonymous user) is switched off.
- every user may also ask a Redis Cluster for its slot map and the commands' key positions
  (:data:`CLUSTER_CLIENT`), and WAIT for replicas (the gateway's ``redis_wait_replicas``, the workers'
  ``wait_replicas``).

On a Redis Cluster the same file is given to every node (``--aclfile`` on each: ACLs are per node); the
keys keep their patterns, the hash tags (schemas.names) sit inside them.

Redis 7 ACL selectors (the parenthesised groups) pair commands with keys: a command runs when the root
rules or one selector allow both the command and every key it touches.

Write an ACL file for ``redis-server --aclfile FILE`` (passwords stored as SHA-256, never in clear)::

    python -m broker.redis_acl --gateway home --out deploy/users.acl

Passwords come from ``PRIVEDGE_REDIS_PASSWORD_<USER>`` (``-`` as ``_``, upper case, e.g.
``PRIVEDGE_REDIS_PASSWORD_GATEWAY_HOME``) or are generated and printed once.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from schemas.names import Names, check_name

WORKER_USER = "worker"
_BASE = "reset on -@all +ping"  # redis-py's CLIENT SETINFO on connect may be refused: it ignores that
CLUSTER_CLIENT = "+cluster|slots +cluster|shards +command +asking"
"""What redis-py's RedisCluster asks of a Redis Cluster besides the data: the slot map (CLUSTER SLOTS or
SHARDS), the commands' key positions (COMMAND), and ASKING while a slot moves. Metadata only; on one Redis
they are refused or harmless, so every user gets them and the same ACL file serves both."""


@dataclass(frozen=True)
class AclUser:
    """One Redis user: its name, password and ACL rules (without the password part)."""

    name: str
    password: str = field(repr=False)
    rules: str

    def line(self, *, hashed: bool = True) -> str:
        """The ``user ...`` line of an ACL file; ``hashed`` stores the SHA-256 instead of the password."""
        secret = "#" + hashlib.sha256(self.password.encode()).hexdigest() if hashed else ">" + self.password
        return f"user {self.name} {_BASE} {secret} {self.rules}"

    def url(self, host: str, port: int, db: int = 0) -> str:
        """``redis://USER:PASSWORD@HOST:PORT/DB`` for this user (what --redis takes)."""
        from urllib.parse import quote

        return f"redis://{quote(self.name, safe='')}:{quote(self.password, safe='')}@{host}:{port}/{db}"


def gateway_user(gateway_id: str, password: str, prefix: str = "privedge") -> AclUser:
    """The ACL user of gateway ``gateway_id``: adds to (and measures) its own features or media streams,
    reads and trims its own results."""
    names = Names(prefix)
    gw = check_name(gateway_id, "gateway id")
    results = names.results(gw)
    own = " ".join(f"~{pattern}" for pattern in names.gateway_stream_patterns(gw))
    rules = (f"{CLUSTER_CLIENT} +wait +xadd +xlen +xinfo|groups {own} "
             f"(+xread +xtrim +get +set ~{results} ~{names.results_cursor(gw)}) "
             # The results relay's dedup window (gateway/results.py), written with the cursor.
             f"(+zadd +zrange +zremrangebyrank ~{names.results_seen(gw)})")
    return AclUser(f"gateway-{gw}", password, rules)


def worker_user(password: str, prefix: str = "privedge", name: str = WORKER_USER) -> AclUser:
    """The ACL user of the workers: consumes features (or media), writes results and dead letters."""
    n = Names(prefix)
    rules = (f"{CLUSTER_CLIENT} +wait +scan +xreadgroup +xautoclaim +xpending +xack +xgroup|create +xinfo|groups "
             f"+xtrim +exists +time +multi +exec +discard ~{n.all_features_pattern()} ~{n.all_media_pattern()} "
             f"(+xadd ~{n.results_pattern()} ~{n.dead_pattern()})")
    return AclUser(check_name(name, "Redis user"), password, rules)


DEFAULT_USER = "user default off resetpass +@all ~* &*"
"""The anonymous user: off, so no client can use it. It keeps its permissions because redis-server 7.0
replays a MULTI/EXEC from the append-only file as this user: with ``-@all`` every worker transaction
(results and XACKs) would be refused at load and silently lost across a restart."""


def acl_file_text(users: list[AclUser], *, hashed: bool = True) -> str:
    """An ACL file: the anonymous ``default`` user off, then one line per user."""
    return "\n".join([DEFAULT_USER, *(u.line(hashed=hashed) for u in users)]) + "\n"


def _password_for(user: str) -> tuple[str, bool]:
    """(password, generated?) for ``user`` from the environment, else a fresh random one."""
    env = "PRIVEDGE_REDIS_PASSWORD_" + user.replace("-", "_").upper()
    if os.environ.get(env):
        return os.environ[env], False
    return secrets.token_urlsafe(24), True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m broker.redis_acl", description=__doc__.splitlines()[0])
    p.add_argument("--gateway", action="append", required=True, help="gateway id (repeat per home)")
    p.add_argument("--prefix", default="privedge")
    p.add_argument("--out", type=Path, required=True, help="ACL file to write (redis-server --aclfile)")
    a = p.parse_args(argv)
    users = [gateway_user(g, "", a.prefix) for g in a.gateway] + [worker_user("", a.prefix)]
    filled = []
    for u in users:
        password, generated = _password_for(u.name)
        if generated:
            print(f"{u.name}: {password}")
        filled.append(AclUser(u.name, password, u.rules))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(acl_file_text(filled))
    a.out.chmod(0o600)
    print(f"wrote {a.out} ({len(filled)} users; default user off)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
