"""ONNX copies of a bundle's halves, and ONNX Runtime sessions that serve them.

torch stays the training and reference runtime; ONNX Runtime is the serving one where it is faster (on
the gateway's small convolutions about 4x on one core). :func:`export_halves` writes ``extractor.onnx``
(and ``analyzer.onnx`` where ``analyzer.pt`` is present) with a dynamic batch dimension and records their
sha256 under the manifest's ``onnx`` key, which the ``model`` id leaves out (see :mod:`models.bundle`).
Loading an ONNX half checks its hash, then runs it and the torch half on a fixed probe batch and refuses
the file if they disagree, so what ONNX Runtime serves is what the id names.

The PCA noise of ``Project`` (when a bundle has any) is not in the graph: it is exported noise-free and the
noise, ``noise_std * std`` per dimension, is drawn by :class:`OrtForward` after each run.

Add ONNX to existing bundles (:func:`models.bundle.export_onnx`)::

    privedge bundle export [--sign-key KEY] DIR [DIR ...]

Exporting rewrites the manifest and adds files, so it voids a bundle's signature (:mod:`models.signing`):
the old ``signature.json`` is removed, and the bundle is signed again with ``--sign-key`` (default
``PRIVEDGE_SIGNING_KEY``) or left unsigned, which the command says.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.manifest import HashMismatchError, MissingFileError, sha256_file, verified_path, write_manifest
from models.pca import Project
from models.runtimes import RUNTIMES
from models.serving import TorchForward

log = logging.getLogger(__name__)

ONNX_FILES = {"extractor": "extractor.onnx", "analyzer": "analyzer.onnx"}
OPSET = 17
PROBE_BATCH = 3
TOLERANCE = 1e-3
"""Largest ONNX-vs-torch difference on the probe batch, relative to the largest torch output (or 1)."""


class OnnxMismatchError(HashMismatchError):
    """An ONNX file's outputs do not match the torch weights its bundle's model id names."""


@contextlib.contextmanager
def noise_free(module: nn.Module):
    """Switch off the ``Project`` noise inside ``module``; yields the per-dimension noise std it had
    (``noise_std * std``, shape (k,)) or None when it adds none."""
    layers = [m for m in module.modules() if isinstance(m, Project) and m.noise_std > 0]
    saved = [m.noise_std for m in layers]
    scale = None
    if layers:
        scale = (layers[-1].noise_std * layers[-1].std).detach().numpy().astype(np.float32)
    try:
        for m in layers:
            m.noise_std = 0.0
        yield scale
    finally:
        for m, v in zip(layers, saved):
            m.noise_std = v


def export_module(module: nn.Module, in_shape: tuple[int, ...], path: Path) -> str:
    """Write ``module`` ((B, *in_shape) -> (B, ...), batch dimension dynamic) as ONNX; returns its sha256."""
    buf = io.BytesIO()
    with noise_free(module), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: it needs no onnxscript
        torch.onnx.export(module.eval(), (torch.zeros((1, *in_shape)),), buf, dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=OPSET,
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)  # never a half-written file under the real name
    return sha256_file(path)


def export_halves(dir, manifest: dict, halves: dict[str, nn.Module]) -> dict:
    """Write each half of ``halves`` ({"extractor": module, "analyzer": module}) as ONNX into ``dir`` and
    record the files under the manifest's ``onnx`` key (the model id does not change). Returns that entry.
    (:func:`models.bundle.export_onnx` loads a bundle's halves and calls this.)"""
    dir = Path(dir)
    shapes = {"extractor": tuple(manifest["arch"]["net"]["in_shape"]),
              "analyzer": (int(np.prod(manifest["feature"]["shape"])),)}
    files = {ONNX_FILES[half]: export_module(module, shapes[half], dir / ONNX_FILES[half])
             for half, module in halves.items()}
    entry = {"opset": OPSET, "exporter": f"torch {torch.__version__} (TorchScript)", "files": files}
    write_manifest(dir, {**manifest, "onnx": entry})
    log.info("exported %s of bundle %s to ONNX", ", ".join(files), manifest["model"])
    return entry


def limit_threads(n: int) -> None:
    """This process's share of the cores: torch's intra-op threads and every BLAS/OpenMP pool (numpy's
    OpenBLAS would otherwise keep a spinning thread per core) set to ``n``. ONNX Runtime sessions made
    afterwards take ``n`` from torch. A gateway and its workers on one machine each get their own ``n``."""
    import threadpoolctl

    torch.set_num_threads(n)
    threadpoolctl.threadpool_limits(limits=n)


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


def _probe(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((PROBE_BATCH, *shape), dtype=np.float32)


def check_agrees(forward: OrtForward, module: nn.Module, in_shape: tuple[int, ...], what: str) -> float:
    """Run the ONNX and the torch half (noise-free) on the probe batch; OnnxMismatchError if they differ.
    Returns the largest relative difference."""
    x = _probe(in_shape)
    noise, forward.noise_scale = forward.noise_scale, None
    try:
        with noise_free(module):
            want = TorchForward(module)(x)
        got = forward(x)
    finally:
        forward.noise_scale = noise
    if got.shape != want.shape:
        raise OnnxMismatchError(f"{what}: ONNX output shape {got.shape}, torch {want.shape}")
    diff = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
    if not diff <= TOLERANCE:
        raise OnnxMismatchError(f"{what}: ONNX outputs differ from the torch weights by {diff:.3g} "
                                f"(tolerance {TOLERANCE}); refusing an ONNX file that is not this model")
    return diff


def onnx_forward(dir, manifest: dict, half: str, module: nn.Module, runtime: str, threads: int | None):
    """The forward callable for ``half`` on ``runtime``: OrtForward, or TorchForward where ``auto`` finds
    no ONNX file. ``threads`` defaults to torch's thread count in this process."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    name = ONNX_FILES[half]
    listed = (manifest.get("onnx") or {}).get("files", {}).get(name)
    path = Path(dir) / name
    if runtime == "torch" or (runtime == "auto" and not (listed and path.is_file())):
        if runtime == "auto" and path.is_file():
            log.warning("%s: not listed in the manifest of %s; serving torch", path, manifest["model"])
        return TorchForward(module)
    if not listed:
        raise MissingFileError(f"{dir}: bundle {manifest['model']} has no {name} (add it with "
                               f"privedge bundle export {dir})")
    path = verified_path(dir, name, listed, manifest)
    threads = threads if threads is not None else torch.get_num_threads()
    with noise_free(module) as noise:
        pass
    forward = OrtForward(make_session(path, threads), noise)
    in_shape = (tuple(manifest["arch"]["net"]["in_shape"]) if half == "extractor"
                else (int(np.prod(manifest["feature"]["shape"])),))
    diff = check_agrees(forward, module, in_shape, f"{path} (bundle {manifest['model']})")
    log.info("%s: ONNX Runtime, %d thread(s), agrees with torch to %.1e", path, threads, diff)
    return forward
