"""The numpy speech front end (models.fast_audio, what the home runs) against the librosa one that bundles
were trained with until it replaced it, on real FSDD recordings: the features agree within FEATURE_TOL,
and a bundle trained on librosa features serves the same digits on numpy features (and the other way)."""
from __future__ import annotations

import librosa
import numpy as np
import pytest

from models.bundle import load_full
from models.data.fsdd import fsdd_protocol
from models.speech import SpeechConfig, SpeechFrontEnd, _fit_frames
from tests.training_data import isolated_training  # noqa: F401 (a fixture)

FEATURE_TOL = 2e-3
"""Largest difference of one log-mel value (they lie in [0, 1]; 80 dB of range, so 0.16 dB)."""
AGREEMENT = 0.99
"""Least fraction of FSDD test utterances given the same digit through either front end."""


def librosa_features(fe: SpeechFrontEnd, wave: np.ndarray, rate: int, semitones: float) -> np.ndarray:
    """The front end as written with librosa 0.11 alone: resample, pitch shift, log-mel, fixed length."""
    c = fe.config
    w = np.asarray(wave, dtype=np.float32)
    if rate != c.rate:
        w = librosa.resample(w, orig_sr=rate, target_sr=c.rate, res_type="soxr_hq")
    if semitones != 0 and len(w) >= c.n_fft:
        w = librosa.effects.pitch_shift(w, sr=c.rate, n_steps=semitones, res_type="soxr_hq", n_fft=512)
    if len(w) < c.n_fft:
        w = np.pad(w, (0, c.n_fft - len(w)))
    mel = librosa.feature.melspectrogram(y=w.astype(np.float32), sr=c.rate, n_fft=c.n_fft, hop_length=c.hop,
                                         n_mels=c.n_mels, fmax=c.rate / 2)
    db = librosa.power_to_db(mel, ref=np.max, top_db=c.top_db)
    return _fit_frames((db / c.top_db + 1.0).astype(np.float32), c.frames)[None]


@pytest.fixture(scope="module")
def fsdd(data_dir):
    return fsdd_protocol(data_dir / "fsdd", size="small")


def _shifts(fe: SpeechFrontEnd, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [fe.draw_shift(rng) for _ in range(n)]


def test_the_numpy_front_end_matches_librosa_on_fsdd(fsdd):
    fe = SpeechFrontEnd.from_config(SpeechConfig())
    test = fsdd.test
    picks = range(0, len(test), 3)  # 100 recordings: every speaker, digit and take of the test split
    shifts = _shifts(fe, len(test), seed=1)
    worst = []
    for i in picks:
        wave, s = test.x[i], shifts[i]
        got, want = fe.features(wave, test.rate, s), librosa_features(fe, wave, test.rate, s)
        assert got.shape == want.shape == fe.shape and got.dtype == np.float32
        worst.append(float(np.abs(got - want).max()))
    assert max(worst) <= FEATURE_TOL, max(worst)
    # the resampling step too: the same recordings offered at 16 kHz and 11.025 kHz
    for i, rate in ((0, 16000), (50, 11025)):
        up = librosa.resample(test.x[i], orig_sr=test.rate, target_sr=rate, res_type="soxr_hq")
        np.testing.assert_allclose(fe.features(up, rate, 3.0), librosa_features(fe, up, rate, 3.0),
                                   atol=FEATURE_TOL)


def _train(fsdd, tmp_path, monkeypatch, front_end) -> str:
    """A small digit bundle trained on FSDD with ``front_end`` computing the training inputs."""
    from models import train_cli as train

    monkeypatch.setattr("models.data.load_protocol", lambda *a, **k: fsdd, raising=False)
    if front_end is not None:
        monkeypatch.setattr(SpeechFrontEnd, "features",
                            lambda self, wave, rate, semitones: front_end(self, wave, rate, semitones))
    out = tmp_path / "bundle"
    assert train.main(["--modality", "speech", "--data", "fsdd", "--embedding", "simple", "--epochs", "6",
                       "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    monkeypatch.undo()
    return str(out)


@pytest.mark.slow
@pytest.mark.parametrize("trained_with", ["librosa", "numpy"])
def test_a_bundle_trained_with_one_front_end_serves_the_same_digits_with_the_other(fsdd, tmp_path, monkeypatch,
                                                                                  isolated_training, trained_with):
    bundle = _train(fsdd, tmp_path, monkeypatch, librosa_features if trained_with == "librosa" else None)
    model = load_full(bundle, runtime="onnx")
    fe = model._inputs.front_end
    test = fsdd.test
    shifts = _shifts(fe, len(test), seed=2)
    numpy_x = [fe.features(w, test.rate, s) for w, s in zip(test.x, shifts)]
    librosa_x = [librosa_features(fe, w, test.rate, s) for w, s in zip(test.x, shifts)]
    p_numpy, p_librosa = model.predict_batch(numpy_x), model.predict_batch(librosa_x)
    agree = float((p_numpy.argmax(1) == p_librosa.argmax(1)).mean())
    assert agree >= AGREEMENT, agree
    assert float((p_numpy.argmax(1) == test.primary).mean()) >= 0.5  # a model that learned (chance is 0.1)
