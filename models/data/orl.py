"""ORL / AT&T faces: ``sN/K.pgm`` (92x112 grayscale, 40 people x 10 images) with ``glasses.csv``.

Images go through ``models.preprocess.image_to_input`` unchanged (centre 92x92 square, resized to 64x64):
that square keeps eyes, glasses and mouth of every ORL face, and it is exactly what the gateway does to
a raw 92x112 camera frame, so training and deployment see the same crop. With a face detector
(``load_protocol(..., detector=...)``, ``--crop-faces``) each photo is a camera frame instead and is cut
by the detector and ``models.faces.crop_face``, as the gateway's face stage cuts it (protocol
"orl-unseen-detected"; photos with no face found are left out and counted).

Protocol "orl-unseen" (DESIGN.md): odd subjects train the model (all 10 images); primary accuracy on all
images of the even subjects; the attacker trains on images 1-7 of each even subject and is tested on
images 8-10 (20 people, chance 1/20).
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from models.data.face_crops import CropReport, detector_crops
from models.data.samples import Protocol, Samples, unseen_people_protocol
from models.preprocess import image_to_input, load_image

log = logging.getLogger(__name__)

GLASSES_LABELS = ["no_glasses", "glasses"]
ATTACK_TRAIN_IMAGES = range(1, 8)
_SUBJECT_RE = re.compile(r"^s(\d+)$")


def is_orl(root: str | Path) -> bool:
    """True when ``root`` looks like ORL: a ``glasses.csv`` and ``sN`` folders."""
    root = Path(root)
    return (root / "glasses.csv").is_file() and (root / "s1").is_dir()


def _read_glasses(path: Path) -> dict[tuple[int, int], int]:
    """glasses.csv (subject,image,glasses) -> {(subject number, image number): 0|1}."""
    labels: dict[tuple[int, int], int] = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"subject", "image", "glasses"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: header must be subject,image,glasses, got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                m = _SUBJECT_RE.match(row["subject"].strip())
                if not m or row["glasses"].strip() not in ("0", "1"):
                    raise ValueError(f"{path}:{line}: bad row {row}")
                labels[(int(m.group(1)), int(row["image"]))] = int(row["glasses"])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"ORL labels not found: {path}") from e
    return labels


def load_orl(root: str | Path, detector: str | None = None
             ) -> tuple[Samples, np.ndarray, np.ndarray, CropReport | None]:
    """All labelled ORL images as one Samples (identity names ``s1``..``s40``, sorted by number),
    plus the subject number and the image number of each sample (int64 (N,) each).

    With ``detector`` (a :func:`models.faces.make_detector` kind) each photo is taken as a camera frame
    and cut by the detector and :func:`models.faces.crop_face`; photos with no face found are left out
    and counted in the returned :class:`CropReport` (None without a detector)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ORL folder not found: {root}")
    labels = _read_glasses(root / "glasses.csv")
    subjects = sorted({s for s, _ in labels})
    keys = sorted(labels)
    paths = [root / f"s{s}" / f"{k}.pgm" for s, k in keys]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"glasses.csv lists {path.parent.name}/{path.name} but {path} does not exist")
    report = None
    if detector is None:
        x = np.stack([image_to_input(load_image(p)) for p in paths]).astype(np.float32)
    else:
        x, found, report = detector_crops(paths, detector)
        keys = [k for k, ok in zip(keys, found) if ok]
    samples = Samples(
        modality="image", x=x,
        primary=np.array([labels[k] for k in keys], dtype=np.int64),
        identity=np.array([subjects.index(s) for s, _ in keys], dtype=np.int64),
        primary_names=list(GLASSES_LABELS), identity_names=[f"s{s}" for s in subjects], rate=None,
    )
    log.info("ORL: %d images, %d people from %s", len(samples), len(subjects), root)
    return (samples, np.array([s for s, _ in keys], dtype=np.int64), np.array([k for _, k in keys], dtype=np.int64),
            report)


def orl_protocol(root: str | Path, detector: str | None = None) -> Protocol:
    """Protocol "orl-unseen": odd subjects train the model, even subjects are attacked (images 1-7 / 8-10).

    With ``detector``: "orl-unseen-detected", the same split on detector crops (see :func:`load_orl`)."""
    samples, subj, img_no, report = load_orl(root, detector)
    odd_people = np.unique(samples.identity[subj % 2 == 1])
    attack_train = np.isin(img_no, list(ATTACK_TRAIN_IMAGES))
    name = "orl-unseen" if report is None else "orl-unseen-detected"
    return unseen_people_protocol(name, "glasses", samples, odd_people, attack_train, crop=report)
