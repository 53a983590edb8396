"""The white-box inversion attacker: it rebuilds what the weights let the features pin down, scored by how
much a reconstruction looks like its own input rather than other people's."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from models.audit import cli
from models.audit.report import METRICS, REPORT
from models.audit.whitebox import (WhiteBoxSettings, invert_whitebox, noiseless, reconstruction_match,
                                   total_variation)
from models.bundle import make_untrained_bundle
from models.pca import Project


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _discs(rng: np.random.Generator, n: int, size: int = 16) -> np.ndarray:
    """(n, 1, size, size) images of one bright disc each, placed at random."""
    yy, xx = np.mgrid[0:size, 0:size]
    p = rng.random((n, 2)) * (size - 6) + 3
    img = ((yy - p[:, :1, None]) ** 2 + (xx - p[:, 1:, None]) ** 2 < 9).astype(np.float32)
    return 0.1 + 0.8 * img[:, None]


def test_whitebox_inversion_finds_the_input_behind_the_features_it_is_given():
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    ext = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten())  # (B, 256)
    x = _discs(rng, 12)
    with torch.no_grad():
        z = ext(torch.from_numpy(x)).numpy()
    start = x.mean(axis=0)
    settings = WhiteBoxSettings(steps=150, lr=0.1, tv_weight=0.01)
    informed = invert_whitebox(ext, z, start, z.std(axis=0), settings=settings)
    wrong = invert_whitebox(ext, z[::-1].copy(), start, z.std(axis=0), settings=settings)
    assert informed.reconstructions.shape == (12, 1, 16, 16)
    assert 0.0 <= informed.reconstructions.min() and informed.reconstructions.max() <= 1.0
    err = lambda r: float(((r - x) ** 2).mean())   # noqa: E731
    assert err(informed.reconstructions) < 0.5 * err(np.repeat(start[None], 12, axis=0))
    assert err(informed.reconstructions) < 0.5 * err(wrong.reconstructions)
    assert informed.feature_error.mean() < 0.1


def test_noiseless_copy_drops_the_feature_noise_and_leaves_the_extractor_alone():
    project = Project(4, 2, noise_std=1.0)
    ext = nn.Sequential(nn.Linear(3, 4), project)
    quiet = noiseless(ext)
    x = torch.randn(5, 3)
    assert torch.equal(quiet(x), quiet(x))
    assert project.noise_std == 1.0 and not torch.equal(ext.eval()(x), ext(x))
    assert not any(p.requires_grad for p in quiet.parameters())


def test_total_variation_is_zero_on_flat_images_only():
    flat, edge = torch.full((1, 1, 8, 8), 0.3), torch.zeros(1, 1, 8, 8)
    edge[..., 4:] = 1.0
    assert total_variation(flat).item() == 0.0 and total_variation(edge).item() == pytest.approx(1 / 7)


def test_reconstruction_match_tells_own_input_from_other_peoples():
    rng = np.random.default_rng(4)
    gallery = rng.random((20, 1, 16, 16)).astype(np.float32)
    ids = np.repeat(np.arange(10), 2)
    perfect = reconstruction_match(gallery[:6], gallery[:6], ids[:6], gallery, ids, others=8)
    assert perfect["ssim_own"] == pytest.approx(1.0) and perfect["own_beats_other"] == 1.0
    assert perfect["ssim_others"] < 0.1 and perfect["n"] == 6
    noise = rng.random((6, 1, 16, 16)).astype(np.float32)
    blind = reconstruction_match(noise, gallery[:6], ids[:6], gallery, ids, others=8)
    assert 0.2 < blind["own_beats_other"] < 0.8
    with pytest.raises(ValueError):
        reconstruction_match(gallery[:1], gallery[:1], ids[:1], gallery[:1], ids[:1])


def test_audit_with_all_attacks_reports_the_decoder_beside_the_whitebox_attacker(tmp_path):
    bundle = tmp_path / "plain"
    make_untrained_bundle(bundle, "image", seed=0, dims=4)
    out = tmp_path / "audit"
    assert cli.main(["--bundle", str(bundle), "--data", "synthetic", "--size", "small", "--quick", "--no-cost",
                     "--attacks", "all", "--out", str(out)]) == 0
    match = json.loads((out / METRICS).read_text())["plain"]["inversion_match"]
    assert set(match) == {"decoder", "white-box"}
    for m in match.values():
        assert m["n"] == 16 and 0.0 <= m["own_beats_other"] <= 1.0 and -1 <= m["ssim_others"] <= 1
    assert "white-box attacker" in (out / REPORT).read_text()
