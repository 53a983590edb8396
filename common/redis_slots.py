"""Which keys may share one command or one transaction: all of them on one Redis, one hash slot's on a Cluster.

Redis Cluster runs a command or a MULTI/EXEC only when every key it names hashes to one slot (else
CROSSSLOT). privedge's keys carry hash tags for that (schemas.names): one task shard's streams and dead
letters share a slot, and one gateway's results, cursor and dedup window another. The services ask
:func:`by_slot` how to split a set of keys into groups that may go together, and run the same code on one
Redis (one group, as before) and on a Cluster (one group per slot). The slot itself is redis-py's own
CRC16 (``RedisCluster.keyslot``), nothing of ours.

:func:`queue_wait` adds ``WAIT numreplicas timeout`` after writes in a pipeline: WAIT counts the replicas
that have the writes *of its own connection*, so on a Cluster it goes once to every master the writes went
to, inside the same pipeline (which keeps one connection per node).
"""
from __future__ import annotations

from typing import Hashable, Iterable, TypeVar

K = TypeVar("K", str, bytes)


def is_cluster(client) -> bool:
    """Whether ``client`` is redis-py's RedisCluster (else a plain Redis client)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def slot_of(client, key: str | bytes) -> Hashable:
    """The hash slot of ``key`` on a Cluster; on one Redis, None (every key goes together)."""
    return client.keyslot(key) if is_cluster(client) else None


def by_slot(client, keys: Iterable[K]) -> dict[Hashable, list[K]]:
    """``keys`` grouped by :func:`slot_of`, in their first-seen order: one group on a plain Redis."""
    groups: dict[Hashable, list[K]] = {}
    for key in keys:
        groups.setdefault(slot_of(client, key), []).append(key)
    return groups


def queue_wait(pipe, client, keys: Iterable[str | bytes], replicas: int, timeout_ms: int) -> int:
    """Queue ``WAIT replicas timeout_ms`` on ``pipe`` for the writes to ``keys`` queued before it (once per
    master that holds one of them on a Cluster); returns how many WAIT replies the pipeline will carry."""
    if not is_cluster(client):
        pipe.execute_command("WAIT", replicas, timeout_ms)
        return 1
    nodes = {}
    for key in keys:
        node = client.get_node_from_key(key)
        nodes[node.name] = node
    for node in nodes.values():
        pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
    return len(nodes)
