"""The private embedding: identity-agnostic contrastive loss, adversary, noise, int8/fp16 release,
the home's secret pitch range, and a tiny private training run that learns and round-trips a bundle."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.bundle import load_analyzer, load_extractor, make_manifest, make_untrained_bundle, save_bundle
from models.embedding_training import EmbeddingConfig, train_embedding
from models.losses import PrivateLoss, agnostic_contrastive_loss, confusion_loss
from models.private import IdentityAdversary, fit_private
from models.release import decode, encode, feature_spec, fit_scale, round_trip
from models.train_cli import build_parser
from tests.training_data import faces, isolated_training, protocol  # noqa: F401 (isolated_training is a fixture)


def test_agnostic_loss_known_answer():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    label = torch.tensor([0, 0, 1])
    hinge = (10 - math.sqrt(65)) ** 2  # pair (1, 2): other label, distance sqrt(65) < margin 10
    # (0, 1): same label, other person -> 25 each way; (0, 2) exactly at the margin -> 0
    got = agnostic_contrastive_loss(z, label, torch.tensor([0, 1, 0]), margin=10.0, normalize=False)
    assert float(got) == pytest.approx((2 * 25 + 2 * hinge) / 6, rel=1e-5)
    # the same person's same-label pair is no pair at all
    got = agnostic_contrastive_loss(z, label, torch.tensor([0, 0, 1]), margin=10.0, normalize=False)
    assert float(got) == pytest.approx(2 * hinge / 4, rel=1e-5)
    # normalised, neither the scale of the features nor a common offset matters: an offset would otherwise
    # be a way to lower the loss without bringing a class's members together
    ident = torch.tensor([0, 1, 0])
    torch.testing.assert_close(agnostic_contrastive_loss(z * 7, label, ident, 10.0),
                               agnostic_contrastive_loss(z, label, ident, 10.0))
    torch.testing.assert_close(agnostic_contrastive_loss(z + torch.tensor([40.0, -25.0]), label, ident, 10.0),
                               agnostic_contrastive_loss(z, label, ident, 10.0))


def test_agnostic_loss_prefers_people_mixed_within_a_class():
    label = torch.tensor([0, 0, 1, 1])
    ident = torch.tensor([0, 1, 0, 1])
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # class points
    by_person = torch.tensor([[1.0, 0.0], [1.0, 0.6], [0.0, 1.0], [0.6, 1.0]])  # person offsets kept
    assert agnostic_contrastive_loss(collapsed, label, ident, 2.0) < agnostic_contrastive_loss(by_person, label, ident, 2.0)


def test_confusion_loss_is_smallest_for_a_uniform_prediction():
    uniform = torch.zeros(4, 5)
    assert float(confusion_loss(uniform)) == pytest.approx(math.log(5), rel=1e-6)
    peaked = torch.tensor([[5.0, 0, 0, 0, 0]] * 4)
    assert float(confusion_loss(peaked)) > math.log(5) + 1
    assert IdentityAdversary(3, 7)(torch.randn(6, 3)).shape == (6, 7)
    with pytest.raises(ValueError):
        PrivateLoss(adversary_weight=-1)


def test_adversary_loop_hides_identity_from_a_trained_adversary():
    """Inputs carry the primary label in one coordinate and the person in another: with the adversary
    on, the learnt 1-d release keeps the label and drops the person."""
    from models.inputs import InputSet

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = 256
    y = rng.integers(0, 2, n)
    who = rng.integers(0, 4, n)
    x = np.zeros((n, 1, 1, 1, 2), np.float32)
    x[:, 0, 0, 0, 0] = y * 2 - 1 + rng.normal(0, 0.1, n)
    x[:, 0, 0, 0, 1] = who * 2.0 + rng.normal(0, 0.1, n)
    data = InputSet(x, y)
    torch.manual_seed(0)
    ext = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 1))
    with torch.no_grad():  # start from a release that mixes both
        ext[1].weight.copy_(torch.tensor([[1.0, 1.0]]))
    ana = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    from models.training_loops import LoopConfig
    fit_private(ext, ana, data, who, LoopConfig(30, lr=1e-2), PrivateLoss(adversary_weight=1.0), rng)
    w = ext[1].weight.detach()[0]
    # the person's coordinate is (nearly) ignored; without the adversary its weight stays above 0.1 x
    assert abs(float(w[1])) < 0.05 * abs(float(w[0]))
    with torch.no_grad():
        acc = float((ana(ext(data.plain())).argmax(1) == data.y).float().mean())
    assert acc >= 0.95


@pytest.mark.parametrize("dtype,bound", [("int8", None), ("float16", 2.0 ** -11)])
def test_release_round_trip_error_bounds(dtype, bound):
    rng = np.random.default_rng(1)
    z = (rng.normal(size=(500, 6)) * np.array([0.01, 0.1, 1, 10, 100, 1000])).astype(np.float32)
    scale = fit_scale(z) if dtype == "int8" else None
    spec = feature_spec(dtype, [6], scale)
    wire = encode(z, spec)
    assert wire.dtype == np.dtype(dtype) and wire.shape == z.shape
    back = decode(wire, spec)
    assert back.dtype == np.float32
    err = np.abs(back - z)
    if dtype == "int8":
        assert np.all(err <= scale / 2 * (1 + 1e-5))  # half a step per dimension
        assert np.abs(wire).max() <= 127 and len(spec["scale"]) == 6
        # beyond the fitted range: clipped, never wrapped around
        assert decode(encode(z * 10, spec), spec)[np.argmax(z[:, 5]), 5] > 0
    else:
        assert np.all(err <= bound * np.abs(z) + 1e-7)
    np.testing.assert_array_equal(round_trip(z, spec), back)
    with pytest.raises(ValueError):
        feature_spec("int8", [6], None)


def test_noise_is_fresh_per_message_and_scaled_per_dimension(tmp_path):
    from models.nets import build_net, image_config
    from models.pca import PCAFit
    from models.split import assemble

    cfg = image_config(2)
    c, h, w = cfg.shape_after("block3")
    basis, _ = torch.linalg.qr(torch.randn(c * h * w, 2, generator=torch.Generator().manual_seed(0)))
    std = np.array([1.0, 10.0], np.float32)
    pca = PCAFit(mean=np.zeros(c * h * w, np.float32), components=basis.numpy(), std=std, explained=0.0)
    ext, ana = assemble(build_net(cfg), cfg, "block3", pca, noise_std=0.5)
    manifest = make_manifest(task="glasses", modality="image", labels=["a", "b"], net_cfg=cfg, cut="block3",
                             embedding="private", pca=pca, noise_std=0.5)
    save_bundle(tmp_path, extractor=ext, analyzer=ana, manifest=manifest, onnx=False)
    e = load_extractor(tmp_path)
    x = [np.full((1, 64, 64), 0.5, np.float32)] * 400
    a, b = e.extract_batch(x), e.extract_batch(x)
    assert not np.array_equal(a, b)  # a fresh draw every call ...
    assert not np.allclose(a[0], a[1])  # ... and for every message of a batch
    spread = np.concatenate([a, b]).std(axis=0)
    np.testing.assert_allclose(spread, 0.5 * std, rtol=0.15)


def test_home_pitch_range_replaces_the_bundles(tmp_path):
    from gateway.config import ConfigError, GatewaySettings

    make_untrained_bundle(tmp_path, "speech")
    assert load_extractor(tmp_path)._inputs.front_end.config.shift_semitones == (2.0, 5.0)
    home = GatewaySettings(pitch_shift="3,4.5")
    e = load_extractor(tmp_path, shift_semitones=home.pitch_shift_range)
    assert e._inputs.front_end.config.shift_semitones == (3.0, 4.5)
    assert "shift_semitones" not in str(e.model_id) and e.manifest["input"]["shift_semitones"] == [2.0, 5.0]
    for bad in ("4", "5,3", "a,b", "1,13"):
        with pytest.raises(ConfigError):
            GatewaySettings(pitch_shift=bad)


def test_private_is_the_default_and_its_settings():
    assert build_parser().parse_args(["--modality", "image", "--data", "x", "--out", "o"]).embedding == "private"
    cfg = EmbeddingConfig()
    assert cfg.embedding == "private" and cfg.projected
    assert cfg.dims_for(10) == 9 and cfg.dims_for(2) == 1  # classes - 1: the rank of Fisher's discriminant
    assert cfg.setting("dtype") == "int8" and cfg.setting("projection") == "lda" and cfg.losses().active
    assert cfg.setting("noise_std", "speech") > cfg.setting("noise_std", "image") > 0
    with pytest.raises(ValueError, match="modality"):
        cfg.setting("noise_std")
    assert EmbeddingConfig(noise_std=0.2).setting("noise_std") == 0.2
    # speech is cut after block4 (block3's time-frequency map keeps where a digit was said, which a linear
    # projection cannot remove); faces after block3 (block4 overfits 200 training faces)
    assert cfg.cut_for("speech") == "block4" and cfg.cut_for("image") == "block3"
    assert EmbeddingConfig(cut="block2").cut_for("speech") == "block2"
    with pytest.raises(ValueError, match="modality"):
        cfg.cut_for(None)
    paper = EmbeddingConfig(embedding="advanced")
    assert paper.dims_for(10) == 8 and paper.setting("noise_std") == 0 and not paper.losses().active
    assert paper.cut_for("speech") == paper.cut_for("image") == "block3"
    assert EmbeddingConfig(embedding="advanced", noise_std=0.3, dtype="float16").setting("dtype") == "float16"
    with pytest.raises(ValueError, match="PCA projection"):
        EmbeddingConfig(embedding="siamese", dtype="int8")
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingConfig(dtype="int4")
    with pytest.raises(ValueError, match="projection"):
        EmbeddingConfig(projection="ica")
    with pytest.raises(ValueError, match="PCA projection"):
        EmbeddingConfig(embedding="simple", projection="lda")


@pytest.mark.parametrize("projection", ["pca", "lda"])
def test_tiny_private_training_learns_and_serves_int8(tmp_path, isolated_training, projection):
    proto = protocol(faces(8, 8, seed=0), faces(4, 8, seed=1))
    cfg = EmbeddingConfig(embedding="private", dims=1, epochs=15, analyzer_epochs=8, noise_std=0.2, seed=3,
                          projection=projection)
    t = train_embedding(proto, cfg, use_cache=False)
    assert t.pca is not None and t.pca.k == 1
    assert t.feature["dtype"] == "int8" and len(t.feature["scale"]) == 1
    assert t.metrics["primary_accuracy"] >= 0.75  # chance is 0.5
    manifest = make_manifest(task="glasses", modality="image", labels=["no_glasses", "glasses"],
                             net_cfg=t.net_cfg, cut=t.cut, embedding="private", pca=t.pca, noise_std=0.2)
    manifest["feature"] = t.feature
    save_bundle(tmp_path / "b", extractor=t.extractor, analyzer=t.analyzer, manifest=manifest, onnx=False)
    feats = load_extractor(tmp_path / "b").extract_batch(list(proto.test.x))
    assert feats.dtype == np.int8 and feats.shape == (len(proto.test), 1)  # one byte per message
    probs = load_analyzer(tmp_path / "b").analyze_batch(feats)
    assert float((probs.argmax(1) == proto.test.primary).mean()) >= 0.7
