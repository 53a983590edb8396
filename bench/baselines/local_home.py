"""The local-only baseline: the whole network at home, each Result straight to MQTT; nothing goes up.

``python -m bench.baselines.local_home`` takes the flags of ``privedge gateway`` and runs its service
(intake, extraction loop) with :class:`LocalOnlyServing`: each bundle's uncut network
(``models.bundle.load_full``, so the bundle's signature is checked over every file, ``analyzer.*`` too),
no Redis, and a hand-on that publishes each input's Result JSON on ``{p}/{device}/result`` (QoS 1) and
then acknowledges the input.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from gateway.config import GatewaySettings
from gateway.extraction import ExtractionLoop, Ready
from gateway.service import Gateway, build_parser, main as gateway_main
from common.top_k import top_k
from schemas import Result, make_id

PROG = "python -m bench.baselines.local_home"

class ResultsAtHome:
    """The whole network at home; its Results published to the devices' result topics."""

    def __init__(self, full_model: Any) -> None:
        self.network = full_model  # models.serving.FullModel

    def run(self, inputs: list[np.ndarray]) -> np.ndarray:
        return self.network.predict_batch(inputs)  # (B, C) probabilities

    def hand_on(self, loop: ExtractionLoop, ready: list[Ready], probs: np.ndarray) -> None:
        t0 = time.perf_counter()
        for r, p in zip(ready, probs):  # p: (C,) probabilities
            best = top_k(p, loop.labels)  # the same scores a worker's Result keeps (common.top_k)
            result = Result(id=make_id(loop.s.id, r.device, r.seq, r.media.boot), task=loop.task,
                            model=loop.model_id, label=best[0][0], score=best[0][1], scores=dict(best), ts=r.ts,
                            ts_done=time.time(), worker=loop.s.id)
            loop.intake.publish(loop.names.result(r.device), result.to_json(), qos=1)
            loop.acknowledge([r])
        loop.metrics.inc("results_relayed", len(ready))
        loop.metrics.observe("relay", time.perf_counter() - t0, len(ready))


class LocalOnlyServing:
    """The home of the local-only baseline: whole networks, no cloud."""

    mode = "local_only"
    uses_cloud = False

    def open_bundle(self, d: str, settings: GatewaySettings) -> tuple[Any, dict]:
        from models.bundle import load_full
        from models.signing import check_bundle

        # The provider's signature first: nothing is unpickled or run from an unauthenticated bundle.
        check_bundle(d, key=settings.bundle_key, allow_unsigned=settings.allow_unsigned, part="full")
        model = load_full(d, runtime=settings.runtime, threads=settings.torch_threads)
        return model, model.manifest

    def hand_on(self, gateway: Gateway, kind: str, network: Any, manifest: dict) -> ResultsAtHome:
        return ResultsAtHome(network)


def main(argv: list[str] | None = None) -> int:
    return gateway_main(argv, LocalOnlyServing(),
                        build_parser(PROG, "the local-only baseline: the whole network at home"))


if __name__ == "__main__":
    sys.exit(main())
