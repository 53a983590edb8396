"""The privacy audit: its measures against cases with known answers, and an end-to-end run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from models.audit import cli
from models.audit.attackers import TrainSettings, validation_split
from models.audit.inversion import DecoderSettings, train_inversion
from models.audit.measures import (PSNR_CAP_DB, equal_error_rate, expected_log_rank, identity_measures,
                                   label_floor, label_floors, normalised_log_rank, psnr, ssim, topk_accuracy, verification_eer)
from models.audit.report import GRID_PNG, METRICS, REPORT, TRADEOFF_PNG
from models.bundle import make_untrained_bundle
from tests.training_data import one_thread  # noqa: F401 (autouse: torch on one thread)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST_ATTACKER = TrainSettings(max_epochs=60, patience=8)



def _labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), per_class)


# --- ranking measures --------------------------------------------------------------------------------

def test_topk_counts_the_true_label_among_the_k_best():
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 3) == 1.0


def test_log_rank_is_zero_for_perfect_scores_and_one_for_a_random_ranking():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, size=20_000)
    perfect = np.eye(20)[labels]
    assert normalised_log_rank(perfect, labels) == 0.0
    # A constant scorer ties everything: random tie-breaking puts it exactly at chance in expectation.
    assert normalised_log_rank(np.zeros((20_000, 20)), labels) == pytest.approx(1.0, abs=0.02)
    assert normalised_log_rank(rng.random((20_000, 20)), labels) == pytest.approx(1.0, abs=0.02)
    worst = -perfect
    assert normalised_log_rank(worst, labels) == pytest.approx(math.log(20) / expected_log_rank(20))


def test_validation_split_is_stratified_and_keeps_singletons_for_fitting():
    labels = np.array([0] * 10 + [1] * 7 + [2])
    fit, val = validation_split(labels, 0.2, np.random.default_rng(0))
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]


# --- identity attackers -------------------------------------------------------------------------------

def test_one_hot_identity_features_are_recognised_perfectly():
    y_train, y_test = _labels(10, 20), _labels(10, 10)
    m = identity_measures(np.eye(10)[y_train], y_train, np.eye(10)[y_test], y_test,
                          settings=FAST_ATTACKER)
    assert m.n_classes == 10 and m.chance_top1 == pytest.approx(0.1)
    assert m.top1 == 1.0 and m.top5 == 1.0
    assert m.log_rank == pytest.approx(0.0, abs=1e-9)
    assert m.nn_error == 0.0
    assert set(m.attackers) == {"linear", "mlp", "1-nn"}
    assert all(a.top1 == 1.0 for a in m.attackers.values())


def test_pure_noise_features_leave_the_attacker_at_chance():
    rng = np.random.default_rng(1)
    n_classes = 10
    y_train, y_test = _labels(n_classes, 60), _labels(n_classes, 200)
    m = identity_measures(rng.normal(size=(len(y_train), 16)), y_train,
                          rng.normal(size=(len(y_test), 16)), y_test, settings=FAST_ATTACKER, seed=3)
    # 2000 test samples: the standard error of a top-1 at chance 0.1 is 0.0067, and the best-of-three
    # pick adds at most about two of those. 0.05 is more than six standard errors.
    assert m.top1 == pytest.approx(0.1, abs=0.05)
    assert m.top5 == pytest.approx(0.5, abs=0.08)
    assert m.log_rank == pytest.approx(1.0, abs=0.08)
    assert m.nn_error == pytest.approx(0.9, abs=0.05)


def test_identity_labels_of_any_coding_and_unknown_test_identities():
    y_train, y_test = np.array([7, 7, 3, 3, 11, 11]), np.array([3, 11, 7])
    x = {7: [1.0, 0.0], 3: [0.0, 1.0], 11: [-1.0, -1.0]}
    m = identity_measures(np.array([x[i] for i in y_train]), y_train,
                          np.array([x[i] for i in y_test]), y_test, attackers=("1-nn",))
    assert m.top1 == 1.0 and m.top5 is None and m.chance_top5 is None
    with pytest.raises(ValueError, match="attacker's test set only"):
        identity_measures(np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.zeros((1, 2)), np.array([5]))


# --- verification -------------------------------------------------------------------------------------

def test_label_floor_is_chance_for_balanced_labels_and_above_it_when_labels_follow_people():
    people = np.repeat(np.arange(4), 10)
    digits = np.tile(np.arange(10), 4)          # every person says every digit: the label says nothing
    assert label_floor(people, digits, people, digits) == pytest.approx(0.25)
    glasses = (people == 0).astype(int)         # only person 0 wears glasses: the label names them
    # glasses -> person 0 (right every time); no glasses -> a tie among the other three (1/3 credit each)
    assert label_floor(people, glasses, people, glasses) == pytest.approx(0.25 * 1 + 0.75 / 3)
    with pytest.raises(ValueError):
        label_floor(people, glasses[:-1], people, glasses)


def test_label_floors_of_log_rank_and_eer():
    people = np.repeat(np.arange(4), 10)
    digits = np.tile(np.arange(10), 4)
    balanced = label_floors(people, digits, people, digits)
    assert balanced.top1 == pytest.approx(0.25) and 0.85 < balanced.log_rank < 1.15
    glasses = (people == 0).astype(int)
    f = label_floors(people, glasses, people, glasses)
    assert f.top1 == pytest.approx(0.5)
    # person 0 is always ranked first; the others tie three ways: E[log rank] = 0.75 * log(6) / 3
    assert f.log_rank == pytest.approx(0.75 * math.log(6) / 3 / (math.log(24) / 4), abs=0.12)
    # same person -> same label always; of the 600 other pairs the 300 among persons 1-3 agree too:
    # the ROC runs from (FAR 0, FRR 1) to (FAR 0.5, FRR 0), crossing at 1/3
    assert f.eer == pytest.approx(1 / 3, abs=1e-9)


def test_eer_is_zero_for_separable_speakers_and_half_for_noise():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 6, size=300)
    separable = np.eye(6)[ids] + 0.01 * rng.normal(size=(300, 6))
    assert verification_eer(separable, separable, ids) == pytest.approx(0.0, abs=1e-9)
    noise = rng.normal(size=(300, 16))
    # 44,850 pairs, about 7,000 of them same-speaker: the EER's standard error is below 0.01.
    assert verification_eer(noise, noise, ids) == pytest.approx(0.5, abs=0.04)
    # One number per person (plus a little noise): the cosine of 1-d vectors is only a sign, the
    # distance still verifies.
    one = (ids - 2.5)[:, None] + 0.01 * rng.normal(size=(300, 1))
    assert verification_eer(one, one, ids) < 0.01


def test_equal_error_rate_interpolates_where_the_error_rates_cross():
    same = np.array([True, True, False, False])
    assert equal_error_rate(same, np.array([0.9, 0.8, 0.1, 0.2])) == 0.0
    assert equal_error_rate(same, np.array([0.1, 0.2, 0.9, 0.8])) == 1.0
    with pytest.raises(ValueError):
        equal_error_rate(np.array([True, True]), np.array([0.1, 0.2]))


# --- reconstruction -----------------------------------------------------------------------------------

def test_identical_inputs_give_ssim_one_and_capped_psnr():
    x = np.random.default_rng(3).random((4, 1, 64, 64))
    assert ssim(x, x, 1.0) == pytest.approx(np.ones(4))
    assert psnr(x, x, 1.0).tolist() == [PSNR_CAP_DB] * 4
    noisy = np.clip(x + 0.1 * np.random.default_rng(4).normal(size=x.shape), 0, 1)
    assert (ssim(x, noisy, 1.0) < 0.97).all()
    other = np.random.default_rng(5).random(x.shape)
    assert ssim(x, other, 1.0) == pytest.approx(np.zeros(4), abs=0.05)   # independent images
    assert psnr(x, noisy, 1.0) == pytest.approx(np.full(4, 20.0), abs=1.0)   # MSE ~ 0.01 -> ~20 dB


def test_inversion_decoder_rebuilds_inputs_its_features_determine():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:16, 0:16]

    def blobs(n):      # one bright disc per image, placed by two numbers: the "features"
        p = rng.random((n, 2)) * 10 + 3
        img = ((yy - p[:, :1, None]) ** 2 + (xx - p[:, 1:, None]) ** 2 < 9).astype(np.float32)
        return p, img[:, None]

    p_train, x_train = blobs(300)
    p_test, x_test = blobs(20)
    settings = DecoderSettings(max_rounds=6, steps_per_round=25, patience=3, base_channels=32, hidden=128)
    informed = train_inversion(p_train, x_train, p_test, settings=settings)
    blind = train_inversion(rng.normal(size=(300, 2)), x_train, rng.normal(size=(20, 2)),
                            settings=settings)
    assert informed.reconstructions.shape == (20, 1, 16, 16)
    assert 0.0 <= informed.reconstructions.min() and informed.reconstructions.max() <= 1.0
    err = lambda r: float(((r.reconstructions - x_test) ** 2).mean())   # noqa: E731
    assert err(informed) < 0.7 * err(blind)


# --- end to end ---------------------------------------------------------------------------------------

def test_audit_of_a_noisy_bundle_gives_the_same_figures_in_every_process(tmp_path):
    """The noise is drawn split by split in a fixed order: with the splits in a set, their order (and so
    every figure) changed with the string-hash seed of the process."""
    bundle = tmp_path / "noisy"
    make_untrained_bundle(bundle, "image", seed=0, dims=4, noise_std=0.5)
    figures = []
    for hash_seed in ("1", "2", "3"):
        out = tmp_path / f"audit-{hash_seed}"
        subprocess.run([sys.executable, "-m", "privedge.cli", "audit", "--bundle", str(bundle), "--data",
                        "synthetic", "--size", "small", "--quick", "--no-cost", "--out", str(out)],
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": hash_seed})
        m = json.loads((out / METRICS).read_text())["noisy"]
        figures.append({k: m[k] for k in ("primary_accuracy", "identity_top1", "log_rank", "verification_eer",
                                          "attackers")})
    assert figures[0] == figures[1] == figures[2]


def test_audit_cli_writes_report_metrics_and_figures(tmp_path, capsys):
    bundle = tmp_path / "untrained-image"
    make_untrained_bundle(bundle, "image", seed=0, dims=8)
    out = tmp_path / "audit"
    rc = cli.main(["--bundle", str(bundle), "--raw", "--data", "synthetic", "--size", "small",
                   "--quick", "--out", str(out), "--seed", "0"])
    assert rc == 0
    metrics = json.loads((out / METRICS).read_text())
    assert set(metrics) == {"raw input", "untrained-image"}
    required = {"primary_accuracy", "identity_top1", "identity_chance", "nn_error", "log_rank", "ssim"}
    for name, entry in metrics.items():
        assert required <= set(entry), name
        assert 0.0 <= entry["identity_top1"] <= 1.0 and 0.0 <= entry["nn_error"] <= 1.0
        assert 0.0 < entry["identity_chance"] < 0.5
        assert entry["log_rank"] >= 0.0 and -1.0 <= entry["ssim"] <= 1.0
    assert metrics["raw input"]["primary_accuracy"] is None
    assert 0.0 <= metrics["untrained-image"]["primary_accuracy"] <= 1.0
    floor = metrics["raw input"]["identity_label_floor"]
    assert metrics["untrained-image"]["identity_label_floor"] == floor
    assert metrics["raw input"]["identity_chance"] <= floor <= 1.0
    assert 0.0 < metrics["raw input"]["log_rank_label_floor"] < 1.5
    assert 0.0 <= metrics["raw input"]["eer_label_floor"] <= 1.0
    assert metrics["untrained-image"]["dims"] == 8 and metrics["untrained-image"]["feature_bytes"] == 32
    cost = metrics["untrained-image"]["cost"]
    assert cost["extractor"]["macs"] < cost["full"]["macs"]
    assert cost["extractor"]["params"] < cost["full"]["params"]
    # The raw faces identify the synthetic people far above chance, even for a briefly trained attacker.
    assert metrics["raw input"]["identity_top1"] > 3 * metrics["raw input"]["identity_chance"]
    report = (out / REPORT).read_text()
    assert "untrained-image" in report and "raw input" in report and "synthetic-faces" in report
    for png in (TRADEOFF_PNG, GRID_PNG):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, png
    assert "identity top-1" in capsys.readouterr().out


def test_audit_cli_refuses_a_bundle_of_another_task(tmp_path, capsys):
    bundle = tmp_path / "speech"
    make_untrained_bundle(bundle, "speech")
    rc = cli.main(["--bundle", str(bundle), "--modality", "image", "--data", "synthetic",
                   "--size", "small", "--quick", "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "one modality" in capsys.readouterr().err
    assert cli.main(["--data", "synthetic", "--out", str(tmp_path / "o")]) == 2
