"""The cloud-only baseline's worker: MediaMessages in, decoded and run through the whole network.

``python -m bench.baselines.cloud_worker`` takes the flags of ``privedge worker`` and runs its consumer
loop (:class:`workers.service.Worker`: consumer group, batching per model, results, dead letters and acks
in one round trip) with :class:`MediaAnalysis`: the ``{p}:media:{task}:{gateway}`` streams that
:mod:`bench.baselines.cloud_home` writes, each bundle's uncut network (``models.bundle.load_full``), and
the media decoded here (pixels, PCM) and preprocessed as the gateway would.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common.warm_up import warm_up as common_warm_up
from models import bundle as bundles
from models.preprocess import pcm16_to_float
from models.signing import check_bundle
from schemas.errors import SchemaError
from schemas.media import ImageFrame, decode_image
from schemas.upload import MediaMessage
from workers.analysis import Rejected, Served, run_network, served_of
from workers.service import build_parser, main as worker_main

log = logging.getLogger(__name__)

PROG = "python -m bench.baselines.cloud_worker"


class MediaAnalysis:
    """Raw media from the media streams, through each bundle's whole network."""

    stream_kind = "media"

    def load(self, bundle_dirs: tuple[Path, ...], runtime: str = "torch", threads: int = 1, *,
             bundle_key: str | None = None, allow_unsigned: bool = False) -> dict[str, Served]:
        served: dict[str, Served] = {}
        for d in bundle_dirs:
            # The provider's signature first: nothing is unpickled or run from an unauthenticated bundle.
            check_bundle(d, key=bundle_key, allow_unsigned=allow_unsigned, part="full")
            net = bundles.load_full(d, runtime=runtime, threads=threads)
            s = served_of(bundles.read_manifest(d), net, net.predict_batch)
            served[s.model_id] = s
            warm_up(s)
            log.info("serving %s (task %s, cloud-only, %s) from %s", s.model_id, s.task, net.runtime, d)
        return served

    def decode(self, data: bytes, limits, origin=None) -> MediaMessage:
        """A media stream's entry (version 1 only: the compact envelope is for features)."""
        try:
            return MediaMessage.decode(data, limits)
        except SchemaError as e:
            raise Rejected(f"undecodable: {e.reason}", str(e)) from e

    def model_input(self, msg: MediaMessage, served: Served) -> np.ndarray:
        """The preprocessed media: decoded pixels or PCM, then what the gateway's extractor would do."""
        try:
            media = msg.media()
            if isinstance(media, ImageFrame):
                raw: Any = decode_image(media)
            else:
                raw = (_pcm_to_float(media.data, media.width, media.channels), media.rate)
            return np.asarray(served.net.preprocess(raw), dtype=np.float32)
        except SchemaError as e:
            raise Rejected(f"undecodable media: {e.reason}", str(e)) from e
        except (ValueError, OSError) as e:
            raise Rejected("undecodable media", str(e)) from e


def warm_up(served: Served) -> float:
    """One dummy inference on raw media through this baseline's whole network (common.warm_up), so that
    the speech front end compiles at start-up instead of on the first utterance; the seconds it took."""
    took = common_warm_up(served.net.preprocess, lambda xs: run_network(served, xs), served.modality)
    log.info("%s warmed up in %.1f s", served.model_id, took)
    return took


def _pcm_to_float(data: bytes, width: int, channels: int) -> np.ndarray:
    """pcm_s16le bytes -> mono float32 in [-1, 1]."""
    if width != 2:
        raise Rejected("undecodable media", f"pcm sample width {width} (only 2 bytes supported)")
    return pcm16_to_float(data, channels)


def main(argv: list[str] | None = None) -> int:
    return worker_main(argv, MediaAnalysis(), build_parser(PROG, "the cloud-only baseline's worker: raw media in"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
