"""The served halves of a bundle: what :mod:`models.bundle`'s loaders return, ready to run.

:class:`Extractor` (gateway: raw media -> released features), :class:`Analyzer` (cloud: features ->
class probabilities) and :class:`FullModel` (the uncut network, for local-only and cloud-only serving).
Each runs its network through a *forward*, ``(B, ...) float32 -> (B, ...)``: :class:`TorchForward` (the
reference) or an ONNX Runtime session (:mod:`models.onnx_runtime`). This module imports no torch: a half
served on ONNX Runtime has no torch module until ``.module`` is asked for (the audit's cost counts, an
export), which loads it then through the loader :mod:`models.bundle` gave.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from models.release import decode as decode_features, encode as encode_features
from models.runtimes import torch_threads
from models.speech import SpeechConfig, SpeechFrontEnd

if TYPE_CHECKING:
    from torch import nn


class TorchForward:
    """The reference runtime: a torch module on float32 arrays, ``(B, ...) -> (B, ...)``."""

    name = "torch"

    def __init__(self, module: "nn.Module") -> None:
        torch_threads()  # the process's thread share (models.runtimes.limit_threads), set before torch ran
        self.module = module.eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()


class _Half:
    """A served network: its torch ``module`` given, or loaded on first use by ``load_module``."""

    _module = None
    _load_module: Callable[[], "nn.Module"] | None = None

    def _set_module(self, module, load_module) -> None:
        if module is None and load_module is None:
            raise ValueError("a served half needs its torch module or a way to load it")
        self._module = module.eval() if module is not None else None
        self._load_module = load_module

    @property
    def module(self) -> "nn.Module":
        """The torch module (loaded now, with torch, when the half is served on ONNX Runtime)."""
        if self._module is None:
            self._module = self._load_module().eval()
        return self._module


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (B, C) logits, float32."""
    z = np.asarray(logits, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class _Inputs:
    """Preprocessing shared by the extractor and the full model: raw media -> network input."""

    def __init__(self, manifest: dict, rng: np.random.Generator | None,
                 shift_semitones: tuple[float, float] | None = None) -> None:
        self.modality = manifest["modality"]
        self.input_shape = tuple(manifest["arch"]["net"]["in_shape"])
        self.front_end = None
        if self.modality == "speech":
            spec = {k: v for k, v in manifest["input"].items() if k not in ("kind", "shape")}
            if shift_semitones is not None:  # a home's own secret range replaces the bundle's
                spec["shift_semitones"] = list(shift_semitones)
            self.front_end = SpeechFrontEnd.from_config(SpeechConfig.from_dict(spec))
        # Fresh, unseeded by default: at the gateway the pitch shifts must not be predictable.
        self.rng = rng if rng is not None else np.random.default_rng()

    def preprocess(self, raw) -> np.ndarray:
        """image: uint8 HxW[xC] -> (1, 64, 64); speech: (wave float32, rate Hz) -> (1, n_mels, frames)."""
        if self.modality == "image":
            from models.preprocess import image_to_input
            return image_to_input(raw)
        wave, rate = raw
        return self.front_end(wave, int(rate), self.rng)

    def stack(self, inputs: list[np.ndarray]) -> np.ndarray:
        """B preprocessed inputs -> one contiguous float32 (B, C, H, W) batch."""
        if len(inputs) == 0:
            return np.zeros((0, *self.input_shape), np.float32)
        x = np.stack(inputs).astype(np.float32, copy=False)  # (B, C, H, W)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"inputs must have shape {self.input_shape}, got {x.shape[1:]}")
        return x


class Extractor(_Half):
    """The gateway half: preprocessed inputs -> released features ``(B, *feature_shape)``.
    ``forward`` runs the network, (B, C, H, W) float32 -> (B, F): the torch ``module`` by default, or an
    ONNX Runtime session (``runtime`` names it; then ``module`` may be None and ``load_module`` loads it)."""

    def __init__(self, manifest: dict, module: "nn.Module | None", rng: np.random.Generator | None = None,
                 forward=None, shift_semitones: tuple[float, float] | None = None,
                 load_module: Callable[[], "nn.Module"] | None = None) -> None:
        self.manifest = manifest
        self.model_id: str = manifest["model"]
        self.task: str = manifest["task"]
        self.modality: str = manifest["modality"]
        self.feature_dtype: str = manifest["feature"]["dtype"]
        self.feature_shape: tuple[int, ...] = tuple(manifest["feature"]["shape"])
        self._set_module(module, load_module)
        self.forward = forward if forward is not None else TorchForward(self.module)
        self.runtime: str = self.forward.name
        self._inputs = _Inputs(manifest, rng, shift_semitones)
        self.input_shape = self._inputs.input_shape
        self.face_detector: Path | None = None  # the bundle's face detector (models/face_onnx.py), if any

    def preprocess(self, raw) -> np.ndarray:
        return self._inputs.preprocess(raw)

    def extract_batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        """list of B preprocessed inputs -> (B, *feature_shape) array of ``feature_dtype``. Noise, when the
        bundle adds any, is drawn fresh on every call inside the module."""
        z = self.forward(self._inputs.stack(inputs))  # (B, F)
        z = encode_features(z, self.manifest["feature"])
        return z.reshape((len(inputs), *self.feature_shape))

    def extract_raw(self, raws: list) -> np.ndarray:
        return self.extract_batch([self.preprocess(r) for r in raws])

    def warm_up(self) -> None:
        """Compile the speech front end and run the network once, so the first message is not slow."""
        if self._inputs.front_end is not None:
            self._inputs.front_end.warm_up()
        self.extract_batch([np.zeros(self.input_shape, np.float32)])


class Analyzer(_Half):
    """The cloud half: features ``(B, *feature_shape)`` -> class probabilities ``(B, C)`` float32.
    ``forward``: (B, F) float32 -> logits (B, C), as for :class:`Extractor`."""

    def __init__(self, manifest: dict, module: "nn.Module | None", forward=None,
                 load_module: Callable[[], "nn.Module"] | None = None) -> None:
        self.manifest = manifest
        self.model_id: str = manifest["model"]
        self.task: str = manifest["task"]
        self.labels: list[str] = list(manifest["labels"])
        self.feature_shape: tuple[int, ...] = tuple(manifest["feature"]["shape"])
        self._set_module(module, load_module)
        self.forward = forward if forward is not None else TorchForward(self.module)
        self.runtime: str = self.forward.name

    def analyze_batch(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features)
        if f.shape[1:] != self.feature_shape:
            raise ValueError(f"features must have shape (B, {self.feature_shape}), got {f.shape}")
        f = decode_features(f.reshape(len(f), -1), self.manifest["feature"])  # int8 -> scaled float32
        return softmax(self.forward(np.ascontiguousarray(f, dtype=np.float32)))  # (B, F) -> (B, C)


class FullModel(_Half):
    """The uncut network, for local-only (gateway) and cloud-only (worker) serving. ``module`` is both
    halves in one ``nn.Sequential``; with ``forwards`` on ONNX Runtime the halves may be None and
    ``load_module`` loads that on first use."""

    def __init__(self, manifest: dict, extractor: "nn.Module | None", analyzer: "nn.Module | None",
                 rng: np.random.Generator | None = None, forwards: tuple | None = None,
                 load_module: Callable[[], "nn.Module"] | None = None) -> None:
        self.manifest = manifest
        self.model_id: str = manifest["model"]
        self.task: str = manifest["task"]
        self.modality: str = manifest["modality"]
        self.labels: list[str] = list(manifest["labels"])
        whole = None
        if extractor is not None and analyzer is not None:
            from torch import nn

            whole = nn.Sequential(extractor, analyzer)
        self._set_module(whole, load_module)
        # (extractor, analyzer) runtimes; the released features are not quantised on this path
        self.forwards = forwards if forwards is not None else (TorchForward(extractor), TorchForward(analyzer))
        self.runtime: str = "/".join(dict.fromkeys(f.name for f in self.forwards))  # "onnx/torch" when mixed
        self._inputs = _Inputs(manifest, rng)

    def preprocess(self, raw) -> np.ndarray:
        return self._inputs.preprocess(raw)

    def predict_batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        """list of B preprocessed inputs -> probabilities (B, C) float32."""
        ext, ana = self.forwards
        return softmax(ana(ext(self._inputs.stack(inputs))))  # (B, C, H, W) -> (B, F) -> (B, C)

    def predict_raw(self, raws: list) -> np.ndarray:
        return self.predict_batch([self.preprocess(r) for r in raws])
