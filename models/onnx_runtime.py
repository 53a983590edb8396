"""ONNX Runtime sessions that serve a bundle's ONNX halves, with numpy alone around them (no torch).

torch stays the training and reference runtime; ONNX Runtime is the serving one (on the gateway's small
convolutions about 4x faster on one core, and a gateway on it never imports torch). The ONNX copies are
written by :mod:`models.onnx_export` (``privedge bundle export``), which records in the manifest's ``onnx``
entry, next to each file's sha256: the torch half's outputs on a fixed probe batch (``probe``), and the
per-dimension noise scale the exported graph leaves out (``noise``). The ``model`` id leaves that entry out
(see :mod:`models.bundle`).

Loading an ONNX half checks its hash, then runs it on the probe batch and refuses the file if it disagrees
with the recorded torch outputs, so what ONNX Runtime serves is what the export saw. The record sits in
the signed manifest (:mod:`models.signing`): the services verify the signature before loading. A bundle
exported before the record existed is checked against the torch weights themselves
(:func:`models.onnx_export.checked_forward`, which imports torch) until it is exported again.

The PCA noise of ``Project`` (when a bundle has any) is not in the graph: :class:`OrtForward` draws it,
``noise_std * std`` per dimension, after each run.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from models.manifest import HashMismatchError, MissingFileError, verified_path
from models.runtimes import RUNTIMES, limit_threads, threads as default_threads  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

ONNX_FILES = {"extractor": "extractor.onnx", "analyzer": "analyzer.onnx"}
OPSET = 17
PROBE_BATCH = 3
PROBE_DIMS = 32
"""Outputs wider than this are recorded as a fixed random projection to this many numbers per input."""
TOLERANCE = 1e-3
"""Largest ONNX-vs-torch difference on the probe batch, relative to the largest torch output (or 1)."""


class OnnxMismatchError(HashMismatchError):
    """An ONNX file's outputs do not match the torch weights its bundle's model id names."""


def in_shape(manifest: dict, half: str) -> tuple[int, ...]:
    """The per-input shape ``half`` takes: the network input (extractor) or the flat features (analyzer)."""
    if half == "extractor":
        return tuple(manifest["arch"]["net"]["in_shape"])
    return (int(np.prod(manifest["feature"]["shape"])),)


def probe_batch(shape: tuple[int, ...]) -> np.ndarray:
    """The fixed probe inputs, (PROBE_BATCH, *shape) float32."""
    return np.random.default_rng(0).standard_normal((PROBE_BATCH, *shape), dtype=np.float32)


def probe_summary(y: np.ndarray) -> np.ndarray:
    """(B, ...) outputs -> (B, <= PROBE_DIMS) float64: the outputs, or a fixed random projection of wide ones
    (scaled to keep their magnitude), so the manifest's record stays small."""
    flat = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if flat.shape[1] <= PROBE_DIMS:
        return flat
    proj = np.random.default_rng(1).standard_normal((flat.shape[1], PROBE_DIMS)) / np.sqrt(flat.shape[1])
    return flat @ proj


def disagreement(got: np.ndarray, want: np.ndarray, what: str, against: str) -> float:
    """Largest relative difference of two probe summaries; OnnxMismatchError beyond TOLERANCE."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise OnnxMismatchError(f"{what}: ONNX output shape {got.shape}, torch {want.shape}")
    diff = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
    if not diff <= TOLERANCE:
        raise OnnxMismatchError(f"{what}: ONNX outputs differ from the torch weights{against} by {diff:.3g} "
                                f"(tolerance {TOLERANCE}); refusing an ONNX file that is not this model")
    return diff


def make_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and no busy-waiting pool."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning workers would burn the cores the other services need (a gateway and workers share them).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtForward:
    """An ONNX Runtime session on float32 arrays, ``(B, ...) -> (B, ...)``, plus the Project noise."""

    name = "onnx"

    def __init__(self, session, noise_scale: np.ndarray | None = None,
                 rng: np.random.Generator | None = None) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.noise_scale = noise_scale
        self.rng = rng if rng is not None else np.random.default_rng()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        if self.noise_scale is not None:
            y = y + self.rng.standard_normal(y.shape, dtype=np.float32) * self.noise_scale
        return y

    def noise_free(self, x: np.ndarray) -> np.ndarray:
        """The graph's output without the noise (the probe checks)."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _entry(manifest: dict) -> dict:
    return manifest.get("onnx") or {}


def listed(manifest: dict, half: str) -> str | None:
    """The sha256 the manifest lists for ``half``'s ONNX file, or None."""
    return _entry(manifest).get("files", {}).get(ONNX_FILES[half])


def serves_onnx(dir, manifest: dict, half: str, runtime: str) -> bool:
    """Whether ``runtime`` serves ``half`` on ONNX Runtime: ``onnx`` always (MissingFileError when the bundle
    has no ONNX copy), ``auto`` where the file is listed and present, ``torch`` never."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    name = ONNX_FILES[half]
    path = Path(dir) / name
    if runtime == "onnx" and not listed(manifest, half):
        raise MissingFileError(f"{dir}: bundle {manifest['model']} has no {name} (add it with "
                               f"privedge bundle export {dir})")
    if runtime == "auto" and not (listed(manifest, half) and path.is_file()):
        if path.is_file():
            log.warning("%s: not listed in the manifest of %s; serving torch", path, manifest["model"])
        return False
    return runtime != "torch"


def recorded(manifest: dict, half: str) -> bool:
    """Whether the export recorded ``half``'s probe outputs (else only torch can check the ONNX file)."""
    return ONNX_FILES[half] in _entry(manifest).get("probe", {})


def session_for(dir, manifest: dict, half: str, threads: int | None, noise: np.ndarray | None) -> OrtForward:
    """An OrtForward on ``half``'s ONNX file once its sha256 verifies; not yet checked against torch."""
    path = verified_path(dir, ONNX_FILES[half], listed(manifest, half), manifest)
    return OrtForward(make_session(path, threads if threads is not None else default_threads()), noise)


def onnx_forward(dir, manifest: dict, half: str, threads: int | None = None) -> OrtForward:
    """``half`` on ONNX Runtime, checked against the torch outputs its export recorded (no torch here).
    ``threads`` defaults to :func:`models.runtimes.threads`."""
    entry = _entry(manifest)
    name = ONNX_FILES[half]
    noise = entry.get("noise", {}).get(name)
    forward = session_for(dir, manifest, half, threads,
                          None if noise is None else np.asarray(noise, dtype=np.float32))
    what = f"{Path(dir) / name} (bundle {manifest['model']})"
    got = probe_summary(forward.noise_free(probe_batch(in_shape(manifest, half))))
    diff = disagreement(got, entry["probe"][name], what, " recorded at export")
    log.info("%s: ONNX Runtime, %d thread(s), agrees with the recorded torch outputs to %.1e",
             Path(dir) / name, forward.session.get_session_options().intra_op_num_threads, diff)
    return forward
