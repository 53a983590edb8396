"""The benchmark's comparison baselines, as processes of their own beside privedge's split services.

``privedge bench`` (bench/pipeline.py) compares three ways to serve the same inputs, on the same broker
and the same Redis (DESIGN.md, "Benchmarks"):

- ``split`` (privedge): ``privedge gateway`` (extractor at home, features upstream) and ``privedge worker``;
- ``cloud_only``: ``python -m bench.baselines.cloud_home`` (the validated media upstream as MediaMessages,
  nothing decoded at home) and ``python -m bench.baselines.cloud_worker`` (decodes the media and runs the
  whole network);
- ``local_only``: ``python -m bench.baselines.local_home`` (the whole network at home, each Result straight
  to MQTT; nothing goes up).

They are the gateway's and the worker's own services driven with other parts: the home processes run
:class:`gateway.service.Gateway` (the same intake and extraction loop) with a serving of their own whose
hand-on replaces the features upstream; the cloud worker runs :class:`workers.service.Worker` (the same
consumer loop) with an analysis of its own. So the services stay what the design says (the gateway never
needs analyzer weights, a worker never sees raw media) and the figures stay comparable.
"""
from __future__ import annotations

HOME_PROCESS = {"split": None, "cloud_only": "bench.baselines.cloud_home", "local_only": "bench.baselines.local_home"}
"""mode -> the module run as the home process (None: ``privedge gateway``)."""
CLOUD_PROCESS = {"split": None, "cloud_only": "bench.baselines.cloud_worker"}
"""mode -> the module run as the cloud worker (None: ``privedge worker``); local_only runs none."""
