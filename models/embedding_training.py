"""The paper's three embeddings and privedge's private one, trained on a protocol's training split.

- simple: train the network for the primary task, cut it.
- siamese: then fine-tune the whole network with cross-entropy + weight x contrastive loss on the
  flattened cut-layer output, pairs similar iff they share the primary label.
- advanced: Siamese, then PCA to k dims at the end of the extractor and reconstruction at the start of the
  analyzer (fitted on the training features), then the analyzer fine-tuned with the frozen projection in
  place (the authors did this; without it PCA-8 costs several points).
- private: no Siamese step; PCA to k = classes - 1 dims, then extractor and analyzer trained together
  through the projection with the identity-agnostic contrastive loss and an identity adversary on the
  released features (``models.private``), Gaussian noise on them, and int8 on the wire
  (``models.release``). Each of these is also an option of the advanced embedding (``PRIVATE_DEFAULTS``
  says what ``private`` turns on).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.data.cache import cache_dir, cache_key
from models.inputs import InputSet, speech_variants
from models.nets import DEFAULT_CUT, NetConfig, build_net, image_config, speech_config
from models.pca import PCAFit, fit_lda, fit_pca
from models.losses import PrivateLoss, contrastive_loss
from models.private import fit_private
from models.release import RELEASE_DTYPES, feature_spec, fit_scale, round_trip
from models.speech import SpeechConfig, SpeechFrontEnd
from models.split import assemble
from models.training_loops import LoopConfig, accuracy, deterministic, features, fit

log = logging.getLogger(__name__)

EMBEDDINGS = ("private", "simple", "siamese", "advanced")
DEFAULT_EMBEDDING = "private"
# What ``--embedding private`` uses where a setting is not given (None): chosen by the privacy sweep
# (bench/privacy_sweep.py, docs/results/privacy/). dims None = classes - 1 (the rank of Fisher's
# discriminant), at least MIN_PRIVATE_DIMS. A per-modality entry is a dict. Full audits, 2-core Intel
# machine (FSDD uncut 0.987, speaker chance 0.167; ORL unseen people uncut 0.915, identity chance 0.05,
# primary-label floor 0.097; figures are digits or glasses accuracy / best attacker's identity top-1):
# - FSDD at block3, LDA-9, noise 0.5: the within-class share of the projected spread stayed at 12-15%
#   for agnostic weights 0.5 to 8 (0.957-0.967 / 0.33): block3's output is still a time-frequency map,
#   and a linear projection of it keeps where in the window a digit was said, so the features cannot
#   collapse to one point per digit. After block4 they do (2%): agnostic 1 gives 0.987 / 0.140,
#   log-rank 1.05, EER 0.50 (seed 1: 1.000 / 0.177; agnostic 4: 0.990 / 0.187; no adversary:
#   0.983 / 0.177).
# - ORL at block3 (block4 overfits the 200 training faces: 0.875-0.890), LDA-1: agnostic 0.5 / 1 / 2
#   with noise 0.35: 0.970 / 0.217, 0.167, 0.167; with noise 0.5: 0.920-0.925 / 0.117-0.133, at the
#   primary-label floor of every measure (log-rank 0.71-0.76 against 0.72, EER 0.37 against 0.355).
# - Over 4 audit seeds (other noise draws and attackers; privacy_sweep --repeat): ORL noise 0.5 gives
#   glasses 0.894 [0.860, 0.925], below the uncut 0.915 - 1 point; noise 0.35 0.935 [0.905, 0.970] with
#   identity 0.125 [0.100, 0.133]. FSDD meets every target at both (0.5: 0.993 / 0.174; 0.35: 0.997 /
#   0.179, log-rank 0.974 against 0.991).
PRIVATE_DEFAULTS = {"cut": {"image": "block3", "speech": "block4"}, "dims": None, "agnostic_weight": 1.0,
                    "adversary_weight": 0.3, "noise_std": {"image": 0.35, "speech": 0.5}, "dtype": "int8",
                    "projection": "lda"}
MIN_PRIVATE_DIMS = 1
# ... and what the others use: the paper's PCA-8, no identity terms, float32.
PAPER_DEFAULTS = {"cut": DEFAULT_CUT, "dims": 8, "agnostic_weight": 0.0, "adversary_weight": 0.0,
                  "noise_std": 0.0, "dtype": "float32", "projection": "pca"}
PROJECTIONS = ("pca", "lda")
# Bump when the training code changes what it produces for the same settings: PRIMARY_VERSION invalidates
# the cached primary networks, TRAINING_VERSION the bundles built from them (the demo's cache).
PRIMARY_VERSION = 1
TRAINING_VERSION = 3


@dataclass(frozen=True)
class EmbeddingConfig:
    """How to train one bundle. ``None`` means the embedding's or modality's default (see the ``*_for``
    methods and ``PRIVATE_DEFAULTS``)."""

    embedding: str = DEFAULT_EMBEDDING
    # Cut after this block; None = the embedding's default (``cut_for``): block3 for the paper's three.
    cut: str | None = None
    # PCA components: 8 float32 = 32 bytes per message, the paper's setting; private: classes - 1.
    dims: int | None = None
    # Epochs of primary training; ORL has 200 training images (7 steps an epoch), FSDD 2700.
    epochs: int | None = None
    # Siamese fine-tuning epochs, at a lower learning rate, starting from the primary network.
    siamese_epochs: int | None = None
    # Epochs with the frozen PCA in place: the analyzer learns to read k numbers instead of the full layer.
    analyzer_epochs: int | None = None
    # What those epochs train: "analyzer" (the authors' choice; the extractor stays as the Siamese step
    # left it) or "both" (the extractor too, through the fixed projection); None = the modality's default
    # (see ``pca_tuning_for``).
    pca_tune: str | None = None
    # Learning rate of those epochs (cosine-decayed); None = the modality's default.
    pca_lr: float | None = None
    # The authors' margin; with normalised features the contrastive term is of order margin**2 ...
    margin: float = 10.0
    # ... so 0.01 x 100 puts it on the scale of the cross-entropy (the authors used 0.001-0.01).
    contrastive_weight: float = 0.01
    normalize: bool = True
    # Gaussian noise on the projected features, relative to each dimension's spread; 0 = off.
    noise_std: float | None = None
    # Identity-agnostic contrastive loss on the released features (same label, other person: pulled).
    agnostic_weight: float | None = None
    # Weight of the identity adversary's confusion term on the released features.
    adversary_weight: float | None = None
    # Feature dtype on the wire: float32, float16, or int8 with a per-dimension scale in the manifest.
    dtype: str | None = None
    # The frozen projection to k dims: "pca" (the paper's: the directions of largest spread) or "lda"
    # (Fisher's: the directions that separate the primary classes, against the spread within a class).
    projection: str | None = None
    seed: int = 0
    # Pitch-shifted log-mel versions precomputed per training utterance, one sampled each epoch.
    variants: int = 4
    speech: SpeechConfig = field(default_factory=SpeechConfig)

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.dims is not None and self.dims < 1:
            raise ValueError(f"dims must be >= 1, got {self.dims}")
        if self.margin <= 0 or self.contrastive_weight < 0 or self.variants < 1 or any(
                v is not None and v < 0 for v in (self.noise_std, self.agnostic_weight, self.adversary_weight)):
            raise ValueError(f"invalid embedding settings {self}")
        if self.pca_tune not in (None, "analyzer", "both"):
            raise ValueError(f"pca_tune must be analyzer or both, got {self.pca_tune!r}")
        if self.projection is not None and self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.dtype is not None and self.dtype not in RELEASE_DTYPES:
            raise ValueError(f"dtype must be one of {RELEASE_DTYPES}, got {self.dtype!r}")
        if not self.projected and (self.noise_std or self.agnostic_weight or self.adversary_weight
                                   or self.dtype not in (None, "float32") or self.projection not in (None, "pca")):
            raise ValueError("noise, identity losses and feature dtypes act on the PCA projection: use them "
                             "with the advanced or private embedding")

    @property
    def projected(self) -> bool:
        """Whether the extractor ends with a PCA projection."""
        return self.embedding in ("advanced", "private")

    def setting(self, name: str, modality: str | None = None):
        """A privacy setting: the explicit value, else the embedding's default (for ``modality``, where the
        default depends on it)."""
        value = getattr(self, name)
        if value is not None:
            return value
        value = (PRIVATE_DEFAULTS if self.embedding == "private" else PAPER_DEFAULTS)[name]
        if isinstance(value, dict):
            if modality not in value:
                raise ValueError(f"the default {name} depends on the modality ({sorted(value)}), got {modality!r}")
            return value[modality]
        return value

    def cut_for(self, modality: str) -> str:
        """The cut layer: the explicit one, else ``PRIVATE_DEFAULTS['cut']`` (private) or ``DEFAULT_CUT``."""
        if self.cut is not None:
            return self.cut
        return self.setting("cut", modality)

    def dims_for(self, n_classes: int) -> int:
        dims = self.setting("dims")
        return dims if dims is not None else max(MIN_PRIVATE_DIMS, n_classes - 1)

    def losses(self) -> PrivateLoss:
        return PrivateLoss(agnostic_weight=self.setting("agnostic_weight"),
                           adversary_weight=self.setting("adversary_weight"), margin=self.margin)

    def pca_tuning_for(self, modality: str) -> tuple[str, float]:
        """(what, learning rate) trained behind the frozen PCA. Measured with PCA-8 (uncut / result):
        FSDD analyzer-only 10 epochs at 2e-3: 0.987 / 0.893, extractor too: 0.987 / 0.963;
        ORL analyzer-only at 5e-4: 0.955 / 0.945, extractor too at 2e-3: 0.955 / 0.925 (200 images overfit).
        The identity terms act on the extractor, so with them it always trains (ORL at 5e-4)."""
        what, lr = ("analyzer", 5e-4) if modality == "image" else ("both", 2e-3)
        if self.losses().active:
            what = "both"
        return (self.pca_tune or what, self.pca_lr if self.pca_lr is not None else lr)

    def epochs_for(self, modality: str) -> tuple[int, int, int]:
        """(primary, siamese, analyzer) epochs: explicit ones, else the modality's defaults."""
        primary, siamese, analyzer = (40, 15, 10) if modality == "image" else (15, 3, 15)
        if self.embedding == "private":
            siamese, analyzer = 0, (60 if modality == "image" else 30)
        return (self.epochs if self.epochs is not None else primary,
                self.siamese_epochs if self.siamese_epochs is not None else siamese,
                self.analyzer_epochs if self.analyzer_epochs is not None else analyzer)


@dataclass
class Trained:
    """A trained split network, ready for ``models.bundle.save_bundle``."""

    net_cfg: NetConfig
    extractor: nn.Sequential
    analyzer: nn.Sequential
    cut: str
    pca: PCAFit | None
    metrics: dict
    # The manifest's ``feature`` entry (dtype, shape, int8 scale): see ``models.release.feature_spec``.
    feature: dict | None = None


def prepare(samples, modality: str, cfg: EmbeddingConfig, *, train: bool, seed: int) -> InputSet:
    """Samples -> InputSet: images as they are (augmented when training), speech through the front end
    (``cfg.variants`` shifted versions per utterance for training, one for testing)."""
    if modality == "image":
        x = np.asarray(samples.x, dtype=np.float32)[:, None]  # (N, 1, 1, 64, 64)
        return InputSet(x, samples.primary, augment="image" if train else "none")
    fe = SpeechFrontEnd.from_config(cfg.speech)
    x = speech_variants(samples.x, samples.rate, fe, variants=cfg.variants if train else 1, seed=seed)
    return InputSet(x, samples.primary, augment="speech" if train else "none")


def net_config_for(modality: str, n_classes: int, cfg: EmbeddingConfig) -> NetConfig:
    if modality == "image":
        return image_config(n_classes)
    return speech_config(n_classes, n_mels=cfg.speech.n_mels, frames=cfg.speech.frames)


def total_steps(n_train: int, modality: str, cfg: EmbeddingConfig, batch_size: int = 32) -> int:
    """Inputs processed over the whole run (for a progress bar)."""
    primary, siamese, analyzer = cfg.epochs_for(modality)
    epochs = primary + (siamese if cfg.embedding != "simple" else 0) + (analyzer if cfg.projected else 0)
    return epochs * n_train


def primary_network(net_cfg: NetConfig, train: InputSet, epochs: int, seed: int, rng: np.random.Generator, *,
                    progress: Callable[[int], None] | None = None, use_cache: bool = True) -> nn.Sequential:
    """The network trained for the primary task (the simple embedding, and the start of the others).

    Cached on disk by everything that determines it (inputs, labels, architecture, epochs, seed), so the
    Siamese and advanced embeddings of the same data start from the same network without retraining it.
    The numpy generator is advanced as if the network had been trained, so a cached run equals a fresh one.
    """
    loop = LoopConfig(epochs)
    net = build_net(net_cfg)
    path = cache_dir() / f"{_primary_key(net_cfg, train, epochs, seed)}.pt"
    if _load_cached_net(net, path, rng, use_cache):
        if progress is not None:
            progress(epochs * len(train))
        return net.eval()
    fit(net, train, loop, rng, progress=progress)
    if use_cache:
        _save_cached_net(net, path, rng)
    return net


def _primary_key(net_cfg: NetConfig, train: InputSet, epochs: int, seed: int) -> str:
    digest = hashlib.sha256(train.x.numpy().tobytes())
    digest.update(train.y.numpy().tobytes())
    return cache_key("primary-net", {"inputs": digest.hexdigest(), "augment": train.augment, "net": net_cfg.to_dict(),
                                     "loop": asdict(LoopConfig(epochs)), "seed": seed, "torch": torch.__version__,
                                     "version": PRIMARY_VERSION})


def siamese_network(net: nn.Sequential, net_cfg: NetConfig, cut: str, train: InputSet, cfg: EmbeddingConfig,
                    primary_epochs: int, epochs: int, rng: np.random.Generator, *,
                    progress: Callable[[int], None] | None = None, use_cache: bool = True) -> None:
    """Fine-tune the primary network ``net`` in place with cross-entropy + the contrastive loss at ``cut``.

    Cached like :func:`primary_network`, keyed by the primary network's key and the fine-tuning settings:
    the advanced embedding at a cut starts from the same Siamese network as the Siamese one there, and on
    a shared machine this step is a good part of a paper-table run.
    """
    loop = LoopConfig(epochs, lr=5e-4)
    key = cache_key("siamese-net", {"primary": _primary_key(net_cfg, train, primary_epochs, cfg.seed), "cut": cut,
                                    "loop": asdict(loop), "margin": cfg.margin, "weight": cfg.contrastive_weight,
                                    "normalize": cfg.normalize})
    path = cache_dir() / f"{key}.pt"
    if _load_cached_net(net, path, rng, use_cache):
        if progress is not None:
            progress(epochs * len(train))
        return
    front = net[:net_cfg.cut_index(cut) + 1]

    def pair_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cfg.contrastive_weight * contrastive_loss(f, y, cfg.margin, cfg.normalize)

    fit(net, train, loop, rng, extra_loss=pair_loss, features_of=front, progress=progress)
    if use_cache:
        _save_cached_net(net, path, rng)


def _load_cached_net(net: nn.Module, path, rng: np.random.Generator, use_cache: bool) -> bool:
    """Load a cached network and the generator states it was saved with; False when there is none."""
    if use_cache and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state["net"])
            rng.bit_generator.state = json.loads(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            log.info("network from cache %s", path)
            return True
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            log.warning("ignoring unreadable cached network %s: %s", path, e)
    return False


def _save_cached_net(net: nn.Module, path, rng: np.random.Generator) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"net": net.state_dict(), "rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def train_embedding(protocol, cfg: EmbeddingConfig, *, progress: Callable[[int], None] | None = None,
                    use_cache: bool = True) -> Trained:
    """Train ``cfg.embedding`` on ``protocol.train``; measure held-out accuracy on ``protocol.test``."""
    t0 = time.perf_counter()
    modality = protocol.train.modality
    train = prepare(protocol.train, modality, cfg, train=True, seed=cfg.seed)
    test = prepare(protocol.test, modality, cfg, train=False, seed=cfg.seed + 1)
    t_inputs = time.perf_counter() - t0
    net_cfg = net_config_for(modality, len(protocol.train.primary_names), cfg)
    cut = cfg.cut_for(modality)
    net_cfg.cut_index(cut)   # a bad cut fails before any training
    primary_epochs, siamese_epochs, analyzer_epochs = cfg.epochs_for(modality)
    rng = np.random.default_rng(cfg.seed)
    metrics: dict = {}
    with deterministic(cfg.seed):
        net = primary_network(net_cfg, train, primary_epochs, cfg.seed, rng, progress=progress,
                              use_cache=use_cache)
        metrics["uncut_accuracy"] = accuracy(net, test.plain(), test.y)
        log.info("primary network: held-out accuracy %.4f", metrics["uncut_accuracy"])
        if cfg.embedding in ("siamese", "advanced") and siamese_epochs > 0:
            siamese_network(net, net_cfg, cut, train, cfg, primary_epochs, siamese_epochs, rng, progress=progress,
                            use_cache=use_cache)
            metrics["siamese_accuracy"] = accuracy(net, test.plain(), test.y)
            log.info("after Siamese fine-tuning: held-out accuracy %.4f", metrics["siamese_accuracy"])
        pca, feature = None, None
        if cfg.projected:
            ext, ana, feature = _projected(net, net_cfg, cut, cfg, modality, train, protocol.train.identity,
                                           test, rng, metrics, progress)
        else:
            ext, ana = assemble(net, net_cfg, cut)
        metrics["primary_accuracy"] = released_accuracy(ext, ana, test, feature, cfg.seed)
    metrics["input_seconds"] = round(t_inputs, 2)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    log.info("%s embedding: held-out accuracy %.4f in %.0f s", cfg.embedding, metrics["primary_accuracy"],
             metrics["seconds"])
    pca = metrics.pop("_pca", None)
    return Trained(net_cfg=net_cfg, extractor=ext.eval(), analyzer=ana.eval(), cut=cut, pca=pca,
                   metrics=metrics, feature=feature)


def _projected(net: nn.Sequential, net_cfg: NetConfig, cut: str, cfg: EmbeddingConfig, modality: str,
               train: InputSet, identity: np.ndarray, test: InputSet, rng: np.random.Generator, metrics: dict,
               progress: Callable[[int], None] | None) -> tuple[nn.Sequential, nn.Sequential, dict]:
    """PCA to k dims at the cut (fitted on the training features), then training through the frozen
    projection with noise and the identity terms; returns (extractor, analyzer, manifest feature entry)."""
    cut_i = net_cfg.cut_index(cut)
    cut_features = features(net[:cut_i + 1], train.plain())  # (N, C*H*W)
    k = min(cfg.dims_for(net_cfg.n_classes), *cut_features.shape)
    if cfg.setting("projection") == "lda":
        pca = fit_lda(cut_features, train.y.numpy(), min(k, len(cut_features) - 1))
    else:
        pca = fit_pca(cut_features, k)
    metrics["_pca"] = pca
    metrics["pca_explained_variance"] = pca.explained
    noise = cfg.setting("noise_std", modality)
    ext, ana = assemble(net, net_cfg, cut, pca, noise)
    metrics["pca_accuracy_before_tuning"] = accuracy(nn.Sequential(ext, ana), test.plain(), test.y)
    _, _, epochs = cfg.epochs_for(modality)
    what, lr = cfg.pca_tuning_for(modality)
    metrics["pca_tune"] = what
    if what == "analyzer":
        for p in ext.parameters():
            p.requires_grad_(False)
    history = fit_private(ext, ana, train, identity, LoopConfig(epochs, lr=lr), cfg.losses(), rng,
                          train_extractor=what == "both", progress=progress)
    for p in ext.parameters():
        p.requires_grad_(True)
    if noise:  # the gateway's noise follows the released features' final spread, as in training
        ext.project.calibrate(torch.from_numpy(features(ext[:-1], train.plain())))
    if history["adversary_accuracy"] and cfg.losses().adversary_weight > 0:
        metrics["adversary_train_accuracy"] = history["adversary_accuracy"][-1]
    dtype = cfg.setting("dtype")
    scale = fit_scale(features(ext, train.plain())) if dtype == "int8" else None
    return ext, ana, feature_spec(dtype, [pca.k], scale)


def released_accuracy(ext: nn.Module, ana: nn.Module, data: InputSet, feature: dict | None, seed: int) -> float:
    """Held-out accuracy through what the analyzer receives: the extractor's output (noise drawn from
    ``seed``) encoded for the wire and decoded."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        z = features(ext, data.plain())
    if feature is not None:
        z = round_trip(z, feature)
    return accuracy(ana, torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)), data.y)
