"""The cloud-only baseline's home: every validated input upstream as a MediaMessage, nothing decoded here.

``python -m bench.baselines.cloud_home`` takes the flags of ``privedge gateway`` and runs its service
(intake, extraction loop, upstream, results relay) with :class:`CloudOnlyServing`: the bundle's manifest
only (its signature checked as a home's, no network loaded) and a hand-on that wraps each frame (the
camera's bytes, unchanged) or assembled utterance (one final chunk holding all of it) in a MediaMessage
for ``{p}:media:{task}:{gateway}``. :mod:`bench.baselines.cloud_worker` serves those.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from gateway.config import GatewaySettings
from gateway.extraction import ExtractionLoop, Ready, describe
from gateway.hand_on import StreamHandOn
from gateway.service import Gateway, build_parser, main as gateway_main
from schemas import SchemaError
from schemas.upload import MediaMessage

PROG = "python -m bench.baselines.cloud_home"


class MediaUpstream(StreamHandOn):
    """No network at home: the validated media themselves to the home's media stream."""

    network = None

    def run(self, inputs: list[np.ndarray]) -> np.ndarray:
        raise TypeError("the cloud-only home runs no network")

    def message(self, loop: ExtractionLoop, r: Ready, output: Any, now: float) -> bytes:
        # A frame just under the payload limit may not fit once wrapped: message() raises, refusal() says so.
        if loop.kind == "image":
            media, payload = r.media, r.items[0].payload  # the camera's bytes, unchanged
        else:
            media, payload = r.media.joined(), None  # one final chunk holding the whole utterance
        return MediaMessage.wrap(media, gateway=loop.s.id, ts_sent=now, task=loop.task, model=loop.model_id,
                                 reply=loop.reply, seq=r.seq, payload=payload).encode()

    def refusal(self, e: Exception) -> tuple[str, str]:
        return ("too large" if isinstance(e, SchemaError) else "undecodable media",
                f"media not sendable: {describe(e)}")


class CloudOnlyServing:
    """The home of the cloud-only baseline: manifests only, media upstream."""

    mode = "cloud_only"
    uses_cloud = True

    def open_bundle(self, d: str, settings: GatewaySettings) -> tuple[None, dict]:
        from models.bundle import read_manifest
        from models.signing import check_bundle

        check_bundle(d, key=settings.bundle_key, allow_unsigned=settings.allow_unsigned, part="home")
        return None, read_manifest(d)

    def hand_on(self, gateway: Gateway, kind: str, network: None, manifest: dict) -> MediaUpstream:
        return MediaUpstream(gateway.upstream,
                             [gateway.names.media(manifest["task"], gateway.s.id, n) for n in range(gateway.s.shards)])


def main(argv: list[str] | None = None) -> int:
    return gateway_main(argv, CloudOnlyServing(),
                        build_parser(PROG, "the cloud-only baseline's home: raw media to Redis"))


if __name__ == "__main__":
    sys.exit(main())
