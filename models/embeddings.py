"""The paper's three embeddings, trained end to end on a protocol's training split.

- simple: train the network for the primary task, cut it.
- siamese: then fine-tune the whole network with cross-entropy + weight x contrastive loss on the
  flattened cut-layer output, pairs similar iff they share the primary label.
- advanced: Siamese, then PCA to k dims at the end of the extractor and reconstruction at the start of the
  analyzer (fitted on the training features), then the analyzer fine-tuned with the frozen projection in
  place (the authors did this; without it PCA-8 costs several points).
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
from models.pca import PCAFit, fit_pca
from models.speech import SpeechConfig, SpeechFrontEnd
from models.split import assemble
from models.training import LoopConfig, accuracy, contrastive_loss, deterministic, features, fit

log = logging.getLogger(__name__)

EMBEDDINGS = ("simple", "siamese", "advanced")
# Bump when the training code changes what it produces for the same settings (invalidates cached networks).
TRAINING_VERSION = 1


@dataclass(frozen=True)
class EmbeddingConfig:
    """How to train one bundle. ``None`` epochs mean the modality's default (see ``epochs_for``)."""

    embedding: str = "advanced"
    cut: str = DEFAULT_CUT
    # PCA components for the advanced embedding: 8 float32 = 32 bytes per message, the paper's setting.
    dims: int = 8
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
    noise_std: float = 0.0
    seed: int = 0
    # Pitch-shifted log-mel versions precomputed per training utterance, one sampled each epoch.
    variants: int = 4
    speech: SpeechConfig = field(default_factory=SpeechConfig)

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.dims < 1:
            raise ValueError(f"dims must be >= 1, got {self.dims}")
        if self.margin <= 0 or self.contrastive_weight < 0 or self.noise_std < 0 or self.variants < 1:
            raise ValueError(f"invalid embedding settings {self}")
        if self.pca_tune not in (None, "analyzer", "both"):
            raise ValueError(f"pca_tune must be analyzer or both, got {self.pca_tune!r}")
        if self.noise_std and self.embedding != "advanced":
            raise ValueError("noise is added to the PCA projection: use it with the advanced embedding")

    def pca_tuning_for(self, modality: str) -> tuple[str, float]:
        """(what, learning rate) trained behind the frozen PCA. Measured with PCA-8 (uncut / result):
        FSDD analyzer-only 10 epochs at 2e-3: 0.987 / 0.893, extractor too: 0.987 / 0.963;
        ORL analyzer-only at 5e-4: 0.955 / 0.945, extractor too at 2e-3: 0.955 / 0.925 (200 images overfit)."""
        what, lr = ("analyzer", 5e-4) if modality == "image" else ("both", 2e-3)
        return (self.pca_tune or what, self.pca_lr if self.pca_lr is not None else lr)

    def epochs_for(self, modality: str) -> tuple[int, int, int]:
        """(primary, siamese, analyzer) epochs: explicit ones, else the modality's defaults."""
        primary, siamese, analyzer = (40, 15, 10) if modality == "image" else (15, 3, 15)
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
    epochs = primary + (siamese if cfg.embedding != "simple" else 0) + (analyzer if cfg.embedding == "advanced" else 0)
    return epochs * n_train


def primary_network(net_cfg: NetConfig, train: InputSet, epochs: int, seed: int, rng: np.random.Generator, *,
                    progress: Callable[[int], None] | None = None, use_cache: bool = True) -> nn.Sequential:
    """The network trained for the primary task (the simple embedding, and the start of the others).

    Cached on disk by everything that determines it (inputs, labels, architecture, epochs, seed), so the
    Siamese and advanced embeddings of the same data start from the same network without retraining it.
    The numpy generator is advanced as if the network had been trained, so a cached run equals a fresh one.
    """
    loop = LoopConfig(epochs)
    digest = hashlib.sha256(train.x.numpy().tobytes())
    digest.update(train.y.numpy().tobytes())
    key = cache_key("primary-net", {"inputs": digest.hexdigest(), "augment": train.augment, "net": net_cfg.to_dict(),
                                    "loop": asdict(loop), "seed": seed, "torch": torch.__version__,
                                    "version": TRAINING_VERSION})
    path = cache_dir() / f"{key}.pt"
    net = build_net(net_cfg)
    if use_cache and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state["net"])
            rng.bit_generator.state = json.loads(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            log.info("primary network from cache %s", path)
            if progress is not None:
                progress(epochs * len(train))
            return net.eval()
        except (OSError, RuntimeError, KeyError, ValueError) as e:
            log.warning("ignoring unreadable cached network %s: %s", path, e)
    fit(net, train, loop, rng, progress=progress)
    if use_cache:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"net": net.state_dict(), "rng": json.dumps(rng.bit_generator.state),
                    "torch_rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, path)
    return net


def train_embedding(protocol, cfg: EmbeddingConfig, *, progress: Callable[[int], None] | None = None,
                    use_cache: bool = True) -> Trained:
    """Train ``cfg.embedding`` on ``protocol.train``; measure held-out accuracy on ``protocol.test``."""
    t0 = time.perf_counter()
    modality = protocol.train.modality
    train = prepare(protocol.train, modality, cfg, train=True, seed=cfg.seed)
    test = prepare(protocol.test, modality, cfg, train=False, seed=cfg.seed + 1)
    t_inputs = time.perf_counter() - t0
    net_cfg = net_config_for(modality, len(protocol.train.primary_names), cfg)
    cut_i = net_cfg.cut_index(cfg.cut)
    primary_epochs, siamese_epochs, analyzer_epochs = cfg.epochs_for(modality)
    rng = np.random.default_rng(cfg.seed)
    metrics: dict = {}
    with deterministic(cfg.seed):
        net = primary_network(net_cfg, train, primary_epochs, cfg.seed, rng, progress=progress,
                              use_cache=use_cache)
        metrics["uncut_accuracy"] = accuracy(net, test.plain(), test.y)
        log.info("primary network: held-out accuracy %.4f", metrics["uncut_accuracy"])
        if cfg.embedding in ("siamese", "advanced") and siamese_epochs > 0:
            front = net[:cut_i + 1]

            def pair_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return cfg.contrastive_weight * contrastive_loss(f, y, cfg.margin, cfg.normalize)

            fit(net, train, LoopConfig(siamese_epochs, lr=5e-4), rng, extra_loss=pair_loss,
                features_of=front, progress=progress)
            metrics["siamese_accuracy"] = accuracy(net, test.plain(), test.y)
            log.info("after Siamese fine-tuning: held-out accuracy %.4f", metrics["siamese_accuracy"])
        pca = None
        if cfg.embedding == "advanced":
            cut_features = features(net[:cut_i + 1], train.plain())  # (N, C*H*W)
            pca = fit_pca(cut_features, min(cfg.dims, *cut_features.shape))
            metrics["pca_explained_variance"] = pca.explained
            ext, ana = assemble(net, net_cfg, cfg.cut, pca, cfg.noise_std)
            whole = nn.Sequential(ext, ana)
            metrics["pca_accuracy_before_tuning"] = accuracy(whole, test.plain(), test.y)
            pca_tune, pca_lr = cfg.pca_tuning_for(modality)
            metrics["pca_tune"] = pca_tune
            if pca_tune == "both":
                fit(whole, train, LoopConfig(analyzer_epochs, lr=pca_lr), rng, progress=progress)
            else:
                for p in ext.parameters():
                    p.requires_grad_(False)
                fit(whole, train, LoopConfig(analyzer_epochs, lr=pca_lr), rng, params=list(ana.parameters()),
                    frozen=ext, progress=progress)
                for p in ext.parameters():
                    p.requires_grad_(True)
        else:
            ext, ana = assemble(net, net_cfg, cfg.cut)
        whole = nn.Sequential(ext, ana)
        metrics["primary_accuracy"] = accuracy(whole, test.plain(), test.y)
    metrics["input_seconds"] = round(t_inputs, 2)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    log.info("%s embedding: held-out accuracy %.4f in %.0f s", cfg.embedding, metrics["primary_accuracy"],
             metrics["seconds"])
    return Trained(net_cfg=net_cfg, extractor=ext.eval(), analyzer=ana.eval(), cut=cfg.cut, pca=pca,
                   metrics=metrics)
