"""PCA layers: projection then reconstruction round trip, error shrinking with k, noise scale."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.pca import Project, Reconstruct, fit_lda, fit_pca


def _data(n=200, d=12, seed=0):
    rng = np.random.default_rng(seed)
    # anisotropic: decreasing spread per latent direction, then a random rotation
    z = rng.normal(size=(n, d)) * np.linspace(5, 0.1, d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (z @ q.T + rng.normal(size=d)).astype(np.float32)


def test_full_rank_round_trip_is_exact():
    x = _data()
    fit = fit_pca(x, 12)
    proj, rec = Project.from_fit(fit), Reconstruct.from_fit(fit)
    t = torch.from_numpy(x)
    z = proj(t)
    assert z.shape == (200, 12)
    torch.testing.assert_close(rec(z), t, atol=1e-4, rtol=0)
    assert fit.explained == pytest.approx(1.0)


def test_error_decreases_with_k_and_matches_numpy():
    x = _data()
    t = torch.from_numpy(x)
    errors = []
    for k in (1, 2, 4, 8, 12):
        fit = fit_pca(x, k)
        err = float(((Reconstruct.from_fit(fit)(Project.from_fit(fit)(t)) - t) ** 2).sum(dim=1).mean())
        errors.append(err)
        # projected coordinates are uncorrelated with the recorded spread
        z = Project.from_fit(fit)(t).numpy()
        np.testing.assert_allclose(z.std(axis=0, ddof=1), fit.std, rtol=1e-3)
        np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-3)
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-6 * errors[0] + 1e-6


def test_noise_is_relative_to_each_dimension_spread():
    x = _data(n=400)
    fit = fit_pca(x, 4)
    clean, noisy = Project.from_fit(fit), Project.from_fit(fit, noise_std=0.5)
    t = torch.from_numpy(x)
    torch.manual_seed(0)
    diff = (noisy(t) - clean(t)).numpy()
    np.testing.assert_allclose(diff.std(axis=0), 0.5 * fit.std, rtol=0.15)


def test_training_noise_follows_the_batch_spread_and_calibrate_fixes_it():
    x = _data(n=400)
    layer = Project.from_fit(fit_pca(x, 4), noise_std=0.5)
    big = torch.from_numpy(10 * (x - x.mean(axis=0)) + x.mean(axis=0))   # the features grew tenfold
    clean = (big - layer.mean) @ layer.components
    torch.manual_seed(0)
    layer.train()
    diff = (layer(big) - clean).numpy()
    # in training the noise grows with them: scaling the features up cannot outrun it
    np.testing.assert_allclose(diff.std(axis=0), 0.5 * clean.std(dim=0).numpy(), rtol=0.15)
    layer.eval()
    assert (layer(big) - clean).std(dim=0).max() < 0.2 * 0.5 * clean.std(dim=0).min()   # stale fitted scale
    layer.calibrate(big)
    np.testing.assert_allclose((layer(big) - clean).std(dim=0).numpy(), 0.5 * clean.std(dim=0).numpy(), rtol=0.15)
    with pytest.raises(ValueError):
        layer.calibrate(big[:1])


def test_lda_keeps_the_class_direction_that_pca_loses_to_the_people():
    rng = np.random.default_rng(0)
    n = 600
    label, person = rng.integers(0, 3, n), rng.integers(0, 5, n)
    x = rng.normal(size=(n, 40))
    x[:, 0] += 2.0 * label                 # the primary task: a small spread along one axis
    x[:, 1:6] += 15.0 * np.eye(5)[person]  # who it is: most of the variance
    lda, pca = fit_lda(x, label, 2), fit_pca(x, 2)
    assert abs(lda.components[0, 0]) > 0.9 and np.abs(lda.components[1:6, 0]).max() < 0.1
    assert np.abs(pca.components[0]).max() < 0.1       # PCA keeps the people instead
    np.testing.assert_allclose(lda.components.T @ lda.components, np.eye(2), atol=1e-5)
    z = Project.from_fit(lda)(torch.from_numpy(x.astype(np.float32))).numpy()
    np.testing.assert_allclose(z.std(axis=0, ddof=1), lda.std, rtol=1e-3)
    # the first LDA coordinate separates the classes far better than the first PCA one
    def fisher(v):
        means = np.array([v[label == c].mean() for c in range(3)])
        return means.var() / np.mean([v[label == c].var() for c in range(3)])
    assert fisher(z[:, 0]) > 10 * fisher((x - pca.mean) @ pca.components[:, 0])
    with pytest.raises(ValueError):
        fit_lda(x, np.zeros(n), 1)          # one class
    with pytest.raises(ValueError):
        fit_lda(x, label[:-1], 1)
    with pytest.raises(ValueError):
        fit_lda(x, label, 0)


@pytest.mark.parametrize("k", [0, 13])
def test_invalid_k(k):
    with pytest.raises(ValueError, match="k must be"):
        fit_pca(_data(), k)


def test_invalid_layer_settings():
    with pytest.raises(ValueError):
        Project(4, 5)
    with pytest.raises(ValueError):
        Project(4, 2, noise_std=-1)
