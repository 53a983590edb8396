"""Model bundles: ``manifest.json`` + ``extractor.pt`` (gateway) + ``analyzer.pt`` (cloud).

Weight files are plain state dicts, loaded with ``torch.load(..., weights_only=True)``; the manifest's
``arch`` rebuilds the modules. The manifest records the sha256 of each weight file and a content-hash
``model`` id (``{task}-{12 hex}``) over everything but ``model`` and ``metrics``, so two bundles with the
same id hold the same weights and settings. Loading refuses a file whose hash does not match.
A home receives the manifest and ``extractor.pt`` only: :func:`load_extractor` never opens the analyzer.
The loaders return the served halves of :mod:`models.serving` (re-exported here).

Each half may also travel as ONNX (``extractor.onnx``, ``analyzer.onnx``, see :mod:`models.onnx_runtime`),
listed with their sha256 under the manifest's ``onnx`` key. That key is left out of the ``model`` id: the id
names the weights and settings, whichever runtime serves them, so a gateway on ONNX and a worker on torch
agree. An ONNX file is bound to the id instead by its hash and by agreeing, on a probe batch, with the
torch half's outputs that its export recorded (:mod:`models.onnx_export`). The loaders take ``runtime``:
``torch`` (the reference, the default here), ``onnx``, or ``auto`` (ONNX when the bundle has it).

An image bundle also carries its face detector, ``face_detector.onnx`` (:mod:`models.face_onnx`), under the
manifest's ``face_detector`` key, likewise left out of the id; :func:`load_extractor` checks its hash and
gives its path to the gateway's face stage.

A half served on ONNX Runtime is loaded without torch: the weight file's hash is still checked, but it is
not unpickled until something asks for the torch module (``.module``). So a gateway on ONNX Runtime never
imports torch, and a home install (``pip install privedge``, without the ``train`` extra) has none.

The hashes bind files to a manifest, not to whoever wrote it: anyone who can write a bundle can rewrite
its manifest too. What authenticates a bundle is the provider's signature over every file
(:mod:`models.signing`): :func:`save_bundle` signs what it wrote with the provider key it is given (or
the one ``PRIVEDGE_SIGNING_KEY`` names), and the services verify it against the pinned public key
before they call any loader here. The loaders themselves do not check signatures: the audit, the
benchmarks and the tests load bundles they made themselves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from models import face_onnx, onnx_runtime, signing
from models.manifest import (ANALYZER_FILE, EXTRACTOR_FILE, FEATURE_DTYPES, FORMAT, MANIFEST,  # noqa: F401
                             REQUIRED, BundleError, HashMismatchError, MissingFileError, checked_manifest,
                             model_id, read_manifest, sha256_file, verified_path, write_manifest)
from models.serving import Analyzer, Extractor, FullModel, TorchForward, softmax  # noqa: F401 (re-exported)
from models.speech import SpeechConfig

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

HALVES = {"extractor": (EXTRACTOR_FILE, 0), "analyzer": (ANALYZER_FILE, 1)}
"""half -> (weight file, index in the arch's (extractor, analyzer) pair)."""


def save_bundle(out_dir, *, extractor: "nn.Module", analyzer: "nn.Module", manifest: dict, onnx: bool = True,
                sign_key=None) -> str:
    """Write both state dicts and the completed manifest into ``out_dir``, then (``onnx``) both halves
    exported to ONNX, then sign the bundle with the provider's private ``sign_key`` file (default:
    ``PRIVEDGE_SIGNING_KEY``; neither: the bundle is left unsigned). Returns the model id."""
    import torch

    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    if manifest["modality"] not in ("image", "speech"):
        raise ValueError(f"modality must be image or speech, got {manifest['modality']!r}")
    if manifest["feature"].get("dtype") not in FEATURE_DTYPES:
        raise ValueError(f"feature dtype must be one of {FEATURE_DTYPES}, got {manifest['feature']}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    signing.unsign(out)  # a bundle rewritten in place is unsigned until it is signed again
    files = {}
    for name, module in ((EXTRACTOR_FILE, extractor), (ANALYZER_FILE, analyzer)):
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        torch.save(state, out / name)
        files[name] = sha256_file(out / name)
    full = {k: v for k, v in manifest.items() if k not in ("model", "files", "format")}
    full = {"format": FORMAT, **full, "files": files}
    full = json.loads(json.dumps(full))  # plain JSON types only, so the id is what a reader recomputes
    full["model"] = model_id(full)
    write_manifest(out, full)
    log.info("saved bundle %s to %s", full["model"], out)
    if onnx:
        export_onnx(out)
    sign_key = sign_key if sign_key is not None else signing.signing_key_from_env()
    if sign_key is not None:
        signing.sign_bundle(out, sign_key)
    return full["model"]


def _load_state(dir, name: str, manifest: dict) -> dict:
    import torch

    path = verified_path(dir, name, manifest["files"].get(name), manifest)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a corrupt archive
        raise BundleError(f"{path}: cannot load weights: {e}") from e


def _build(manifest: dict) -> tuple["nn.Sequential", "nn.Sequential"]:
    from models.split import build_from_arch

    try:
        return build_from_arch(manifest["arch"])
    except ValueError as e:
        raise BundleError(f"bundle {manifest['model']}: {e}") from e


def _load_into(module: "nn.Module", state: dict, what: str, manifest: dict) -> "nn.Module":
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise BundleError(f"bundle {manifest['model']}: {what} weights do not fit its arch: {e}") from e
    return module.eval()


def _torch_half(dir, manifest: dict, half: str) -> "nn.Module":
    """``half``'s torch module with its verified weights (imports torch)."""
    name, index = HALVES[half]
    state = _load_state(dir, name, manifest)
    return _load_into(_build(manifest)[index], state, half, manifest)


def _serve(dir, manifest: dict, half: str, runtime: str, threads: int | None):
    """(torch module or None, forward) serving ``half`` on ``runtime`` (torch, onnx, auto). On ONNX Runtime
    with a recorded probe no torch is imported: the module is None and the weight file's hash is checked."""
    if onnx_runtime.serves_onnx(dir, manifest, half, runtime):
        if onnx_runtime.recorded(manifest, half):
            name = HALVES[half][0]
            verified_path(dir, name, manifest["files"].get(name), manifest)
            return None, onnx_runtime.onnx_forward(dir, manifest, half, threads)
        from models.onnx_export import checked_forward  # an export without a probe record: check with torch

        module = _torch_half(dir, manifest, half)
        return module, checked_forward(dir, manifest, half, module, threads)
    module = _torch_half(dir, manifest, half)
    return module, TorchForward(module)


def _loader(dir, manifest: dict, half: str):
    return lambda: _torch_half(dir, manifest, half)


def export_onnx(dir) -> dict:
    """Export the halves whose torch weights ``dir`` holds to ONNX (:mod:`models.onnx_runtime`) and record
    them in the manifest; the model id does not change, a signature the bundle had is removed. Returns the
    manifest's new ``onnx`` entry."""
    from models.onnx_export import export_halves

    dir = Path(dir)
    if signing.unsign(dir):
        log.warning("%s: exporting ONNX voids the bundle's signature; it must be signed again", dir)
    manifest = checked_manifest(dir)
    halves = {"extractor": _torch_half(dir, manifest, "extractor")}
    if (dir / ANALYZER_FILE).is_file():
        halves["analyzer"] = _torch_half(dir, manifest, "analyzer")
    entry = export_halves(dir, manifest, halves)
    if manifest["modality"] == "image":
        _add_face_detector(dir)
    return entry


def _add_face_detector(dir: Path) -> None:
    """Put the face detector into an image bundle (models/face_onnx.py) so that its home serves it on ONNX
    Runtime; without the converter or the .tflite (not the ``train`` extra) the bundle goes without, and
    its gateway needs LiteRT for scenes."""
    from models.faces import BLAZEFACE_MODELS, tflite_path

    try:
        entry = face_onnx.export_detector(dir, tflite_path(BLAZEFACE_MODELS["short"][0]), "short")
    except (ImportError, FileNotFoundError) as e:
        log.warning("%s: saved without a face detector (%s); its gateway will need LiteRT for scenes", dir, e)
        return
    write_manifest(dir, {**read_manifest(dir), face_onnx.KEY: entry})


def face_detector_path(dir, manifest: dict) -> Path | None:
    """The bundle's face detector (``face_detector.onnx``) once its hash checks out, or None for a bundle
    without one."""
    entry = manifest.get(face_onnx.KEY)
    if entry is None:
        return None
    return verified_path(dir, entry.get("file", face_onnx.DETECTOR_FILE), entry.get("sha256"), manifest)


def load_extractor(dir, *, rng: np.random.Generator | None = None,
                   shift_semitones: tuple[float, float] | None = None, runtime: str = "torch",
                   threads: int | None = None) -> Extractor:
    """Verify the manifest and ``extractor.pt`` (and ``extractor.onnx`` when it serves, and the face
    detector an image bundle carries: ``.face_detector``, its path or None) and build the gateway half
    (``analyzer.*`` not needed). ``shift_semitones``: the home's secret pitch-shift range,
    replacing the bundle's (speech only). ``threads``: ONNX Runtime threads (default: the process's share,
    :func:`models.runtimes.limit_threads`)."""
    manifest = checked_manifest(dir)
    ext, forward = _serve(dir, manifest, "extractor", runtime, threads)
    model = Extractor(manifest, ext, rng, forward, shift_semitones, load_module=_loader(dir, manifest, "extractor"))
    model.face_detector = face_detector_path(dir, manifest)  # the face stage's network, for image bundles
    return model


def load_analyzer(dir, *, runtime: str = "torch", threads: int | None = None) -> Analyzer:
    """Verify the manifest and ``analyzer.pt`` (and ``analyzer.onnx`` when it serves); the cloud half."""
    manifest = checked_manifest(dir)
    ana, forward = _serve(dir, manifest, "analyzer", runtime, threads)
    return Analyzer(manifest, ana, forward, load_module=_loader(dir, manifest, "analyzer"))


def load_full(dir, *, rng: np.random.Generator | None = None, runtime: str = "torch",
              threads: int | None = None) -> FullModel:
    """Both halves, joined: for serving without a split."""
    manifest = checked_manifest(dir)
    (ext, ext_fwd), (ana, ana_fwd) = (_serve(dir, manifest, half, runtime, threads)
                                      for half in ("extractor", "analyzer"))

    def whole():
        from torch import nn

        return nn.Sequential(*(_torch_half(dir, manifest, half) for half in ("extractor", "analyzer")))

    return FullModel(manifest, ext, ana, rng, (ext_fwd, ana_fwd), load_module=whole)


def input_spec(modality: str, in_shape: tuple[int, ...], speech: SpeechConfig | None = None) -> dict:
    """The manifest's ``input``: image size, or the speech front end's settings."""
    if modality == "image":
        return {"kind": "image", "size": int(in_shape[-1]), "shape": list(in_shape)}
    if speech is None:
        raise ValueError("speech bundles need the front end's settings")
    return {"kind": "speech", **speech.to_dict(), "shape": list(in_shape)}


def make_manifest(*, task: str, modality: str, labels: list[str], net_cfg, cut: str, embedding: str,
                  pca=None, noise_std: float = 0.0, speech: SpeechConfig | None = None,
                  feature_dtype: str = "float32", metrics: dict | None = None) -> dict:
    """A manifest for ``save_bundle`` from the training settings (feature shape derived from the arch)."""
    from models.split import arch_of

    arch = arch_of(net_cfg, cut, pca, noise_std)
    c, h, w = arch["cut_shape"]
    shape = [pca.k] if pca is not None else [c * h * w]
    manifest = {
        "task": task, "modality": modality, "labels": list(labels),
        "input": input_spec(modality, net_cfg.in_shape, speech),
        "cut": cut, "embedding": embedding,
        "feature": {"dtype": feature_dtype, "shape": shape},
        "pca_dims": None if pca is None else pca.k,
        "noise_std": float(noise_std), "arch": arch,
    }
    if metrics is not None:
        manifest["metrics"] = metrics
    return manifest


def make_untrained_bundle(out_dir, modality: str, *, seed: int = 0, dims: int | None = 8,
                          cut: str = "block3", noise_std: float = 0.0, sign_key=None) -> str:
    """A valid bundle from randomly initialised networks, in well under a second (pipeline tests that
    need no accuracy, benchmarks of cost per cut point). ``dims`` PCA components with a random
    orthonormal basis, or None for no PCA; ``cut``: the block the extractor ends with; ``noise_std``:
    feature noise relative to a spread of 1 per component (needs ``dims``); ``sign_key``: as for
    :func:`save_bundle`."""
    import torch

    from models.nets import build_net, image_config, speech_config
    from models.pca import PCAFit
    from models.split import assemble

    gen = torch.Generator().manual_seed(seed)
    if modality == "image":
        task, labels, cfg, speech = "glasses", ["no_glasses", "glasses"], image_config(2), None
    elif modality == "speech":
        speech = SpeechConfig()
        task, labels = "digit", [str(d) for d in range(10)]
        cfg = speech_config(10, n_mels=speech.n_mels, frames=speech.frames)
    else:
        raise ValueError(f"modality must be image or speech, got {modality!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_net(cfg)
    pca = None
    if dims:
        c, h, w = cfg.shape_after(cut)
        basis, _ = torch.linalg.qr(torch.randn(c * h * w, dims, generator=gen))  # (D, k) orthonormal
        pca = PCAFit(mean=np.zeros(c * h * w, np.float32), components=basis.numpy().astype(np.float32),
                     std=np.ones(dims, np.float32), explained=0.0)
    ext, ana = assemble(net, cfg, cut, pca, noise_std)
    manifest = make_manifest(task=task, modality=modality, labels=labels, net_cfg=cfg, cut=cut,
                             embedding="untrained", pca=pca, noise_std=noise_std, speech=speech)
    return save_bundle(out_dir, extractor=ext, analyzer=ana, manifest=manifest, sign_key=sign_key)
