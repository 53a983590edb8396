"""The demo camera's scenes: several procedural faces per frame on real photographs, written as a folder the
camera sensor loops over.

Each frame is :func:`bench.scenes.synthetic_composite` (faces of :mod:`models.data.synth_faces`, drawn at
the size they are pasted at, on one of scikit-image's photographs; no data set needed). Procedural faces are
cartoons: the default detector (short-range BlazeFace) finds about three in four of them in a 640x480
scene, and now and then a second box on one face. The demo shows the face stage at work, not the
detector's misses, so each candidate frame is screened as the gateway will see it (encoded as the camera
sends it, decoded, the default detector run on it) and kept only when the detector finds each of its faces
(IoU >= 0.5) and nothing else; ``bench.scene_speed`` and ``bench.face_detectors`` measure the detector on
unscreened scenes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

SIZE = (640, 480)
FACES = (2, 3)
"""Faces per frame (lo, hi)."""
CODEC, QUALITY = "jpeg", 90
"""How the demo camera sends its frames (the sensor's ``--codec``; its JPEG quality is 90)."""
MAX_TRIES = 20
"""Candidate frames drawn per frame kept, at most."""


def _found_exactly(boxes: np.ndarray, found: list) -> bool:
    """Whether the detections ``found`` (FaceBox) match the true ``boxes`` one to one at IoU >= 0.5."""
    from bench.face_detectors import match

    if len(found) != len(boxes):
        return False
    det = np.array([(f.x, f.y, f.w, f.h) for f in found]).reshape(-1, 4)
    return len(match(det, np.array([f.score for f in found]), boxes)) == len(boxes)


def make_scenes(n: int, seed: int = 0, size: tuple[int, int] = SIZE, faces: tuple[int, int] = FACES) -> list:
    """``n`` scenes (``bench.scenes.Scene``) whose every face the default detector finds, and nothing more."""
    from bench.scenes import synthetic_composite
    from models.faces import make_detector
    from schemas.media import ImageFrame, decode_image

    detector = make_detector()
    rng = np.random.default_rng([seed, 17])
    kept, tried = [], 0
    while len(kept) < n:
        if tried >= n * MAX_TRIES:
            raise RuntimeError(f"only {len(kept)} of {tried} demo scenes had every face found")
        tried += 1
        scene = synthetic_composite(rng, size, int(rng.integers(faces[0], faces[1] + 1)), seed)
        sent = decode_image(ImageFrame.from_array(scene.image, device="camera", seq=0, ts=0.0, codec=CODEC,
                                                  quality=QUALITY))
        if len(scene.boxes) and _found_exactly(scene.boxes, detector.detect(sent)):
            kept.append(scene)
    log.info("demo scenes: kept %d of %d candidates", len(kept), tried)
    return kept


def write_scenes(out: Path, n: int, seed: int = 0) -> dict:
    """``n`` screened scenes as PNG files under ``out`` (in the order the camera sends them) and their
    true boxes in ``out/boxes.json``. Returns {"frames", "faces"}."""
    out.mkdir(parents=True, exist_ok=True)
    scenes = make_scenes(n, seed)
    index = {}
    for i, s in enumerate(scenes):
        name = f"{i:03d}.png"
        Image.fromarray(s.image).save(out / name)
        index[name] = {"background": s.background, "boxes": [[round(float(v), 1) for v in b] for b in s.boxes]}
    (out / "boxes.json").write_text(json.dumps(index, indent=1) + "\n")
    return {"frames": len(scenes), "faces": sum(len(s.boxes) for s in scenes)}
