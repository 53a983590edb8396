"""The stronger attacks of ``privedge audit --attacks all``, against cases with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from models.audit import cli
from models.audit.aggregation import ReleasePool, aggregation_attacks, draw_sets, rounds_needed, set_label_floor
from models.audit.attackers import TrainSettings
from models.audit.capacity import fano_top1_ceiling, gaussian_bits, noise_sigma, release_bound
from models.audit.intervals import bootstrap, mean_interval, pair_weights
from models.audit.linkage import linkage_attack
from models.audit.measures import equal_error_rate, tpr_at_fpr
from models.audit.metric import metric_attack
from models.audit.posthoc import capacity_sweep
from models.audit.report import METRICS, REPORT
from models.bundle import load_extractor, make_untrained_bundle
from tests.training_data import one_thread  # noqa: F401 (autouse: torch on one thread)

SHORT = TrainSettings(max_epochs=40, patience=6, refit=False)



def _pool(people: int, per_person: int, rounds: int, dims: int, spread: float, noise: float, seed: int,
          centres: np.ndarray | None = None) -> tuple[ReleasePool, np.ndarray]:
    """Releases of inputs of ``people`` people: a centre per person (spread apart), a fixed offset per
    input, fresh noise per round. Returns the pool and the centres."""
    rng = np.random.default_rng(seed)
    centres = spread * rng.normal(size=(people, dims)) if centres is None else centres
    identity = np.repeat(np.arange(people), per_person)
    clean = centres[identity] + 0.3 * rng.normal(size=(len(identity), dims))
    releases = clean[None] + noise * rng.normal(size=(rounds, len(identity), dims))
    primary = identity % 2
    return ReleasePool(releases.astype(np.float32), identity, primary), centres


# --- intervals ----------------------------------------------------------------------------------------

def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 2000):
        hits = (rng.random(n) < 0.3).astype(float)
        iv = mean_interval(hits, resamples=400, seed=1)
        assert iv.low <= iv.value <= iv.high and iv.value == pytest.approx(hits.mean())
        widths.append(iv.high - iv.low)
    assert widths[1] < widths[0] / 3     # ~ 1/sqrt(n): 6.3x narrower
    # the same seed gives the same interval; a constant statistic has no spread
    assert mean_interval(hits, resamples=50, seed=3) == mean_interval(hits, resamples=50, seed=3)
    flat = bootstrap(lambda m: 0.7, 10, resamples=20)
    assert (flat.low, flat.value, flat.high) == (0.7, 0.7, 0.7)


def test_people_resampling_is_wider_than_item_resampling_when_people_differ():
    people = np.repeat(np.arange(10), 50)
    hits = (people < 5).astype(float)     # half the people always found, half never
    by_item = mean_interval(hits, resamples=400, seed=0)
    by_person = mean_interval(hits, people, resamples=400, seed=0)
    assert by_person.units == "people" and by_item.units == "items"
    assert (by_person.high - by_person.low) > 3 * (by_item.high - by_item.low)
    assert pair_weights(np.array([2, 0, 3]), np.array([0, 0, 1]), np.array([0, 2, 2])).tolist() == [2.0, 6.0, 0.0]


# --- TPR at FPR ---------------------------------------------------------------------------------------

def test_tpr_at_fpr_is_monotone_and_exact_on_a_known_ranking():
    rng = np.random.default_rng(1)
    same = rng.random(5000) < 0.2
    score = same + rng.normal(size=5000)
    rates = [tpr_at_fpr(same, score, f) for f in (0.0001, 0.001, 0.01, 0.1, 0.5, 1.0)]
    assert rates == sorted(rates) and rates[-1] == 1.0
    # 4 same pairs scored 4,3,2,-1; 100 different pairs scored in (0, 1) except one at 3.5
    diff = np.concatenate([[3.5], np.linspace(0.01, 0.99, 99)])
    same2 = np.r_[np.ones(4, bool), np.zeros(100, bool)]
    s2 = np.r_[[4.0, 3.0, 2.0, -1.0], diff]
    assert tpr_at_fpr(same2, s2, 0.001) == 0.25       # only the pair above 3.5 passes without a false accept
    assert tpr_at_fpr(same2, s2, 0.01) == 0.75        # one false accept (1%) lets 3 and 2 in
    w = np.r_[np.ones(4), 0.0, np.ones(99)]           # weight 0 removes the impostor at 3.5
    assert tpr_at_fpr(same2, s2, 0.001, w) == 0.75
    assert equal_error_rate(same2, s2, w) < equal_error_rate(same2, s2) + 1e-12


# --- capacity bound -----------------------------------------------------------------------------------

def test_capacity_bound_follows_the_formula_and_grows_with_l():
    a, s = np.array([2.0, 1.0]), np.array([1.0, 0.5])
    for L in (1, 10, 100):
        want = sum(0.5 * math.log2(1 + L * amp ** 2 / sd ** 2) for amp, sd in zip(a, s))
        assert gaussian_bits(a, s, L) == pytest.approx(want)
    assert gaussian_bits(a, s, 1) < gaussian_bits(a, s, 10) < gaussian_bits(a, s, 100)
    # no noise: the int8 alphabet's log2(255) bits per dimension and release
    assert gaussian_bits(a, np.zeros(2), 3) == pytest.approx(2 * 3 * math.log2(255))
    spec = {"dtype": "int8", "shape": [2], "scale": [2.0 / 127, 1.0 / 127]}
    b = release_bound(spec, s, (1, 10, 100), n_classes=20)
    assert b.bits_per_release == pytest.approx(gaussian_bits(a, s, 1), rel=1e-6)
    assert b.bits_distinct[10] == pytest.approx(10 * b.bits_per_release)
    assert b.bits_one_input[10] < b.bits_distinct[10]
    assert b.top1_ceiling[1] <= b.top1_ceiling[10] <= b.top1_ceiling[100] <= 1.0


def test_fano_ceiling_is_chance_without_information_and_one_with_enough():
    assert fano_top1_ceiling(0.0, 20) == pytest.approx(0.05, abs=1e-6)
    assert fano_top1_ceiling(math.log2(20), 20) == 1.0
    c = [fano_top1_ceiling(b, 20) for b in (0.1, 0.5, 1.0, 2.0)]
    assert c == sorted(c) and 0.05 < c[0] < c[-1] < 1.0


def test_noise_scale_is_read_from_the_extractor(tmp_path):
    make_untrained_bundle(tmp_path / "b", "image", seed=0, dims=4, noise_std=0.5)
    ext = load_extractor(tmp_path / "b")
    sigma = noise_sigma(ext.module, 4)
    assert sigma.shape == (4,) and (sigma > 0).all()
    make_untrained_bundle(tmp_path / "c", "image", seed=0, dims=4)
    assert (noise_sigma(load_extractor(tmp_path / "c").module, 4) == 0).all()


# --- aggregation --------------------------------------------------------------------------------------

def test_sets_reuse_inputs_only_from_other_rounds():
    identity = np.repeat(np.arange(3), [2, 5, 12])
    rounds = rounds_needed(identity, 10)
    assert rounds == 5
    sets = draw_sets(identity, 10, 4, rounds, np.random.default_rng(0))
    assert sets.inputs.shape == (12, 10)
    assert (identity[sets.inputs] == sets.person[:, None]).all()
    pairs = sets.inputs * 100 + sets.rounds
    assert all(len(set(row)) == 10 for row in pairs)          # no release twice in one set


def test_label_floor_of_sets_is_chance_for_balanced_labels_and_grows_when_labels_follow_people():
    people = np.repeat(np.arange(4), 20)
    digits = np.tile(np.arange(10), 8)
    labels = digits[np.random.default_rng(0).integers(0, 80, size=(200, 5))]
    hits = set_label_floor(digits, people, labels, np.repeat(np.arange(4), 50), 4)
    assert hits.mean() == pytest.approx(0.25, abs=0.08)
    glasses = (people == 0).astype(int)
    sets = draw_sets(people, 5, 50, 1, np.random.default_rng(1))
    hits = set_label_floor(glasses, people, glasses[sets.inputs], sets.person, 4)
    assert hits.mean() == pytest.approx(0.25 + 0.75 / 3, abs=1e-9)


def test_clean_features_of_separated_people_are_recognised_nearly_perfectly():
    train, centres = _pool(8, 10, 1, 6, spread=3.0, noise=0.0, seed=2)
    test, _ = _pool(8, 5, 1, 6, spread=3.0, noise=0.0, seed=3, centres=centres)
    hits = aggregation_attacks(train, test, 1, 8, settings=SHORT, train_per_person=10, test_per_person=5,
                               set_classifier=False)
    assert hits.hits["mean+linear"].mean() >= 0.95 and hits.hits["mean+1-nn"].mean() >= 0.95
    sweep = capacity_sweep(train.releases[0], train.identity, test.releases[0], test.identity, 8,
                           settings=TrainSettings(max_epochs=300, patience=30, refit=False), widths=(64,),
                           depths=(1,), resamples=50)
    assert sweep.top1["64x1"].value >= 0.95


def test_aggregating_ten_releases_beats_one_on_noisy_releases():
    train, centres = _pool(6, 8, 20, 4, spread=1.0, noise=3.0, seed=4)
    test, _ = _pool(6, 4, 30, 4, spread=1.0, noise=3.0, seed=5, centres=centres)
    top1 = {}
    for L in (1, 10):
        hits = aggregation_attacks(train, test, L, 6, settings=SHORT, train_per_person=60, test_per_person=40,
                                   set_classifier=L == 10, seed=0)
        top1[L] = max(v.mean() for v in hits.hits.values())
        if L == 10:
            assert set(hits.hits) == {"mean+linear", "mean+mlp", "mean+1-nn", "deep sets"}
    # one release: SNR 1/9 per dimension; ten: the noise std drops by sqrt(10)
    assert top1[1] < 0.45 and top1[10] > top1[1] + 0.2


# --- linkage and metric learning ---------------------------------------------------------------------

def test_linkage_is_at_chance_without_identity_and_perfect_with_it():
    coded_train, centres = _pool(10, 6, 1, 8, spread=3.0, noise=0.0, seed=6)
    coded_test, _ = _pool(10, 6, 1, 8, spread=3.0, noise=0.0, seed=7, centres=centres)
    coded = linkage_attack(coded_train, coded_test, 1, settings=SHORT, per_person=6, max_different=3000,
                           resamples=50)
    assert coded.eer.value < 0.02 and coded.tpr[0.01].value > 0.9
    free_train, _ = _pool(10, 6, 1, 8, spread=0.0, noise=1.0, seed=8)
    free_test, _ = _pool(10, 6, 1, 8, spread=0.0, noise=1.0, seed=9)
    free = linkage_attack(free_train, free_test, 1, settings=SHORT, per_person=6, max_different=3000,
                          resamples=50)
    assert free.eer.value == pytest.approx(0.5, abs=0.07)
    assert free.eer.low <= free.eer.value <= free.eer.high
    assert free.tpr[0.001].value <= free.tpr[0.01].value < 0.1


def test_metric_attacker_recognises_unseen_people_only_when_features_carry_identity():
    rng = np.random.default_rng(10)
    people = 12
    centres = 3.0 * rng.normal(size=(people, 8))
    ids_tr, ids_te = np.repeat(np.arange(people), 8), np.repeat(np.arange(people), 4)
    coded = metric_attack(centres[ids_tr] + 0.3 * rng.normal(size=(len(ids_tr), 8)), ids_tr,
                          centres[ids_te] + 0.3 * rng.normal(size=(len(ids_te), 8)), ids_te,
                          settings=SHORT, max_different=2000, resamples=50)
    assert coded.unseen_people == 6 and coded.chance == pytest.approx(1 / 6)
    assert coded.top1.value > 0.9 and coded.eer.value < 0.1
    blind = metric_attack(rng.normal(size=(len(ids_tr), 8)), ids_tr, rng.normal(size=(len(ids_te), 8)), ids_te,
                          settings=SHORT, max_different=2000, resamples=50)
    assert blind.top1.value < 0.5 and blind.eer.value > 0.35


# --- end to end ---------------------------------------------------------------------------------------

def test_audit_with_all_attacks_writes_the_tables_intervals_and_bound(tmp_path, capsys):
    bundle = tmp_path / "noisy"
    make_untrained_bundle(bundle, "image", seed=0, dims=4, noise_std=0.5)
    out = tmp_path / "audit"
    assert cli.main(["--bundle", str(bundle), "--data", "synthetic", "--size", "small", "--quick", "--no-cost",
                     "--no-inversion", "--attacks", "all", "--out", str(out)]) == 0
    bar = capsys.readouterr().err            # the progress bar names each of the stronger attacks' steps ...
    for part in ("noisy: stronger attacks: aggregation L=10", "linkage L=1", "metric attacker", "capacity sweep"):
        assert part in bar, part
    assert "INFO" not in bar                 # ... without their log lines
    m = json.loads((out / METRICS).read_text())["noisy"]
    assert m["ssim"] is None and m["psnr_db"] is None          # no inversion decoder was trained
    attacks, bound = m["attacks"], m["bound"]
    assert [a["length"] for a in attacks["aggregation"]] == [1, 10]
    for a in attacks["aggregation"]:
        for iv in a["top1"].values():
            assert iv["low"] <= iv["value"] <= iv["high"] and iv["units"] == "people"
    assert {k["length"] for k in attacks["linkage"]} == {1, 10}
    assert attacks["metric"]["unseen_people"] >= 2 and attacks["sweep"]["best_on_test"] in attacks["sweep"]["top1"]
    assert attacks["rounds"]["attack_test"] > 1          # a noisy bundle is released again
    assert bound["dtype"] == "float32" and bound["bits_one_input"]["10"] > bound["bits_one_input"]["1"]
    report = (out / REPORT).read_text()
    for title in ("Bound per release", "Identity over L releases", "Linkage", "Metric learning", "capacity",
                  "Targets of issue 17"):
        assert title in report, title


def test_measured_bound_uses_the_clean_variance_and_stays_below_the_amplitude_bound():
    rng = np.random.default_rng(12)
    sigma = np.array([0.5])
    releases = rng.normal(size=(20_000, 1)) * np.sqrt(1.0 + 0.25)      # clean variance 1, noise 0.25
    spec = {"dtype": "int8", "shape": [1], "scale": [4.0 / 127]}
    b = release_bound(spec, sigma, (1, 10), n_classes=10, releases=releases)
    assert b.measured_bits[1] == pytest.approx(0.5 * math.log2(1 + 1 / 0.25), abs=0.02)
    assert b.measured_bits[1] < b.bits_per_release and b.measured_bits[10] == pytest.approx(10 * b.measured_bits[1])
    assert release_bound(spec, np.zeros(1), (1,), 10, releases=releases).measured_bits is None
