"""A bundle's manifest and the files it names: reading, checking, hashing. No torch here.

``manifest.json`` lists every weight file with its sha256 and carries a content-hash ``model`` id
(:func:`model_id`); :func:`checked_manifest` refuses a manifest whose id does not match its content, and
:func:`verified_path` a file whose hash differs from the manifest's. The torch halves are loaded in
:mod:`models.bundle`, the ONNX ones in :mod:`models.onnx_runtime`; both build on this module, which imports
neither.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT = 1
MANIFEST = "manifest.json"
EXTRACTOR_FILE = "extractor.pt"
ANALYZER_FILE = "analyzer.pt"
# Keys the caller of save_bundle provides; save_bundle adds format, files and model.
REQUIRED = ("task", "modality", "labels", "input", "cut", "embedding", "feature", "pca_dims", "noise_std", "arch")
FEATURE_DTYPES = ("float32", "float16", "int8")  # int8 carries a per-dimension scale (models.release)


class BundleError(Exception):
    """A bundle cannot be used: malformed manifest, wrong format, unbuildable architecture."""


class HashMismatchError(BundleError):
    """A weight file's sha256 (or the manifest's model id) does not match the manifest."""


class MissingFileError(BundleError):
    """A file the bundle needs is not there."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_id(manifest: dict) -> str:
    """``{task}-{first 12 hex of sha256}`` of the canonical JSON of the manifest without model, metrics and
    onnx (the ONNX copies are another runtime's form of the same weights, checked against them on load) and
    face_detector (the image bundles' face detector, models/face_onnx.py: it finds faces, it is not part of
    the network the id names)."""
    core = {k: v for k, v in manifest.items() if k not in ("model", "metrics", "onnx", "face_detector")}
    digest = hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{manifest['task']}-{digest[:12]}"


def write_manifest(dir, manifest: dict) -> None:
    """Write ``manifest.json`` (sorted keys, so equal manifests are equal files)."""
    (Path(dir) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(dir) -> dict:
    """The parsed ``manifest.json`` of a bundle directory; checks only that it is a JSON object."""
    path = Path(dir) / MANIFEST
    if not path.is_file():
        raise MissingFileError(f"{path}: no manifest (is {dir} a privedge bundle?)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: manifest must be a JSON object")
    return manifest


def checked_manifest(dir) -> dict:
    """The manifest once its format, required keys and content-hash id check out (BundleError)."""
    manifest = read_manifest(dir)
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{dir}: unsupported bundle format {manifest.get('format')!r} (want {FORMAT})")
    missing = [k for k in (*REQUIRED, "files", "model") if k not in manifest]
    if missing:
        raise BundleError(f"{dir}: manifest lacks {missing}")
    expected = model_id(manifest)
    if manifest["model"] != expected:
        raise HashMismatchError(f"{dir}: manifest says model {manifest['model']!r} but its content hashes to "
                                f"{expected!r}; the manifest was edited")
    return manifest


def verified_path(dir, name: str, want: str | None, manifest: dict) -> Path:
    """``dir/name`` once its sha256 is ``want`` (from the manifest); MissingFileError / HashMismatchError."""
    path = Path(dir) / name
    if not path.is_file():
        raise MissingFileError(f"{path}: missing (bundle {manifest['model']})")
    got = sha256_file(path)
    if got != want:
        raise HashMismatchError(f"{path}: sha256 {got[:16]}... does not match the manifest's "
                                f"{str(want)[:16]}... for bundle {manifest['model']}; refusing a modified or "
                                "foreign weight file")
    return path
