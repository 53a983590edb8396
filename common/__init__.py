"""What the gateway and the worker share, one concept per module:

- ``settings``: loading settings from a config file, the environment and flags, unknown keys refused;
- ``redis_connection``: :class:`~common.redis_connection.RedisSettings` (from a URL) and the client
  built from it (bounded timeouts, health checks, redis-py's retry with jitter);
- ``tls``: the ``mqtts://`` and ``rediss://`` URLs and their files (CA, client certificate and key);
- ``backoff``: the doubling, jittered pause between failed tries of a loop step;
- ``warm_up``: one dummy inference before serving;
- ``top_k``: the scores a Result keeps.

It imports nothing of privedge's but ``schemas``; neither service imports the other.
"""
