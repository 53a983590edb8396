"""The audit of one or more bundles under one evaluation protocol.

For every bundle: the extractor turns each split of the protocol into released features; the bundle's
analyzer gives primary accuracy on ``test``; the identity attackers train on ``attack_train`` features and
are tested on ``attack_test``; the inversion decoder trains on the inputs and features of ``attack_train``
(plus ``train`` when that is another set) and rebuilds ``attack_test``. The "raw input" pseudo-bundle
releases the preprocessed input itself (the face crop, or the log-mel).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models.audit.attackers import TrainSettings
from models.audit.capacity import ReleaseBound, noise_sigma, release_bound
from models.audit.cost import CostError, measure_cost
from models.audit.face_recognition import DIMS as FACE_DIMS
from models.audit.face_recognition import NAME as FACE_RECOGNITION
from models.audit.face_recognition import face_descriptors
from models.audit.inversion import DecoderSettings, train_inversion
from models.audit.measures import (IdentityMeasures, LabelFloor, identity_measures, label_floors, psnr, ssim,
                                   verification_eer)
from models.audit.suite import AttackSuite, SuiteSettings, run_suite
from models.audit.whitebox import WhiteBoxSettings, invert_whitebox, reconstruction_match
from models.bundle import load_analyzer, load_extractor, read_manifest
from models.data import load_protocol
from models.data.samples import Protocol, Samples
from models.release import decode
from models.speech import SpeechConfig, SpeechFrontEnd

log = logging.getLogger(__name__)

RAW = "raw input"
STAGES_PER_BUNDLE = 5      # features, primary, identity, inversion, cost: for progress bars
ATTACKS = ("basic", "all")  # "all" adds the stronger attacks (models.audit.suite) and the bound per release


@dataclass(frozen=True)
class AuditSettings:
    """Everything that decides an audit's numbers besides the bundles and the data."""

    seed: int = 0
    size: str = "full"                    # protocol size: "full" | "small"
    attacker: TrainSettings = TrainSettings()
    decoder: DecoderSettings = DecoderSettings()
    examples: int = 8                     # held-out inputs shown in the reconstruction grid
    cost_repeats: int = 50                # timed runs per latency figure
    measure_cost: bool = True
    inversion: bool = True                # False: no inversion decoder (SSIM / PSNR not measured: NaN)
    attacks: str = "basic"                # one of ATTACKS
    suite: SuiteSettings = SuiteSettings()
    whitebox: WhiteBoxSettings = WhiteBoxSettings()   # attacks "all", with the inversion

    def __post_init__(self) -> None:
        if self.attacks not in ATTACKS:
            raise ValueError(f"attacks must be one of {ATTACKS}, got {self.attacks!r}")

    @classmethod
    def quick(cls, **overrides) -> "AuditSettings":
        """Short training everywhere: for smoke tests and CI, not for figures anyone quotes."""
        base = cls(attacker=TrainSettings(max_epochs=30, patience=5, refit=False),
                   decoder=DecoderSettings(max_rounds=3, steps_per_round=10, patience=2, max_train=200), cost_repeats=5,
                   suite=SuiteSettings.quick(), whitebox=WhiteBoxSettings(steps=20, max_inputs=16, others=8))
        return replace(base, **overrides)


@dataclass
class BundleAudit:
    """The measured figures of one bundle (or of the raw input)."""

    name: str
    protocol: str
    modality: str
    embedding: str
    cut: str | None
    dims: int                       # numbers per released feature vector
    feature_bytes: int              # per message: dims x bytes of the feature dtype
    bundle: str | None              # directory; None for the raw input
    model: str | None
    primary_accuracy: float | None  # None for the raw input (there is no analyzer)
    identity: IdentityMeasures
    eer: float
    ssim: float
    psnr: float
    examples: np.ndarray            # (K, 1, H, W) reconstructions of the first K attack_test inputs
    cost: dict = field(default_factory=dict)   # {"extractor": {...}, "full": {...}} (measure_cost)
    suite: AttackSuite | None = None           # the stronger attacks (attacks "all")
    bound: ReleaseBound | None = None          # bits per release (attacks "all"; None for the raw input)
    # attacks "all": {"decoder": ..., "white-box": ...} of models.audit.whitebox.reconstruction_match
    inversion_match: dict | None = None


@dataclass
class AuditRun:
    """All bundles of one audit, with the inputs their reconstructions are compared with."""

    protocol: str
    task: str
    modality: str
    data: str
    settings: AuditSettings
    originals: np.ndarray           # (K, 1, H, W): the first K attack_test inputs
    entries: list[BundleAudit]
    floor: LabelFloor | None = None   # what the true primary label alone gives away (measures.label_floors)
    crop: dict | None = None          # on detector crops: Protocol.crop (frames cropped, frames with no face)


class InputCache:
    """Preprocessed inputs of every split, computed once per front-end configuration.

    Speech inputs go through the pitch shift, which is random per utterance: a generator seeded from the
    audit seed and the split name makes every bundle with the same front end see the same log-mels.
    """

    def __init__(self, protocol: Protocol, seed: int) -> None:
        self.protocol, self.seed = protocol, seed
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def get(self, split: str, front_end: SpeechFrontEnd | None) -> np.ndarray:
        """(N, 1, H, W) float32 network inputs of ``split`` ("train", "test", "attack_train", ...)."""
        samples: Samples = getattr(self.protocol, split)
        if samples.modality == "image":
            return np.asarray(samples.x, dtype=np.float32)
        if front_end is None:
            raise ValueError("speech inputs need the extractor's front end")
        key = (split, json.dumps(front_end.config.to_dict(), sort_keys=True))
        if key not in self._cache:
            salt = ["train", "test", "attack_train", "attack_test"].index(split)
            rng = np.random.default_rng([self.seed, salt])
            self._cache[key] = np.stack([front_end(w, samples.rate, rng) for w in samples.x])
        return self._cache[key]


def _front_end(manifest: dict) -> SpeechFrontEnd | None:
    if manifest["modality"] != "speech":
        return None
    spec = {k: v for k, v in manifest["input"].items() if k not in ("kind", "shape")}
    return SpeechFrontEnd.from_config(SpeechConfig.from_dict(spec))


def _inversion_sets(protocol: Protocol) -> list[str]:
    """Splits the decoder trains on: attack_train, and train when it is a different set of samples."""
    a, t = protocol.attack_train, protocol.train
    same = a is t or (len(a) == len(t) and np.array_equal(a.identity, t.identity)
                      and np.array_equal(a.primary, t.primary))
    return ["attack_train"] if same else ["attack_train", "train"]


def _extract(extractor, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    """Released features as they travel (the manifest's dtype)."""
    return np.concatenate([extractor.extract_batch(list(inputs[s:s + batch]))
                           for s in range(0, len(inputs), batch)])


def _measure(name: str, release: Callable[[str], np.ndarray], cache: InputCache,
             front_end: SpeechFrontEnd | None, settings: AuditSettings, step: Callable[[str], None]
             ) -> tuple[IdentityMeasures, float, float, float, np.ndarray | None]:
    """Identity, verification and inversion figures for features ``release(split)``, with the decoder's
    reconstructions of every attack_test input (None without the inversion)."""
    p = cache.protocol
    f_train, f_test = release("attack_train"), release("attack_test")
    ident = identity_measures(f_train, p.attack_train.identity, f_test, p.attack_test.identity,
                              settings=settings.attacker, seed=settings.seed)
    eer = verification_eer(f_train, f_test, p.attack_test.identity, seed=settings.seed)
    step(f"{name}: inversion")
    originals = cache.get("attack_test", front_end)
    if not settings.inversion:
        return ident, eer, float("nan"), float("nan"), None
    splits = _inversion_sets(p)
    inv = train_inversion(np.concatenate([release(s) for s in splits]),
                          np.concatenate([cache.get(s, front_end) for s in splits]),
                          f_test, settings=settings.decoder, seed=settings.seed)
    return (ident, eer, float(ssim(originals, inv.reconstructions, 1.0).mean()),
            float(psnr(originals, inv.reconstructions, 1.0).mean()), inv.reconstructions)


def _examples(decoded: np.ndarray | None, cache: InputCache, front_end, settings: AuditSettings) -> np.ndarray:
    """The reconstructions shown in the grid: the first ones, black without the inversion."""
    if decoded is None:
        return np.zeros_like(cache.get("attack_test", front_end)[:settings.examples])
    return decoded[:settings.examples]


def _inversion_match(module, release: Callable[[str], np.ndarray], decoded: np.ndarray, cache: InputCache,
                     front_end, settings: AuditSettings) -> dict:
    """The decoder's and the white-box optimisation's reconstructions of the same seeded sample of
    attack_test, each scored by :func:`reconstruction_match` against the other people of attack_test."""
    p, w = cache.protocol, settings.whitebox
    gallery, ids = cache.get("attack_test", front_end), p.attack_test.identity
    pick = np.sort(np.random.default_rng([settings.seed, 29]).permutation(len(gallery))[:w.max_inputs])
    held = np.concatenate([cache.get(s, front_end) for s in _inversion_sets(p)])
    feats = release("attack_train")
    rebuilt = invert_whitebox(module, release("attack_test")[pick], held.mean(axis=0),
                              feats.reshape(len(feats), -1).std(axis=0), settings=w, seed=settings.seed)
    return {name: reconstruction_match(rec, gallery[pick], ids[pick], gallery, ids, others=w.others,
                                       seed=settings.seed)
            for name, rec in (("decoder", decoded[pick]), ("white-box", rebuilt.reconstructions))}


def audit_bundle(bundle_dir: str, cache: InputCache, settings: AuditSettings, name: str,
                 step: Callable[[str], None] = lambda _: None) -> BundleAudit:
    """Audit one bundle under ``cache.protocol``."""
    p = cache.protocol
    manifest = read_manifest(bundle_dir)
    if list(manifest["labels"]) != list(p.test.primary_names):
        raise ValueError(f"bundle {bundle_dir} predicts {manifest['labels']}, but protocol {p.name} "
                         f"labels {p.test.primary_names}: audit it on data of its own task")
    torch.manual_seed(settings.seed)     # feature noise, if the bundle adds any, is drawn from torch
    extractor = load_extractor(bundle_dir, rng=np.random.default_rng(settings.seed))
    front_end = _front_end(manifest)
    step(f"{name}: features")
    features: dict[str, np.ndarray] = {}

    def wire(split: str) -> np.ndarray:
        if split not in features:
            features[split] = _extract(extractor, cache.get(split, front_end))
        return features[split]

    def release(split: str) -> np.ndarray:
        """As the cloud reads them: float32, int8 multiplied back by the manifest's scale."""
        w = wire(split)
        return decode(w.reshape(len(w), -1), manifest["feature"]).reshape(w.shape)

    # In a fixed order: the noise of a noisy extractor is drawn in it (a set's order changes from one
    # process to the next with string hashing, and so did the figures of the same audit).
    for split in dict.fromkeys(["test", "attack_train", "attack_test", *_inversion_sets(p)]):
        release(split)
    step(f"{name}: primary accuracy")
    probs = load_analyzer(bundle_dir).analyze_batch(wire("test"))
    primary = float((probs.argmax(axis=1) == p.test.primary).mean())
    step(f"{name}: identity attackers")
    ident, eer, s, db, decoded = _measure(name, release, cache, front_end, settings, step)
    suite = bound = match = None
    if settings.attacks == "all":
        step(f"{name}: stronger attacks")

        def rounds(split: str, r: int) -> np.ndarray:     # round 0 is the release the basic attackers saw
            out = [release(split)]
            for _ in range(r - 1):
                w = _extract(extractor, cache.get(split, front_end))
                out.append(decode(w.reshape(len(w), -1), manifest["feature"]))
            return np.stack([o.reshape(len(o), -1) for o in out])      # (R, N, D)

        noisy = float(manifest.get("noise_std", 0.0)) > 0
        suite = run_suite(rounds, p, noisy, settings.suite, seed=settings.seed)
        dims = int(np.prod(manifest["feature"]["shape"]))
        bound = release_bound(manifest["feature"], noise_sigma(extractor.module, dims), settings.suite.lengths,
                              suite.n_classes, releases=release("attack_train"))
        if decoded is not None:
            match = _inversion_match(extractor.module, release, decoded, cache, front_end, settings)
    step(f"{name}: cost")
    cost = {}
    if settings.measure_cost:
        try:
            cost = {part: measure_cost(bundle_dir, part, repeats=settings.cost_repeats)
                    for part in ("extractor", "full")}
        except CostError as e:       # the privacy figures stand without the timing ones
            log.warning("bundle %s: no cost figures: %s", name, e)
    dims = int(np.prod(manifest["feature"]["shape"]))
    return BundleAudit(
        name=name, protocol=p.name, modality=manifest["modality"], embedding=manifest["embedding"],
        cut=manifest["cut"], dims=dims, feature_bytes=dims * np.dtype(manifest["feature"]["dtype"]).itemsize,
        bundle=str(bundle_dir), model=manifest.get("model"), primary_accuracy=primary, identity=ident,
        eer=eer, ssim=s, psnr=db, examples=_examples(decoded, cache, front_end, settings), cost=cost, suite=suite,
        bound=bound, inversion_match=match)


def audit_raw(cache: InputCache, settings: AuditSettings, front_end: SpeechFrontEnd | None,
              step: Callable[[str], None] = lambda _: None) -> BundleAudit:
    """The attacker on the raw (preprocessed) inputs: what there is to protect."""
    step(f"{RAW}: identity attackers")

    def release(split: str) -> np.ndarray:
        x = cache.get(split, front_end)
        return x.reshape(len(x), -1)

    ident, eer, s, db, decoded = _measure(RAW, release, cache, front_end, settings, step)
    suite = None
    if settings.attacks == "all":
        step(f"{RAW}: stronger attacks")
        suite = run_suite(lambda split, r: release(split)[None], cache.protocol, False, settings.suite,
                          seed=settings.seed)
    dims = int(np.prod(cache.get("attack_test", front_end).shape[1:]))
    modality = cache.protocol.test.modality
    return BundleAudit(
        name=RAW, protocol=cache.protocol.name, modality=modality, embedding="raw", cut=None, dims=dims,
        feature_bytes=4 * dims, bundle=None, model=None, primary_accuracy=None, identity=ident, eer=eer,
        ssim=s, psnr=db, examples=_examples(decoded, cache, front_end, settings), suite=suite)


def audit_face_recognition(cache: InputCache, settings: AuditSettings,
                           step: Callable[[str], None] = lambda _: None) -> BundleAudit:
    """The raw-input attacker with a trained face recognition network (:mod:`models.audit.face_recognition`)
    on each attack photograph, whole: the same attackers and stronger attacks on its descriptors."""
    p = cache.protocol
    if p.test.modality != "image" or p.attack_train.sources is None or p.attack_test.sources is None:
        raise ValueError(f"the face recognition baseline reads each photograph whole, and protocol {p.name} "
                         "does not name its files (LFW, a CSV file and a labelled folder do)")
    step(f"{FACE_RECOGNITION}: descriptors")
    found = {s: face_descriptors(getattr(p, s).sources) for s in ("attack_train", "attack_test")}
    fallbacks = sum(d.fallbacks for d in found.values())
    step(f"{FACE_RECOGNITION}: identity attackers")
    ident, eer, s, db, _ = _measure(FACE_RECOGNITION, lambda split: found[split].values, cache, None,
                                    replace(settings, inversion=False), step)
    suite = None
    if settings.attacks == "all":
        step(f"{FACE_RECOGNITION}: stronger attacks")
        suite = run_suite(lambda split, r: found[split].values[None], p, False, settings.suite, seed=settings.seed)
    photographs = len(p.attack_train) + len(p.attack_test)
    return BundleAudit(
        name=FACE_RECOGNITION, protocol=p.name, modality="image", embedding="face recognition", cut=None,
        dims=FACE_DIMS, feature_bytes=4 * FACE_DIMS, bundle=None,
        model=f"dlib_face_recognition_resnet_model_v1 ({fallbacks} of {photographs} photographs with no HOG "
              "face: central half described)",
        primary_accuracy=None, identity=ident, eer=eer, ssim=s, psnr=db,
        examples=_examples(None, cache, None, settings), suite=suite)


def unique_names(bundle_dirs: list[str]) -> list[str]:
    """Row names: each bundle directory's name, with ``-2``, ``-3``... where two are alike."""
    names, seen = [], {}
    for d in bundle_dirs:
        base = Path(d).resolve().name
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def run_audit(bundle_dirs: list[str], data: str, *, raw: bool = False, modality: str | None = None,
              settings: AuditSettings = AuditSettings(), detector: str | None = None,
              face_recognition: bool = False, step: Callable[[str], None] = lambda _: None) -> AuditRun:
    """Audit ``bundle_dirs`` (all of one modality and task) and, with ``raw``, the raw input; with
    ``face_recognition`` also the raw photographs through a trained face recognition network.

    ``modality`` is needed only when no bundle is given. With ``detector`` the images are whole frames
    cut by that face detector, as the gateway cuts them (``load_protocol``'s ``detector``).
    ``step(description)`` is called before each stage (``STAGES_PER_BUNDLE`` per bundle), for progress bars.
    """
    manifests = [read_manifest(d) for d in bundle_dirs]
    modalities = {m["modality"] for m in manifests} | ({modality} if modality else set())
    if len(modalities) != 1:
        raise ValueError(f"one audit covers one modality; got {sorted(modalities) or 'none'}")
    modality = modalities.pop()
    protocol = load_protocol(modality, data, seed=settings.seed, size=settings.size, detector=detector)
    log.info("protocol %s: train %d, test %d, attack %d -> %d", protocol.name, len(protocol.train),
             len(protocol.test), len(protocol.attack_train), len(protocol.attack_test))
    cache = InputCache(protocol, settings.seed)
    front_end = _front_end(manifests[0]) if manifests else (
        SpeechFrontEnd.from_config(SpeechConfig()) if modality == "speech" else None)
    entries = []
    if raw:
        entries.append(audit_raw(cache, settings, front_end, step))
    if face_recognition:
        entries.append(audit_face_recognition(cache, settings, step))
    for d, name in zip(bundle_dirs, unique_names(bundle_dirs)):
        entries.append(audit_bundle(d, cache, settings, name, step))
    originals = cache.get("attack_test", front_end)[:settings.examples]
    floor = label_floors(protocol.attack_train.identity, protocol.attack_train.primary,
                         protocol.attack_test.identity, protocol.attack_test.primary, seed=settings.seed)
    return AuditRun(protocol=protocol.name, task=protocol.task, modality=modality, data=str(data),
                    settings=settings, originals=originals, entries=entries, floor=floor, crop=protocol.crop)
