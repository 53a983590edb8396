"""Whole camera frames turned into network inputs the way the gateway does it: face detector, then crop.

A data set of whole frames (LFW's photographs, a user's folder, or ORL's photos taken as frames) is run
through :func:`models.faces.make_detector` and :func:`models.faces.crop_face`, so a bundle is trained and
audited on the crops the gateway will feed it, not on a data set's own framing. Each frame gives the input
of its largest face (a labelled photograph is of one person, who fills more of it than anyone behind);
a frame where the detector finds no face gives no input. Those frames are counted and named in a
:class:`CropReport` that the protocol carries into ``metrics.json`` and the audit report: a data set that
lost many frames to the detector is visible, not silently smaller.

Crops are cached in the user cache (:mod:`models.data.cache`), keyed by the detector's parameters and each
file's path, size and modification time: detecting 6,000 LFW photographs takes minutes on one core, and
every later train or audit of the same set reads them back in a second.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.data.cache import cache_key, file_id, load_cached, save_cached
from models.preprocess import IMAGE_SIZE, load_image

log = logging.getLogger(__name__)

NAMED_MISSES = 20
"""How many frames without a face a report names (the count is always complete)."""


@dataclass(frozen=True)
class CropReport:
    """What the detector made of a set of frames."""

    detector: str
    frames: int
    cropped: int
    several_faces: int
    """Frames in which more than one face was found (the largest one was cropped)."""
    no_face: list[str] = field(default_factory=list)
    """The first :data:`NAMED_MISSES` frames (file paths) with no face found."""
    cached: bool = False
    """Whether the crops were read from the cache rather than detected now."""

    @property
    def missed(self) -> int:
        return self.frames - self.cropped

    def as_dict(self) -> dict:
        return {**asdict(self), "missed": self.missed}

    def summary(self) -> str:
        return (f"{self.detector} detector crops: {self.cropped} of {self.frames} frames cropped, "
                f"{self.missed} with no face found (left out), {self.several_faces} with several faces "
                f"(largest cropped)")


def detector_crops(paths: list[Path], kind: str, params: dict | None = None, *,
                   progress: bool | None = None) -> tuple[np.ndarray, np.ndarray, CropReport]:
    """Detector crops of the frames at ``paths``.

    Returns (x float32 (M, 1, 64, 64) for the M frames with a face, found bool (N,) over ``paths``,
    report). ``kind`` and ``params`` pick the detector as :func:`models.faces.make_detector` does.
    """
    params = dict(params or {})
    paths = [Path(p) for p in paths]
    key = cache_key("face-crops", {"kind": kind, "params": params, "files": [file_id(p) for p in paths]})
    cached = load_cached(key)
    hit = cached is not None and len(cached["found"]) == len(paths)
    if hit:
        x, found, several = cached["x"], cached["found"].astype(bool), int(cached["several"])
    else:
        from models.faces import crop_face, make_detector

        detector = make_detector(kind, **params)
        crops, found_list, several = [], [], 0
        quiet = len(paths) < 500 if progress is None else not progress
        for path in tqdm(paths, desc=f"{kind} face crops", disable=quiet, leave=False):
            frame = load_image(path)
            faces = detector.detect(frame)
            found_list.append(bool(faces))
            several += len(faces) > 1
            if faces:
                crops.append(crop_face(frame, faces[0]))
        x = (np.stack(crops) if crops else np.zeros((0, 1, IMAGE_SIZE, IMAGE_SIZE))).astype(np.float32)
        found = np.array(found_list, dtype=bool)
        save_cached(key, {"x": x, "found": found, "several": np.array(several)})
    misses = [str(p) for p, ok in zip(paths, found) if not ok]
    report = CropReport(detector=kind, frames=len(paths), cropped=int(found.sum()), several_faces=several,
                        no_face=misses[:NAMED_MISSES], cached=hit)
    if report.missed:
        log.warning("%s; first of them: %s", report.summary(), ", ".join(misses[:3]))
    else:
        log.info("%s", report.summary())
    return x, found, report
