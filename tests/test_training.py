"""Training: a tiny run learns (image and speech), determinism for a fixed seed, the contrastive loss,
and the CLI writes a bundle and metrics.json."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.bundle import load_analyzer, load_extractor, read_manifest
from models.data.samples import Protocol, Samples
from models.embeddings import EmbeddingConfig, train_embedding
from models.training import contrastive_loss


def _faces(n_people: int, per_person: int, seed: int) -> Samples:
    """64x64 blobs: the primary label is a dark bar across the 'eyes', identity is the blob's shape."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    xs, prim, ident = [], [], []
    for p in range(n_people):
        ax, ay = rng.uniform(0.25, 0.4, size=2)
        for i in range(per_person):
            g = (i + p) % 2
            cx, cy = 0.5 + rng.normal(0, 0.03, size=2)
            img = (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1).astype(np.float32) * 0.7
            if g:
                img[26:31, 12:52] = 0.05
            img += rng.normal(0, 0.1, size=img.shape).astype(np.float32)
            xs.append(np.clip(img, 0, 1)[None])
            prim.append(g)
            ident.append(p)
    return Samples("image", np.stack(xs).astype(np.float32), np.array(prim, np.int64), np.array(ident, np.int64),
                   ["no_glasses", "glasses"], [f"p{i}" for i in range(n_people)], None)


def _beeps(n: int, seed: int, rate: int = 8000) -> Samples:
    """Utterances of 1, 2 or 3 tone bursts (the 'digit') at a random pitch (the 'speaker')."""
    rng = np.random.default_rng(seed)
    waves, prim, ident = [], [], []
    for i in range(n):
        k = i % 3
        f0 = rng.uniform(120, 300)
        t = np.arange(int(0.15 * rate)) / rate
        burst = np.sin(2 * np.pi * f0 * t) * np.hanning(len(t))
        gap = np.zeros(int(0.1 * rate))
        w = np.concatenate([np.concatenate([burst, gap]) for _ in range(k + 1)])
        waves.append((0.5 * w + rng.normal(0, 0.01, len(w))).astype(np.float32))
        prim.append(k)
        ident.append(int(f0 // 60))
    return Samples("speech", waves, np.array(prim, np.int64), np.array(ident, np.int64),
                   ["1", "2", "3"], [str(i) for i in range(6)], rate)


def _protocol(train: Samples, test: Samples) -> Protocol:
    return Protocol(name="synthetic-test", task="glasses" if train.modality == "image" else "digit",
                    train=train, test=test, attack_train=test, attack_test=test)


def _params(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_tiny_image_training_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    proto = _protocol(_faces(10, 8, seed=0), _faces(4, 8, seed=1))
    # 15 epochs of 3 steps: fewer leave the batch-norm running statistics unsettled
    cfg = EmbeddingConfig(embedding="advanced", dims=4, epochs=15, siamese_epochs=2, analyzer_epochs=2, seed=3)
    a = train_embedding(proto, cfg, use_cache=False)
    assert a.metrics["primary_accuracy"] >= 0.75  # chance is 0.5
    assert a.pca is not None and a.pca.k == 4


def test_training_is_deterministic_and_the_cache_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    proto = _protocol(_faces(3, 8, seed=0), _faces(2, 4, seed=1))
    cfg = EmbeddingConfig(embedding="advanced", dims=3, epochs=2, siamese_epochs=1, analyzer_epochs=1, seed=5)
    a = train_embedding(proto, cfg, use_cache=False)
    _assert_same(a, train_embedding(proto, cfg, use_cache=False))
    # the cached primary network gives the same result as training it again
    _assert_same(a, train_embedding(proto, cfg))
    assert any((tmp_path / "cache").glob("primary-net-*.pt"))
    _assert_same(a, train_embedding(proto, cfg))
    other = train_embedding(proto, EmbeddingConfig(**{**cfg.__dict__, "seed": 6}), use_cache=False)
    assert not torch.equal(next(iter(other.extractor.state_dict().values())),
                           next(iter(a.extractor.state_dict().values())))


def _assert_same(a, b) -> None:
    for (ka, va), (kb, vb) in zip(_params(a.extractor).items(), _params(b.extractor).items()):
        assert ka == kb and torch.equal(va, vb), ka
    for (ka, va), (kb, vb) in zip(_params(a.analyzer).items(), _params(b.analyzer).items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert a.metrics["primary_accuracy"] == b.metrics["primary_accuracy"]


@pytest.mark.slow
def test_tiny_speech_training_learns_through_the_pitch_shift(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    proto = _protocol(_beeps(60, seed=0), _beeps(30, seed=1))
    cfg = EmbeddingConfig(embedding="simple", epochs=8, variants=2, seed=0)
    t = train_embedding(proto, cfg)
    assert t.metrics["primary_accuracy"] >= 0.6  # chance is 1/3


def test_contrastive_loss_pulls_same_labels_and_pushes_others():
    y = torch.tensor([0, 0, 1, 1])
    together = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert contrastive_loss(together, y, margin=1.0) < contrastive_loss(mixed, y, margin=1.0)
    # normalised: the loss does not depend on the scale of the features
    torch.testing.assert_close(contrastive_loss(mixed * 100, y, 10.0), contrastive_loss(mixed, y, 10.0))
    # not normalised, far-apart dissimilar pairs cost nothing and identical similar pairs nothing
    assert float(contrastive_loss(together * 100, y, 10.0, normalize=False)) == 0.0


def test_embedding_config_validation():
    with pytest.raises(ValueError, match="embedding must be"):
        EmbeddingConfig(embedding="fancy")
    with pytest.raises(ValueError, match="noise"):
        EmbeddingConfig(embedding="simple", noise_std=0.1)
    with pytest.raises(ValueError, match="pca_tune"):
        EmbeddingConfig(pca_tune="everything")


@pytest.mark.slow
def test_train_cli_writes_bundle_and_metrics(tmp_path, monkeypatch):
    from models import train
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "cache"))
    proto = _protocol(_faces(4, 6, seed=0), _faces(2, 6, seed=1))
    monkeypatch.setattr("models.data.load_protocol", lambda *a, **k: proto, raising=False)
    out = tmp_path / "bundle"
    rc = train.main(["--modality", "image", "--data", "synthetic", "--embedding", "advanced", "--epochs", "2",
                     "--siamese-epochs", "1", "--analyzer-epochs", "1", "--dims", "8", "--threads", "1",
                     "--no-progress", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("primary_accuracy", "feature_bytes", "extractor_params", "extractor_macs", "protocol",
                "embedding", "cut", "dims", "seconds"):
        assert key in m, key
    assert m["feature_bytes"] == 32 and m["dims"] == 8 and m["embedding"] == "advanced"
    assert 0.0 <= m["primary_accuracy"] <= 1.0 and m["extractor_macs"] > 0
    manifest = read_manifest(out)
    assert manifest["model"] == m["model"] and manifest["pca_dims"] == 8
    feats = load_extractor(out).extract_batch(list(proto.test.x[:3]))
    assert feats.shape == (3, 8)
    assert load_analyzer(out).analyze_batch(feats).shape == (3, 2)
