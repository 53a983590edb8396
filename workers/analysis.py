"""What a worker computes: the models it serves, and one batch of messages turned into results.

A worker serves the analyzer of each bundle (``models.bundle.load_analyzer``, the half after the cut) on
FeatureMessages: :class:`FeatureAnalysis`, behind the small :class:`Analysis` interface that the worker's
loop (workers/service.py) calls. The benchmark's cloud-only baseline drives that same loop with an
analysis of its own (bench/baselines/cloud_worker.py): a worker never sees raw media. A message that
cannot be analysed becomes a :class:`Rejected` with a reason and never stops the batch.

An entry is either wire version (schemas.compact): a version 1 map or a version 2 array, whose model
reference :class:`FeatureAnalysis` resolves against the bundles it loaded and whose home, task and reply
stream come from the stream it was read from (:class:`schemas.compact.Origin`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from models import bundle as bundles
from models.release import BadFeatures, check_wire
from models.signing import check_bundle
from schemas import compact
from schemas.compact import Catalog, Origin, UnknownModel
from schemas.errors import SchemaError
from schemas.features import FeatureMessage

log = logging.getLogger(__name__)


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
    net: Any  # models.bundle.Analyzer (or what an Analysis loads)
    forward: Callable[[list[np.ndarray]], np.ndarray]  # B network inputs -> (B, C) probabilities


class Analysis(Protocol):
    """What the worker's loop asks of the models it serves: which streams, which bundles, which inputs."""

    stream_kind: str  # the streams consumed: "features" ({p}:features:{task}:{gateway}, schemas.names)

    def load(self, bundle_dirs: tuple[Path, ...], runtime: str, threads: int, *, bundle_key: str | None,
             allow_unsigned: bool) -> dict[str, Served]:
        """{model id: Served} of every bundle, each once its signature verifies."""

    def decode(self, data: bytes, limits, origin: Origin) -> Any:
        """A stream entry's ``m`` field, read from a stream of ``origin``, as a message; Rejected if it
        does not decode."""

    def model_input(self, msg: Any, served: Served) -> np.ndarray:
        """One network input for ``msg``; Rejected if ``msg`` cannot be analysed by ``served``."""


class FeatureAnalysis:
    """privedge's worker: FeatureMessages from the features streams, through each bundle's analyzer."""

    stream_kind = "features"

    def __init__(self) -> None:
        self.catalog = Catalog()  # the loaded bundles by wire reference (version 2 entries name them so)

    def load(self, bundle_dirs: tuple[Path, ...], runtime: str = "torch", threads: int = 1, *,
             bundle_key: str | None = None, allow_unsigned: bool = False) -> dict[str, Served]:
        served = load_served(bundle_dirs, runtime, threads, bundle_key=bundle_key, allow_unsigned=allow_unsigned)
        self.catalog = catalog_of(served)
        return served

    def decode(self, data: bytes, limits, origin: Origin) -> FeatureMessage:
        return decode_message(data, limits, origin, self.catalog)

    def model_input(self, msg: FeatureMessage, served: Served) -> np.ndarray:
        return model_input(msg, served)


def load_served(bundle_dirs: tuple[Path, ...], runtime: str = "torch", threads: int = 1, *,
                bundle_key: str | None = None, allow_unsigned: bool = False) -> dict[str, Served]:
    """Load every bundle's analyzer on ``runtime`` (torch, onnx, auto) with ``threads`` ONNX Runtime
    threads, each once its signature verifies with the provider's public ``bundle_key`` file (see
    models.signing.check_bundle); returns {model id: Served}. Raises BundleError on a bad bundle,
    models.signing.SignatureError on an unsigned or wrongly signed one (unless ``allow_unsigned``)."""
    served: dict[str, Served] = {}
    for d in bundle_dirs:
        # The provider's signature first: nothing is unpickled or run from an unauthenticated bundle.
        check_bundle(d, key=bundle_key, allow_unsigned=allow_unsigned, part="full")
        net = bundles.load_analyzer(d, runtime=runtime, threads=threads)
        s = served_of(bundles.read_manifest(d), net, lambda xs, net=net: net.analyze_batch(np.stack(xs)))
        served[s.model_id] = s
        log.info("serving %s (task %s, %s) from %s", s.model_id, s.task, net.runtime, d)
    return served


def served_of(manifest: dict, net: Any, forward: Callable[[list[np.ndarray]], np.ndarray]) -> Served:
    """The Served of one bundle (``manifest``) whose loaded ``net`` runs as ``forward``."""
    return Served(model_id=manifest["model"], task=manifest["task"], modality=manifest["modality"],
                  labels=tuple(manifest["labels"]),
                  feature_shape=tuple(int(n) for n in manifest["feature"]["shape"]), net=net, forward=forward)


def catalog_of(served: dict[str, Served]) -> Catalog:
    """The wire references of the served models, with the dtype and shape of the features each takes."""
    return Catalog(compact.Model(s.model_id, s.net.manifest["feature"]["dtype"], s.feature_shape)
                   for s in served.values())


def decode_message(data: bytes, limits, origin: Origin, catalog: Catalog) -> FeatureMessage:
    """The stream entry's ``m`` field (wire version 1 or 2) as a FeatureMessage; Rejected if it does not
    decode, with reason ``unknown model`` for a version 2 reference to no served model."""
    try:
        return compact.decode(data, origin, catalog, limits)
    except UnknownModel as e:
        raise Rejected("unknown model", str(e)) from e
    except SchemaError as e:
        raise Rejected(f"undecodable: {e.reason}", str(e)) from e


def model_input(msg: FeatureMessage, served: Served) -> np.ndarray:
    """One network input for ``msg``: its feature tensor, checked against the bundle's feature spec."""
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


def run_network(served: Served, inputs: list[np.ndarray]) -> np.ndarray:
    """One forward pass over a group of inputs of one model; returns probabilities (B, C) float32."""
    # (the torch runtime runs under inference_mode in models.serving.TorchForward; ONNX needs no torch)
    probs = served.forward(inputs)  # B inputs -> (B, C)
    probs = np.asarray(probs, dtype=np.float32)  # (B, C)
    if probs.shape != (len(inputs), len(served.labels)):
        raise Rejected("model output mismatch", f"got {probs.shape} for {len(inputs)} inputs")
    return probs
