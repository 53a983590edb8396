"""Bundles: round trip, stable content-hash id, tamper refusal, extractor without the analyzer file."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from models import bundle
from models.bundle import (HashMismatchError, MissingFileError, load_analyzer, load_extractor, load_full,
                           make_untrained_bundle, read_manifest)


@pytest.mark.parametrize("modality", ["image", "speech"])
def test_untrained_bundle_round_trip(tmp_path, modality):
    t0 = time.perf_counter()
    mid = make_untrained_bundle(tmp_path, modality, seed=1, dims=8)
    assert time.perf_counter() - t0 < 5  # generous: the contract says well under a second; CI is shared
    m = read_manifest(tmp_path)
    assert m["model"] == mid and mid.startswith(m["task"] + "-") and len(mid.split("-")[-1]) == 12
    assert m["format"] == 1 and m["pca_dims"] == 8 and m["feature"] == {"dtype": "float32", "shape": [8]}
    assert set(m["files"]) == {"extractor.pt", "analyzer.pt"}

    ext, ana, full = load_extractor(tmp_path), load_analyzer(tmp_path), load_full(tmp_path)
    assert ext.model_id == ana.model_id == full.model_id == mid
    assert ext.feature_shape == (8,) and ext.feature_dtype == "float32"
    rng = np.random.default_rng(0)
    inputs = [rng.random(ext.input_shape, dtype=np.float32) for _ in range(5)]
    feats = ext.extract_batch(inputs)
    assert feats.shape == (5, 8) and feats.dtype == np.float32
    probs = ana.analyze_batch(feats)
    assert probs.shape == (5, len(ana.labels)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # split serving equals the whole network
    np.testing.assert_allclose(full.predict_batch(inputs), probs, atol=1e-5)
    # batch equals item by item
    one_by_one = np.concatenate([ext.extract_batch([x]) for x in inputs])
    np.testing.assert_allclose(one_by_one, feats, atol=1e-5)


def test_same_weights_same_id_and_seed_changes_it(tmp_path):
    a = make_untrained_bundle(tmp_path / "a", "image", seed=3)
    b = make_untrained_bundle(tmp_path / "b", "image", seed=3)
    c = make_untrained_bundle(tmp_path / "c", "image", seed=4)
    assert a == b != c
    assert (tmp_path / "a" / "extractor.pt").read_bytes() == (tmp_path / "b" / "extractor.pt").read_bytes()
    # the id ignores metrics
    m = read_manifest(tmp_path / "a")
    m["metrics"] = {"primary_accuracy": 0.5}
    assert bundle.model_id(m) == a


def test_tampered_weights_are_refused(tmp_path):
    make_untrained_bundle(tmp_path, "image")
    path = tmp_path / "extractor.pt"
    state = torch.load(path, weights_only=True)
    key = next(iter(state))
    state[key] = state[key] + 0.01
    torch.save(state, path)
    with pytest.raises(HashMismatchError, match=r"extractor\.pt: sha256 .* does not match the manifest"):
        load_extractor(tmp_path)
    load_analyzer(tmp_path)  # the other half is untouched and still loads
    with pytest.raises(HashMismatchError):
        load_full(tmp_path)


def test_edited_manifest_is_refused(tmp_path):
    make_untrained_bundle(tmp_path, "speech")
    m = read_manifest(tmp_path)
    m["input"]["shift_semitones"] = [0.0, 0.0]  # e.g. someone turns the pitch shift off
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(HashMismatchError, match="manifest was edited"):
        load_extractor(tmp_path)


def test_extractor_loads_without_analyzer(tmp_path):
    make_untrained_bundle(tmp_path, "image")
    (tmp_path / "analyzer.pt").unlink()
    ext = load_extractor(tmp_path)
    raw = (np.random.default_rng(0).random((120, 90, 3)) * 255).astype(np.uint8)
    feats = ext.extract_raw([raw, raw])
    assert feats.shape == (2, 8)
    np.testing.assert_allclose(feats[0], feats[1])
    with pytest.raises(MissingFileError, match="analyzer.pt"):
        load_analyzer(tmp_path)


def test_missing_manifest(tmp_path):
    with pytest.raises(MissingFileError, match="no manifest"):
        load_extractor(tmp_path)


def test_weights_file_is_a_plain_state_dict(tmp_path):
    make_untrained_bundle(tmp_path, "image", dims=None)
    state = torch.load(tmp_path / "extractor.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert read_manifest(tmp_path)["feature"]["shape"] == [64 * 8 * 8]


def test_speech_extract_raw_with_seeded_rng_is_reproducible(tmp_path):
    make_untrained_bundle(tmp_path, "speech")
    t = np.arange(6000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    a = load_extractor(tmp_path, rng=np.random.default_rng(5)).extract_raw([(wave, 16000)])
    b = load_extractor(tmp_path, rng=np.random.default_rng(5)).extract_raw([(wave, 16000)])
    assert a.shape == (1, 8)
    np.testing.assert_array_equal(a, b)
