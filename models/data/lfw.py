"""LFW (Labeled Faces in the Wild, deep-funneled): ``images/<Person>/<Person>_NNNN.jpg`` with ``gender.csv``.

Real news photographs, 250x250 RGB, the face centred and filling the middle third, real backgrounds and
sometimes other people in the frame: whole camera frames rather than face crops. Without a detector each
photograph goes through ``image_to_input`` as a frame would without one (its centre square, the whole
photo); with one (``detector``, the way to use it) the face is found and cut as the gateway cuts it.

Protocol "lfw-unseen": primary task gender (``gender.csv``'s ``image,person,gender``; unlabelled images
are left out), sensitive attribute identity (the folder). The people are split into disjoint model and
attack halves by seed; each attack person's photos are split about 70 / 30 into attacker train / test.
Gender follows the person, so the attacker's people are never in the model's training set.
``size="full"`` keeps at most 20 photographs per person (:data:`MAX_PER_PERSON`); ``size="small"`` keeps
the people with at least 10 photos, their first 10 each.
"""
from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from models.data.face_crops import detector_crops
from models.data.samples import Protocol, Samples, split_people, split_per_person, unseen_people_protocol
from models.preprocess import image_to_input, load_image

log = logging.getLogger(__name__)

GENDER_LABELS = ["female", "male"]
SMALL_PER_PERSON = 10
MAX_PER_PERSON = 20
"""size="full" keeps at most this many photographs per person (their first, by file name): otherwise a few
much-photographed people (60-236 photographs each) set the chance level and the label floor. Uncapped,
the gender-only floor is 0.060 against a uniform chance of 0.002."""


def is_lfw(root: str | Path) -> bool:
    """True when ``root`` looks like LFW: a ``gender.csv`` and an ``images`` folder."""
    root = Path(root)
    return (root / "gender.csv").is_file() and (root / "images").is_dir()


def lfw_entries(root: str | Path) -> list[tuple[Path, str, str]]:
    """Labelled photographs as (path, gender, person), sorted by path; checks that each file exists."""
    root = Path(root)
    entries = []
    with open(root / "gender.csv", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"image", "person", "gender"} <= set(reader.fieldnames):
            raise ValueError(f"{root}/gender.csv: header must be image,person,gender, got {reader.fieldnames}")
        for row in reader:
            gender = (row["gender"] or "").strip()
            if gender not in GENDER_LABELS:
                continue  # the few unlabelled photographs
            person = row["person"].strip()
            path = root / "images" / person / row["image"].strip()
            if not path.is_file():
                raise FileNotFoundError(f"gender.csv lists {person}/{path.name} but {path} does not exist")
            entries.append((path, gender, person))
    if not entries:
        raise ValueError(f"{root}/gender.csv: no labelled photographs")
    return sorted(entries)


def lfw_protocol(root: str | Path, *, seed: int = 0, size: str = "full", detector: str | None = None) -> Protocol:
    """Protocol "lfw-unseen" (or "lfw-unseen-detected" on detector crops)."""
    entries = lfw_entries(root)
    counts = Counter(person for _, _, person in entries)
    least, most = (SMALL_PER_PERSON, SMALL_PER_PERSON) if size == "small" else (1, MAX_PER_PERSON)
    seen: Counter[str] = Counter()
    kept = []
    for e in entries:  # sorted by path: each person's first photographs
        if counts[e[2]] >= least and seen[e[2]] < most:
            seen[e[2]] += 1
            kept.append(e)
    entries = kept
    people = sorted({person for _, _, person in entries})
    report = None
    if detector is None:
        x = np.stack([image_to_input(load_image(p)) for p, _, _ in entries]).astype(np.float32)
    else:
        x, found, report = detector_crops([p for p, _, _ in entries], detector)
        entries = [e for e, ok in zip(entries, found) if ok]
    index = {p: i for i, p in enumerate(people)}
    samples = Samples(modality="image", x=x,
                      primary=np.array([GENDER_LABELS.index(g) for _, g, _ in entries], dtype=np.int64),
                      identity=np.array([index[p] for _, _, p in entries], dtype=np.int64),
                      primary_names=list(GENDER_LABELS), identity_names=people, rate=None,
                      sources=[str(p) for p, _, _ in entries])
    model_people, attack_people = split_people(samples.identity, seed)
    attack_train_idx, _ = split_per_person(samples.identity, attack_people, seed)
    mask = np.zeros(len(samples), dtype=bool)
    mask[attack_train_idx] = True
    log.info("LFW: %d photographs, %d people from %s", len(samples), len(people), root)
    name = "lfw-unseen" if report is None else "lfw-unseen-detected"
    return unseen_people_protocol(name, "gender", samples, model_people, mask, crop=report)
