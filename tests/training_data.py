"""Tiny labelled datasets for training tests, and a fixture that isolates a training run (its own
cache folder, one torch thread)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data.samples import Protocol, Samples


@pytest.fixture(autouse=True)
def one_thread():
    """torch on one thread for the test (autouse in the modules that import it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def isolated_training(tmp_path, monkeypatch):
    """Training caches under tmp_path and one torch thread, so runs neither share state nor fight over cores."""
    monkeypatch.setenv("PRIVEDGE_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def faces(n_people: int, per_person: int, seed: int) -> Samples:
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


def beeps(n: int, seed: int, rate: int = 8000) -> Samples:
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


def protocol(train: Samples, test: Samples) -> Protocol:
    return Protocol(name="synthetic-test", task="glasses" if train.modality == "image" else "digit",
                    train=train, test=test, attack_train=test, attack_test=test)
