"""Writing a bundle's halves as ONNX, and checking an ONNX file against the torch weights (training side).

:func:`export_halves` writes ``extractor.onnx`` (and ``analyzer.onnx`` where ``analyzer.pt`` is present)
with a dynamic batch dimension and records in the manifest's ``onnx`` entry each file's sha256, the torch
half's outputs on the fixed probe batch and the noise scale the graph leaves out: what a gateway on ONNX
Runtime checks, without torch (:mod:`models.onnx_runtime`). The model id leaves that entry out.

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

from models.manifest import sha256_file, write_manifest
from models.onnx_runtime import (ONNX_FILES, OPSET, OrtForward, disagreement, in_shape, probe_batch,
                                 probe_summary, session_for)
from models.pca import Project
from models.serving import TorchForward

log = logging.getLogger(__name__)


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


def torch_probe(module: nn.Module, half_shape: tuple[int, ...]) -> np.ndarray:
    """The noise-free torch half's outputs on the probe batch, as :func:`models.onnx_runtime.probe_summary`."""
    with noise_free(module):
        return probe_summary(TorchForward(module)(probe_batch(half_shape)))


def export_halves(dir, manifest: dict, halves: dict[str, nn.Module]) -> dict:
    """Write each half of ``halves`` ({"extractor": module, "analyzer": module}) as ONNX into ``dir`` and
    record the files, their probe outputs and noise scales under the manifest's ``onnx`` key (the model id
    does not change). Returns that entry. (:func:`models.bundle.export_onnx` loads a bundle's halves and
    calls this.)"""
    dir = Path(dir)
    files, probe, noise = {}, {}, {}
    for half, module in halves.items():
        name = ONNX_FILES[half]
        files[name] = export_module(module, in_shape(manifest, half), dir / name)
        probe[name] = [[float(v) for v in row] for row in torch_probe(module, in_shape(manifest, half))]
        with noise_free(module) as scale:
            noise[name] = None if scale is None else [float(v) for v in scale]
    entry = {"opset": OPSET, "exporter": f"torch {torch.__version__} (TorchScript)", "files": files,
             "probe": probe, "noise": noise}
    write_manifest(dir, {**manifest, "onnx": entry})
    log.info("exported %s of bundle %s to ONNX", ", ".join(files), manifest["model"])
    return entry


def check_agrees(forward: OrtForward, module: nn.Module, half_shape: tuple[int, ...], what: str) -> float:
    """Run the ONNX and the torch half (noise-free) on the probe batch; OnnxMismatchError if they differ.
    Returns the largest relative difference."""
    x = probe_batch(half_shape)
    with noise_free(module):
        want = TorchForward(module)(x)
    return disagreement(probe_summary(forward.noise_free(x)), probe_summary(want), what, "")


def checked_forward(dir, manifest: dict, half: str, module: nn.Module, threads: int | None) -> OrtForward:
    """``half`` on ONNX Runtime, checked against the torch ``module`` itself: for bundles whose export
    recorded no probe outputs, and for ``runtime="torch"`` callers that want both."""
    with noise_free(module) as noise:
        pass
    forward = session_for(dir, manifest, half, threads, noise)
    path = Path(dir) / ONNX_FILES[half]
    diff = check_agrees(forward, module, in_shape(manifest, half), f"{path} (bundle {manifest['model']})")
    log.info("%s: ONNX Runtime, agrees with the torch weights to %.1e (exported without a probe record: "
             "privedge bundle export %s lets it serve without torch)", path, diff, dir)
    return forward
