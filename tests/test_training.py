"""Training: a tiny run learns (image and speech), determinism for a fixed seed, the contrastive loss,
and the CLI writes a bundle and metrics.json."""
from __future__ import annotations

import json

import pytest
import torch

from models.bundle import load_analyzer, load_extractor, read_manifest
from models.embedding_training import EmbeddingConfig, train_embedding
from models.losses import contrastive_loss
from tests.training_data import beeps, faces, isolated_training, protocol  # noqa: F401 (isolated_training is a fixture)


def _params(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_tiny_image_training_learns(tmp_path, isolated_training):
    proto = protocol(faces(10, 8, seed=0), faces(4, 8, seed=1))
    # 15 epochs of 3 steps: fewer leave the batch-norm running statistics unsettled
    cfg = EmbeddingConfig(embedding="advanced", dims=4, epochs=15, siamese_epochs=2, analyzer_epochs=2, seed=3)
    a = train_embedding(proto, cfg, use_cache=False)
    assert a.metrics["primary_accuracy"] >= 0.75  # chance is 0.5
    assert a.pca is not None and a.pca.k == 4


def test_training_is_deterministic_and_the_cache_changes_nothing(tmp_path, isolated_training):
    proto = protocol(faces(3, 8, seed=0), faces(2, 4, seed=1))
    cfg = EmbeddingConfig(embedding="advanced", dims=3, epochs=2, siamese_epochs=1, analyzer_epochs=1, seed=5)
    a = train_embedding(proto, cfg, use_cache=False)
    _assert_same(a, train_embedding(proto, cfg, use_cache=False))
    # the cached primary and Siamese networks give the same result as training them again
    _assert_same(a, train_embedding(proto, cfg))
    assert any((tmp_path / "cache").glob("primary-net-*.pt"))
    assert any((tmp_path / "cache").glob("siamese-net-*.pt"))
    _assert_same(a, train_embedding(proto, cfg))
    # the Siamese embedding at the same cut leaves the same network the advanced one starts from
    siamese = EmbeddingConfig(embedding="siamese", epochs=2, siamese_epochs=1, seed=5)
    fresh = train_embedding(proto, siamese, use_cache=False)
    _assert_same(fresh, train_embedding(proto, siamese))
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
def test_tiny_speech_training_learns_through_the_pitch_shift(tmp_path, isolated_training):
    proto = protocol(beeps(60, seed=0), beeps(30, seed=1))
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
    from models import train_cli
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "cache"))
    proto = protocol(faces(4, 6, seed=0), faces(2, 6, seed=1))
    monkeypatch.setattr("models.data.load_protocol", lambda *a, **k: proto, raising=False)
    out = tmp_path / "bundle"
    rc = train_cli.main(["--modality", "image", "--data", "synthetic", "--embedding", "advanced", "--epochs", "2",
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
