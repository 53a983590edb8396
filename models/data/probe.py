"""How much a protocol's raw inputs give away: simple classifiers on raw pixels / raw-wave statistics.

This is the "raw input" row of every privacy comparison and the check that a dataset is worth auditing
on: if identity cannot be recovered from the raw input, no figure about features means anything.
Images: the pixels, 2x2 average-pooled (32x32 = 1024 numbers; a quarter of the fitting time, same
information at the scale of faces). Speech: mean and standard deviation over time of 40 log-mel bands and 20 MFCCs
of the raw wave at its own rate (120 numbers). Classifier: standardisation + multinomial logistic
regression, fitted on one split and scored on another.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data.samples import Protocol, Samples

N_MELS = 40
N_MFCC = 20


def wave_statistics(wave: np.ndarray, rate: int) -> np.ndarray:
    """float32 (n_samples,) at ``rate`` Hz -> float32 (2 * (N_MELS + N_MFCC),): per-band mean and std over time
    of the log-mel spectrogram (25 ms windows, 10 ms hop) and of its MFCCs."""
    import librosa  # heavy import, only needed for speech

    n_fft = int(2 ** np.ceil(np.log2(0.025 * rate)))
    wave = np.pad(wave.astype(np.float32), (0, max(0, n_fft - len(wave))))
    mel = librosa.feature.melspectrogram(y=wave, sr=rate, n_fft=n_fft, hop_length=int(0.01 * rate),
                                         n_mels=N_MELS, fmax=rate / 2)
    log_mel = np.log(mel + 1e-6)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=N_MFCC)
    feats = np.concatenate([log_mel, mfcc], axis=0)  # (N_MELS + N_MFCC, T)
    return np.concatenate([feats.mean(axis=1), feats.std(axis=1)]).astype(np.float32)


def raw_features(samples: Samples) -> np.ndarray:
    """Raw-input feature matrix (N, D) float32: pooled pixels for images, :func:`wave_statistics` for speech."""
    if samples.modality == "image":
        x = np.asarray(samples.x, dtype=np.float32)  # (N, 1, H, W)
        n, _, h, w = x.shape
        pooled = x[:, 0, :h - h % 2, :w - w % 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        return pooled.reshape(n, -1)
    return np.stack([wave_statistics(w, samples.rate) for w in samples.x])


@dataclass(frozen=True)
class ProbeResult:
    """Top-1 accuracy of a classifier and the chance level (most frequent training label) on the same split."""

    top1: float
    chance: float
    n_classes: int

    @property
    def over_chance(self) -> float:
        return self.top1 / self.chance if self.chance > 0 else float("inf")


def fit_score(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              *, seed: int = 0) -> ProbeResult:
    """Standardise, fit a logistic regression on (x_train, y_train), return its top-1 on (x_test, y_test)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if len(np.unique(y_train)) < 2:
        raise ValueError("the training split has a single class: nothing to learn")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000, random_state=seed))
    # One BLAS thread: on a small shared machine several threads make these tiny fits 20x slower.
    with threadpool_limits(limits=1):
        clf.fit(x_train, y_train)
        top1 = float(np.mean(clf.predict(x_test) == y_test))
    majority = np.bincount(y_train).argmax()
    return ProbeResult(top1=top1, chance=float(np.mean(y_test == majority)), n_classes=len(np.unique(y_train)))


def raw_identity(protocol: Protocol, *, seed: int = 0) -> ProbeResult:
    """Identity attacker on raw inputs: trained on attack_train, scored on attack_test."""
    a, b = protocol.attack_train, protocol.attack_test
    return fit_score(raw_features(a), a.identity, raw_features(b), b.identity, seed=seed)


def raw_primary(protocol: Protocol, *, seed: int = 0) -> ProbeResult:
    """Primary-task classifier on raw inputs: trained on train, scored on test."""
    a, b = protocol.train, protocol.test
    return fit_score(raw_features(a), a.primary, raw_features(b), b.primary, seed=seed)
