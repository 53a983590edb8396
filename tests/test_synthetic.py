"""Synthetic faces and spoken digits: structure, determinism, and that identity and the primary label are
recoverable from the raw input (otherwise privacy figures measured on them would mean nothing)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from models.data import load_protocol
from models.data.probe import raw_identity, raw_primary
from models.data.synth_faces import generate_faces
from models.data.synth_speech import RATE, WORDS, _cut_words, generate_speech, make_voices
from models.preprocess import IMAGE_SIZE

FAST = os.environ.get("PRIVEDGE_FAST") == "1"
SIZE = "small" if FAST else "full"


@pytest.fixture(scope="module")
def faces():
    return load_protocol("image", "synthetic", seed=0, size=SIZE)


@pytest.fixture(scope="module")
def speech():
    return load_protocol("speech", "synthetic", seed=0, size=SIZE)


def _disjoint_people(p) -> None:
    assert not set(p.train.identity) & set(p.test.identity)
    assert set(p.attack_train.identity) == set(p.attack_test.identity) == set(p.test.identity)
    assert len(p.attack_train) + len(p.attack_test) == len(p.test)


def test_faces_protocol_structure(faces):
    assert (faces.name, faces.task) == ("synthetic-faces", "glasses")
    assert faces.train.primary_names == ["no_glasses", "glasses"]
    assert len(faces.train.identity_names) >= 50
    for s in (faces.train, faces.test, faces.attack_train, faces.attack_test):
        assert s.x.dtype == np.float32 and s.x.shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE)
        assert 0.0 <= s.x.min() and s.x.max() <= 1.0 and s.rate is None
        assert s.primary.dtype == np.int64 and set(s.primary) <= {0, 1}
    _disjoint_people(faces)
    # Attack split per person: images 1-7 train, 8-10 test.
    counts = np.bincount(faces.attack_train.identity)
    assert set(counts[counts > 0]) == {7}
    assert set(np.bincount(faces.attack_test.identity)[list(set(faces.attack_test.identity))]) == {3}
    # Both classes on both sides; glasses follow most people but change within some.
    for s in (faces.train, faces.test):
        assert 0.1 < s.primary.mean() < 0.6
    all_ids = np.concatenate([faces.train.identity, faces.test.identity])
    all_glasses = np.concatenate([faces.train.primary, faces.test.primary])
    per_person = np.array([all_glasses[all_ids == i].mean() for i in np.unique(all_ids)])
    varying = np.mean((per_person > 0) & (per_person < 1))
    assert 0.0 < varying < 0.35


def test_faces_deterministic_by_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "a"))
    a = generate_faces(8, 3, seed=5)
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "b"))
    b = generate_faces(8, 3, seed=5)
    c = generate_faces(8, 3, seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.glasses, b.glasses)
    assert not np.array_equal(a.images, c.images)
    assert a.images.dtype == np.uint8 and a.images.shape == (24, IMAGE_SIZE, IMAGE_SIZE)
    # Images of one person differ (nuisance), and are closer to each other than to other people's.
    x = a.images.reshape(8, 3, -1).astype(np.float32)
    assert all(not np.array_equal(x[i, 0], x[i, 1]) for i in range(8))
    within = np.mean([np.abs(x[i, 0] - x[i, 1]).mean() for i in range(8)])
    between = np.mean([np.abs(x[i, 0] - x[(i + 1) % 8, 0]).mean() for i in range(8)])
    assert within < between


def test_faces_identity_and_glasses_recoverable_from_pixels(faces):
    ident = raw_identity(faces)
    assert ident.top1 >= 3 * ident.chance and ident.top1 >= 0.3
    prim = raw_primary(faces)
    assert prim.top1 >= prim.chance + 0.1


def test_speech_protocol_structure(speech):
    assert (speech.name, speech.task) == ("synthetic-speech", "digit")
    assert speech.train.primary_names == [str(d) for d in range(10)]
    assert len(speech.train.identity_names) >= 24
    for s in (speech.train, speech.test, speech.attack_train, speech.attack_test):
        assert s.rate == RATE and isinstance(s.x, list)
        assert all(w.dtype == np.float32 and w.ndim == 1 for w in s.x)
        lengths = np.array([len(w) for w in s.x]) / RATE
        assert lengths.min() > 0.1 and lengths.max() < 2.0
        assert max(np.abs(w).max() for w in s.x) <= 1.0
        assert np.bincount(s.primary, minlength=10).min() > 0
    _disjoint_people(speech)
    assert 0.65 <= len(speech.attack_train) / len(speech.test) <= 0.8


def test_voices_distinct():
    voices = make_voices(40, seed=0)
    assert len({(v.accent, v.variant) for v in voices}) == 40
    assert len({v.variant for v in voices[:24]}) == 24


def test_speech_deterministic_and_takes_differ(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "a"))
    a = generate_speech(2, 2, seed=3)
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "b"))
    b = generate_speech(2, 2, seed=3)
    assert len(a.waves) == 2 * 2 * len(WORDS)
    assert all(np.array_equal(x, y) for x, y in zip(a.waves, b.waves))
    # Same speaker and digit, two takes: different waves (pitch/speed jitter, noise).
    first, second = a.waves[0], a.waves[len(WORDS)]
    assert (a.digit[0], a.speaker[0], a.take[0]) == (0, 0, 0)
    assert (a.digit[len(WORDS)], a.speaker[len(WORDS)], a.take[len(WORDS)]) == (0, 0, 1)
    assert len(first) != len(second) or not np.array_equal(first, second)


def test_cut_words_splits_at_long_pauses():
    rate = 8000
    tone = 0.5 * np.sin(np.arange(2000) / 3).astype(np.float32)
    gap = np.zeros(int(0.05 * rate), np.float32)   # a closure inside a word: not a cut
    pause = np.zeros(int(0.5 * rate), np.float32)  # between words: a cut
    wave = np.concatenate([pause, tone, gap, tone, pause, tone, pause])
    words = _cut_words(wave, rate)
    assert len(words) == 2
    assert len(words[0]) > len(words[1]) > 2000


def test_speech_identity_and_digit_recoverable_from_wave(speech):
    ident = raw_identity(speech)
    assert ident.top1 >= 3 * ident.chance and ident.top1 >= 0.3
    prim = raw_primary(speech)
    assert prim.top1 >= 3 * prim.chance
