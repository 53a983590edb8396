"""The raw-input attacker at full strength: a trained face recognition network on each whole photograph.

The audit's other raw-input baseline trains its attackers on the 64x64 crops themselves, from the few
photographs a person has on the attacker's side; on LFW it names the person in 1 crop of 5, far from the
near-perfect bar a clean-feature attacker must reach before weak attacks on the releases mean anything.
This one is what a real adversary would bring: dlib's ResNet face descriptor (``dlib_face_recognition_
resnet_model_v1``, 128 numbers a face, 99.38% on the LFW verification benchmark by its author's account,
public domain), shipped inside the ``face_recognition_models`` registry package with its 5-point landmark
model, so nothing is downloaded when it runs. Its descriptors then go through the same attackers, sets,
linkage and sweep as any release.

Each photograph is read whole (``Samples.sources``); the face is the largest box of dlib's HOG frontal
detector (without, then with one upsampling), aligned by the 5 landmarks as dlib's descriptor expects.
Where HOG finds nothing the central half of the frame is described instead, and counted
(:attr:`Descriptors.fallback`): LFW's photographs are framed around their face.

The network was trained by its author on about 3 million photographs of public figures (FaceScrub, VGG
and images gathered from the web), which may include people of LFW: read its figures as the best-equipped
attacker's, not as one that never saw these people.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from models.data.cache import cache_key, file_id, load_cached, save_cached

log = logging.getLogger(__name__)

NAME = "raw input, face recognition network"
DIMS = 128


class FaceRecognitionUnavailable(RuntimeError):
    """dlib or face_recognition_models is not installed (both come with the ``train`` extra)."""


@dataclass(frozen=True)
class Descriptors:
    values: np.ndarray        # float32 (N, 128)
    fallback: np.ndarray      # bool (N,): no face found by HOG, the central half of the frame described

    @property
    def fallbacks(self) -> int:
        return int(self.fallback.sum())


class FaceRecognitionNetwork:
    """dlib's detector, 5-point landmarks and ResNet descriptor, loaded once."""

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models as models
        except ImportError as e:
            raise FaceRecognitionUnavailable(
                f"the face recognition baseline needs dlib-bin and face_recognition_models (the train extra): {e}"
            ) from e
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.network = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.model_files = [models.pose_predictor_five_point_model_location(),
                            models.face_recognition_model_location()]

    def box(self, rgb: np.ndarray):
        """The largest HOG face box, or None."""
        for upsample in (0, 1):
            boxes = list(self.detector(rgb, upsample))
            if boxes:
                return max(boxes, key=lambda b: b.area())
        return None

    def describe(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        """(128 float32, whether the central fallback box was used) for an (H, W, 3) uint8 photograph."""
        box = self.box(rgb)
        fallback = box is None
        if fallback:
            h, w = rgb.shape[:2]
            box = self._dlib.rectangle(w // 4, h // 4, w - w // 4, h - h // 4)
        shape = self.landmarks(rgb, box)
        return np.asarray(self.network.compute_face_descriptor(rgb, shape), dtype=np.float32), fallback


def face_descriptors(paths: list[str], *, progress: bool | None = None) -> Descriptors:
    """Descriptors of the photographs at ``paths``, cached (:mod:`models.data.cache`) by file and model."""
    from PIL import Image

    net = FaceRecognitionNetwork()
    key = cache_key("face-descriptors", {"files": [file_id(p) for p in paths],
                                         "models": [file_id(p) for p in net.model_files]})
    cached = load_cached(key)
    if cached is not None and len(cached["values"]) == len(paths):
        return Descriptors(cached["values"], cached["fallback"].astype(bool))
    values, fallback = np.zeros((len(paths), DIMS), np.float32), np.zeros(len(paths), bool)
    quiet = len(paths) < 200 if progress is None else not progress
    for i, path in enumerate(tqdm(paths, desc="face descriptors", disable=quiet, leave=False)):
        with Image.open(path) as im:
            rgb = np.ascontiguousarray(np.asarray(im.convert("RGB")))
        values[i], fallback[i] = net.describe(rgb)
    out = Descriptors(values, fallback)
    if out.fallbacks:
        log.warning("face descriptors: no HOG face in %d of %d photographs (their central half described)",
                    out.fallbacks, len(paths))
    save_cached(key, {"values": values, "fallback": fallback})
    return out
