"""Start and stop a local Redis Cluster: N masters (and a replica each) on free loopback ports.

Used by the cluster tests, the fault drill, the benchmark and ``privedge demo --redis-cluster N``: each node
is a ``redis-server --cluster-enabled yes`` (broker.servers.redis, its data in its own directory), and
``redis-cli --cluster create ... --cluster-replicas R --cluster-yes`` joins them and hands out the 16384
slots, as an operator would (README, "Scaling"). Each node's cluster bus listens on a port of its own
(``--cluster-port``) rather than port+10000, which could be past 65535 for a free port.

:meth:`LocalCluster.kill_master_of` is the fault drill's failure: SIGKILL the master holding a key, then
wait until its replica is promoted (after ``node_timeout_ms``) and the cluster serves every slot again.
"""
from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from broker import servers

log = logging.getLogger(__name__)

NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout of the local nodes: a master silent this long is failed over (Redis's default is
15 s; loopback needs far less, and the drills wait for it)."""


@dataclass
class LocalCluster:
    """The nodes of a local cluster (``nodes[:masters]`` start as masters); ``stop()`` ends them all."""

    nodes: list[servers.LocalServer]
    masters: int
    admin: tuple[str, str] | None = field(default=None, repr=False)  # (user, password) of an ACL admin
    paused: list = field(default_factory=list, repr=False)  # nodes stopped by pause_master_of

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL with every node as a seed (common.redis_connection)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def url_for(self, user: str, password: str) -> str:
        """The cluster URL for an ACL user."""
        from urllib.parse import quote

        return (f"redis+cluster://{quote(user, safe='')}:{quote(password, safe='')}@"
                + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes))

    def node_client(self, node: servers.LocalServer):
        """A plain client of one node (the admin user when the cluster has ACLs)."""
        import redis

        user, password = self.admin or (None, None)
        return redis.Redis(port=node.port, username=user, password=password, socket_timeout=5)

    def client(self):
        """A RedisCluster client (the admin user when the cluster has ACLs)."""
        from common.redis_connection import RedisSettings

        url = self.url_for(*self.admin) if self.admin else self.url
        return RedisSettings.from_dsn(url).client()

    def alive(self) -> list[servers.LocalServer]:
        """The nodes running and not paused."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None and n not in self.paused]

    def role(self, node: servers.LocalServer) -> str:
        """``master`` or ``slave`` (INFO replication)."""
        return self.node_client(node).info("replication")["role"]

    def master_of(self, key: str) -> servers.LocalServer:
        """The live node that serves ``key``'s slot now."""
        slot = self.node_client(self.alive()[0]).cluster("keyslot", key)
        for node in self.alive():
            for start, end, *_ in _slot_ranges(self.node_client(node)):
                if start <= slot <= end and self.role(node) == "master":
                    return node
        raise servers.ServerError(f"no live master serves slot {slot} of {key!r}")

    def kill_master_of(self, key: str, timeout: float = 30.0) -> tuple[servers.LocalServer, servers.LocalServer]:
        """SIGKILL the master of ``key`` and wait for its replica's promotion; returns (killed, promoted)."""
        old = self.master_of(key)
        old.kill()
        log.info("killed master 127.0.0.1:%d", old.port)
        return old, self._promoted(key, old, timeout)

    def pause_master_of(self, key: str, timeout: float = 30.0) -> tuple[servers.LocalServer, servers.LocalServer]:
        """SIGSTOP the master of ``key`` (a hung process, a long pause of its machine), wait for its
        replica's promotion, then SIGCONT it: it answers the commands its clients queued meanwhile as a
        master for a moment, then learns of the failover and turns replica, dropping what it took."""
        import signal

        old = self.master_of(key)
        old.proc.send_signal(signal.SIGSTOP)
        self.paused.append(old)
        log.info("paused master 127.0.0.1:%d", old.port)
        try:
            new = self._promoted(key, old, timeout)
        finally:
            old.proc.send_signal(signal.SIGCONT)
            self.paused.remove(old)
        return old, new

    def _promoted(self, key: str, old: servers.LocalServer, timeout: float) -> servers.LocalServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                new = self.master_of(key)
                if new is not old and self.ok():
                    log.info("127.0.0.1:%d promoted", new.port)
                    return new
            except Exception:  # noqa: BLE001 - nodes answer CLUSTERDOWN or refuse while it settles
                pass
            time.sleep(0.1)
        raise servers.ServerError(f"no replica of 127.0.0.1:{old.port} took over within {timeout} s")

    def ok(self) -> bool:
        """Whether every live node says cluster_state:ok."""
        try:
            return all(self.node_client(n).cluster("info")["cluster_state"] == "ok" for n in self.alive())
        except Exception:  # noqa: BLE001
            return False

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _slot_ranges(client) -> list[tuple[int, int]]:
    """This node's own slot ranges, from CLUSTER NODES (``myself``)."""
    raw = client.execute_command("CLUSTER NODES")
    text = raw.decode() if isinstance(raw, bytes) else raw
    if isinstance(text, dict):  # redis-py parses the reply into {address: info}
        mine = [info for info in text.values() if "myself" in info.get("flags", "")]
        slots = mine[0].get("slots", []) if mine else []
        return [(int(a), int(b)) for a, b in slots]
    for line in text.splitlines():
        parts = line.split()
        if "myself" in parts[2]:
            out = []
            for spec in parts[8:]:
                if spec.startswith("["):
                    continue  # a slot being migrated
                a, _, b = spec.partition("-")
                out.append((int(a), int(b or a)))
            return out
    return []


def redis_cluster(workdir: Path, masters: int = 3, replicas: int = 1, *, acl_users: list | None = None,
                  admin: tuple[str, str] | None = None, node_timeout_ms: int = NODE_TIMEOUT_MS,
                  appendonly: bool = False, timeout: float = 60.0) -> LocalCluster:
    """``masters`` masters with ``replicas`` replicas each on 127.0.0.1, joined into one cluster.

    ``acl_users`` (broker.redis_acl.AclUser) go into every node's ACL file; ``admin`` is then the (user,
    password) among them that redis-cli, the replicas (masteruser) and :class:`LocalCluster` log in as.
    """
    workdir = Path(workdir)
    count = masters * (1 + replicas)
    extra_auth = ["--masteruser", admin[0], "--masterauth", admin[1]] if admin else []
    nodes = []
    try:
        for i in range(count):
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(servers.free_port()),
                     # a replica of a dead master takes over without waiting for its data age to be judged
                     "--cluster-replica-validity-factor", "0", *extra_auth]
            nodes.append(servers.redis(workdir / f"node{i}", appendonly=appendonly, acl_users=acl_users,
                                       extra=extra))
        cli = [servers._find("redis-cli")]
        if admin:
            cli += ["--user", admin[0], "--pass", admin[1], "--no-auth-warning"]
        cmd = [*cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
               "--cluster-replicas", str(replicas), "--cluster-yes"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise servers.ServerError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}{done.stderr}")
        cluster = LocalCluster(nodes, masters, admin)
        _wait_ready(cluster, replicas, timeout)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    log.info("Redis Cluster of %d masters and %d replicas on %s", masters, masters * replicas, cluster.url)
    return cluster


def _wait_ready(cluster: LocalCluster, replicas: int, timeout: float) -> None:
    """Until every node says cluster_state:ok and every replica's link to its master is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            infos = [cluster.node_client(n).info("replication") for n in cluster.nodes]
            masters = [i for i in infos if i["role"] == "master"]
            linked = all(i.get("master_link_status") == "up" for i in infos if i["role"] == "slave")
            if (cluster.ok() and len(masters) == cluster.masters and linked
                    and all(i.get("connected_slaves", 0) >= replicas for i in masters)):
                return
        except Exception:  # noqa: BLE001 - nodes refuse or answer CLUSTERDOWN while the cluster forms
            pass
        time.sleep(0.1)
    raise servers.ServerError(f"the cluster on {cluster.url} did not become ready within {timeout} s")
