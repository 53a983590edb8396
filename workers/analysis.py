"""What a worker computes: the models it serves, and one batch of messages turned into results.

Split mode serves ``models.bundle.load_analyzer`` (the half after the cut) on FeatureMessages;
cloud-only mode serves ``models.bundle.load_full`` (the uncut network) on MediaMessages, for the
benchmark's "raw media to the cloud" peer. Either way a message that cannot be analysed becomes a
:class:`Rejected` with a reason and never stops the batch.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import bundle as bundles
from models.release import BadFeatures, check_wire
from models.signing import check_bundle
from schemas.errors import SchemaError
from schemas.features import FeatureMessage
from schemas.media import ImageFrame, decode_image
from schemas.upload import MediaMessage

log = logging.getLogger(__name__)

TOP_K = 3  # scores kept per result: enough for a home app to show alternatives, small on the wire


class Rejected(Exception):
    """A message this worker will not analyse; ``reason`` goes to the dead-letter stream."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Served:
    """One bundle this worker serves: its model id, task, labels and the loaded network."""

    model_id: str
    task: str
    modality: str
    labels: tuple[str, ...]
    feature_shape: tuple[int, ...]
    net: Any  # models.bundle.Analyzer (split) or the load_full object (cloud_only)


def load_served(bundle_dirs: tuple[Path, ...], mode: str, runtime: str = "torch",
                threads: int = 1, *, bundle_key: str | None = None,
                allow_unsigned: bool = False) -> dict[str, Served]:
    """Load every bundle for ``mode`` on ``runtime`` (torch, onnx, auto) with ``threads`` ONNX Runtime
    threads, each once its signature verifies with the provider's public ``bundle_key`` file (see
    models.signing.check_bundle); returns {model id: Served}. Raises BundleError on a bad bundle,
    models.signing.SignatureError on an unsigned or wrongly signed one (unless ``allow_unsigned``)."""
    served: dict[str, Served] = {}
    for d in bundle_dirs:
        # The provider's signature first: nothing is unpickled or run from an unauthenticated bundle.
        check_bundle(d, key=bundle_key, allow_unsigned=allow_unsigned, part="full")
        manifest = bundles.read_manifest(d)
        load = bundles.load_analyzer if mode == "split" else bundles.load_full
        net = load(d, runtime=runtime, threads=threads)
        s = Served(model_id=manifest["model"], task=manifest["task"], modality=manifest["modality"],
                   labels=tuple(manifest["labels"]),
                   feature_shape=tuple(int(n) for n in manifest["feature"]["shape"]), net=net)
        served[s.model_id] = s
        if mode == "cloud_only":
            warm_up(s)
        log.info("serving %s (task %s, %s mode, %s) from %s", s.model_id, s.task, mode, net.runtime, d)
    return served


def warm_up(served: Served) -> float:
    """One dummy inference on raw media (cloud_only), so that the runtime and the speech front end are warm
    at start-up instead of on the first utterance; returns the seconds it took."""
    t0 = time.perf_counter()
    raw = np.zeros((64, 64), np.uint8) if served.modality == "image" else (np.zeros(4000, np.float32), 8000)
    run_network(served, [served.net.preprocess(raw)])
    took = time.perf_counter() - t0
    log.info("%s warmed up in %.1f s", served.model_id, took)
    return took


def decode_message(data: bytes, mode: str, limits) -> FeatureMessage | MediaMessage:
    """The stream entry's ``m`` field as a message; Rejected if it does not decode."""
    cls = FeatureMessage if mode == "split" else MediaMessage
    try:
        return cls.decode(data, limits)
    except SchemaError as e:
        raise Rejected(f"undecodable: {e.reason}", str(e)) from e


def model_input(msg, served: Served) -> np.ndarray:
    """One network input for ``msg``: its feature tensor (split) or the preprocessed media (cloud_only)."""
    if isinstance(msg, FeatureMessage):
        try:
            x = msg.array()
        except SchemaError as e:
            raise Rejected(f"undecodable: {e.reason}", str(e)) from e
        if tuple(x.shape) != served.feature_shape:
            raise Rejected("feature shape mismatch",
                           f"got {tuple(x.shape)}, model {served.model_id} takes {served.feature_shape}")
        want = served.net.manifest["feature"]["dtype"]
        if x.dtype.name != want:
            raise Rejected("feature dtype mismatch", f"got {x.dtype.name}, model {served.model_id} takes {want}")
        try:
            check_wire(x, served.net.manifest["feature"])
        except BadFeatures as e:
            raise Rejected(e.reason, e.detail) from e
        return np.array(x)  # the wire dtype: the analyzer dequantises int8 with the bundle's scales
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


def _pcm_to_float(data: bytes, width: int, channels: int) -> np.ndarray:
    """pcm_s16le bytes -> mono float32 in [-1, 1]."""
    if width != 2:
        raise Rejected("undecodable media", f"pcm sample width {width} (only 2 bytes supported)")
    from models.preprocess import pcm16_to_float

    return pcm16_to_float(data, channels)


def run_network(served: Served, inputs: list[np.ndarray]) -> np.ndarray:
    """One forward pass over a group of inputs of one model; returns probabilities (B, C) float32."""
    # (the torch runtime runs under inference_mode in models.serving.TorchForward; ONNX needs no torch)
    if isinstance(served.net, bundles.Analyzer):
        probs = served.net.analyze_batch(np.stack(inputs))  # (B, *feature_shape) -> (B, C)
    else:
        probs = served.net.predict_batch(inputs)  # B preprocessed inputs -> (B, C)
    probs = np.asarray(probs, dtype=np.float32)  # (B, C)
    if probs.shape != (len(inputs), len(served.labels)):
        raise Rejected("model output mismatch", f"got {probs.shape} for {len(inputs)} inputs")
    return probs


def top_k(probs_row: np.ndarray, labels: tuple[str, ...], k: int = TOP_K) -> list[tuple[str, float]]:
    """The k most probable (label, probability) pairs, best first."""
    order = np.argsort(-probs_row)[:k]
    return [(labels[i], float(probs_row[i])) for i in order]
