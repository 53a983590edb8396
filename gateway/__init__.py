"""privedge gateway: the home side of the pipeline (MQTT in, private features to Redis, results back).

Modules, one concept each:

- ``config``: :class:`~gateway.config.GatewaySettings` (frozen, validated) and ``load_settings``
  (flags > ``PRIVEDGE_*`` environment > YAML/TOML file > defaults, unknown keys refused; the loader is
  common.settings, shared with the worker);
- ``intake``: the paho 2.x client (persistent session, manual acknowledgement, availability with last
  will) and the bounded per-device queues it fills;
- ``audio``: joining AudioChunks into utterances, with length, count and time bounds;
- ``extraction``: one micro-batching loop per modality (decode, extractor, hand on, acknowledge);
- ``hand_on``: what the loops hand on: FeatureMessages to this home's features stream;
- ``upstream``: pipelined XADD with back-off (common.backoff) and the on-disk spool;
- ``results``: the results stream relayed to MQTT, duplicates dropped, cursor kept in Redis;
- ``metrics``: counters and stage timers, JSON stats and Prometheus;
- ``service``: :class:`~gateway.service.Gateway` (start/stop/wait) and ``main`` (``privedge gateway``).
"""
