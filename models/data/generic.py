"""User datasets without code changes: a CSV file or a labelled folder.

- CSV: header ``path,primary,identity``; ``path`` relative to the CSV's folder (or absolute); ``primary``
  and ``identity`` are label names (any strings). Extra columns are ignored.
- Labelled folder: ``root/<primary>/<identity>/<file>``.

Images (.png .jpg .jpeg .pgm .ppm .bmp .gif .tif .tiff .webp) go through ``image_to_input``; sound files
(.wav .flac .ogg) are read as mono float waves and resampled to the most common rate among them.

Protocol ("csv" or "folder", task = the CSV's / folder's name) has the ORL structure: people are split
into disjoint model / attack halves by seed; each attack person's samples are split about 70 / 30 into
attacker train / test, by seed.
"""
from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
from tqdm import tqdm

from models.data.face_crops import CropReport, detector_crops
from models.data.samples import Protocol, Samples, split_people, split_per_person, unseen_people_protocol
from models.preprocess import image_to_input, load_image, load_wav

log = logging.getLogger(__name__)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
AUDIO_EXTS = {".wav", ".flac", ".ogg"}
CSV_COLUMNS = ("path", "primary", "identity")


def _label_order(names: set[str]) -> list[str]:
    """Label names sorted numerically when they all are integers ("2" before "10"), else as strings."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def modality_of(path: Path) -> str:
    """"image" or "speech" from a file extension; ValueError for anything else."""
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in AUDIO_EXTS:
        return "speech"
    raise ValueError(f"{path}: unsupported file type {ext!r} (images: {sorted(IMAGE_EXTS)}, "
                     f"sound: {sorted(AUDIO_EXTS)})")


def read_csv_entries(csv_path: str | Path) -> list[tuple[Path, str, str]]:
    """Rows of a ``path,primary,identity`` CSV as (absolute path, primary, identity); checks files exist."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"dataset CSV not found: {csv_path}")
    entries = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(CSV_COLUMNS) <= {c.strip() for c in reader.fieldnames}:
            raise ValueError(f"{csv_path}: header must contain {','.join(CSV_COLUMNS)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not all(row.get(c) for c in CSV_COLUMNS):
                raise ValueError(f"{csv_path}:{line}: empty {'/'.join(c for c in CSV_COLUMNS if not row.get(c))}")
            path = Path(row["path"])
            path = path if path.is_absolute() else csv_path.parent / path
            if not path.is_file():
                raise FileNotFoundError(f"{csv_path}:{line}: file not found: {path}")
            entries.append((path, row["primary"], row["identity"]))
    if not entries:
        raise ValueError(f"{csv_path}: no rows")
    return entries


def read_folder_entries(root: str | Path) -> list[tuple[Path, str, str]]:
    """Files of a ``root/<primary>/<identity>/<file>`` tree as (path, primary, identity), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    entries = []
    for path in sorted(root.glob("*/*/*")):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTS | AUDIO_EXTS:
            entries.append((path, path.parent.parent.name, path.parent.name))
    if not entries:
        raise ValueError(f"{root}: no image or sound files at <primary>/<identity>/<file> depth")
    return entries


def load_entries(entries: list[tuple[Path, str, str]], modality: str,
                 detector: str | None = None) -> tuple[Samples, CropReport | None]:
    """Decode (path, primary, identity) entries of one modality into Samples.

    With ``detector`` (images only) each image is a camera frame cut by the face detector
    (:mod:`models.data.face_crops`); frames without a face are left out and counted in the report."""
    for path, _, _ in entries:
        if modality_of(path) != modality:
            raise ValueError(f"{path} is not a {modality} file (modality {modality!r} was asked for)")
    report = None
    if detector is not None:
        if modality != "image":
            raise ValueError("face detector crops are for images, not for speech")
        x, found, report = detector_crops([p for p, _, _ in entries], detector)
        entries = [e for e, ok in zip(entries, found) if ok]
        if not entries:
            raise ValueError(f"the {detector} detector found no face in any of the {report.frames} frames")
    primary_names = _label_order({e[1] for e in entries})
    identity_names = _label_order({e[2] for e in entries})
    quiet = len(entries) < 500
    if report is not None:
        rate = None
    elif modality == "image":
        x = np.stack([image_to_input(load_image(p))
                      for p, _, _ in tqdm(entries, desc="loading images", disable=quiet, leave=False)])
        rate = None
    else:
        decoded = [load_wav(p) for p, _, _ in tqdm(entries, desc="loading sound", disable=quiet, leave=False)]
        rate = Counter(r for _, r in decoded).most_common(1)[0][0]
        x = [w if r == rate else resample_poly(w, rate, r).astype(np.float32) for w, r in decoded]
    p_index = {n: i for i, n in enumerate(primary_names)}
    i_index = {n: i for i, n in enumerate(identity_names)}
    return Samples(
        modality=modality, x=x, rate=rate,
        primary=np.array([p_index[e[1]] for e in entries], dtype=np.int64),
        identity=np.array([i_index[e[2]] for e in entries], dtype=np.int64),
        primary_names=primary_names, identity_names=identity_names,
        sources=[str(p) for p, _, _ in entries] if modality == "image" else None,
    ), report


def generic_protocol(path: str | Path, modality: str, *, seed: int = 0, size: str = "full",
                     detector: str | None = None) -> Protocol:
    """Protocol for a CSV file (name "csv") or a labelled folder (name "folder").

    size="small" keeps at most 10 samples per person (the first ones, in file order). With ``detector``
    the images are whole frames cut by the face detector (name "csv-detected" / "folder-detected").
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: a dataset file must be a .csv with header {','.join(CSV_COLUMNS)}")
        name, entries = "csv", read_csv_entries(path)
    elif path.is_dir():
        name, entries = "folder", read_folder_entries(path)
    else:
        raise FileNotFoundError(f"dataset not found: {path}")
    if size == "small":
        seen: Counter[str] = Counter()
        kept = []
        for e in entries:
            seen[e[2]] += 1
            if seen[e[2]] <= 10:
                kept.append(e)
        entries = kept
    samples, report = load_entries(entries, modality, detector)
    if len(samples.primary_names) < 2:
        raise ValueError(f"{path}: the primary label has a single value {samples.primary_names}")
    model_people, attack_people = split_people(samples.identity, seed)
    attack_train_idx, _ = split_per_person(samples.identity, attack_people, seed)
    mask = np.zeros(len(samples), dtype=bool)
    mask[attack_train_idx] = True
    log.info("%s dataset %s: %d %s samples, %d people", name, path, len(samples), modality,
             len(samples.identity_names))
    if report is not None:
        name = f"{name}-detected"
    return unseen_people_protocol(name, path.stem, samples, model_people, mask, crop=report)
