"""The audit's measures, as pure functions on arrays.

Identity: :func:`identity_measures` trains the attackers of :mod:`models.audit.attackers` on the
attacker's training features and reports, on its test features, top-1 / top-5 accuracy next to chance,
the 1-nearest-neighbour error and the normalised log-rank of the true identity. Verification:
:func:`verification_eer`. Reconstruction: :func:`ssim` and :func:`psnr`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_curve

from models.audit.attackers import (AttackerScores, Standardiser, TrainSettings, nearest_neighbour,
                                    train_attacker)

log = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0   # PSNR of identical inputs is infinite; JSON and tables get this instead


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows of ``scores`` (N, C) whose true label (N,) is among the k highest scores."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def true_ranks(scores: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank (1 = best) of each row's true label among the C scores; ties are broken uniformly at random.

    Random tie-breaking keeps a constant scorer at chance: its rank is uniform on 1..C.
    """
    labels = np.asarray(labels)
    true = scores[np.arange(len(scores)), labels][:, None]
    above = (scores > true).sum(axis=1)
    tied = (scores == true).sum(axis=1) - 1
    return 1 + above + rng.integers(0, tied + 1)


def expected_log_rank(n_classes: int) -> float:
    """E[log r] for r uniform on 1..C, i.e. log(C!)/C (natural log)."""
    return math.lgamma(n_classes + 1) / n_classes


def normalised_log_rank(scores: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> float:
    """Mean over test samples of log(rank of the true identity), divided by its chance value.

    ``mean_i log(r_i) / (log(C!) / C)`` where r_i in 1..C is the rank of sample i's true identity among
    the attacker's C scores. The divisor is the expectation of log r under a uniformly random ranking, so
    an attacker that knows nothing scores 1 in expectation, one that always ranks the truth first scores
    0, and the largest possible value is log(C) / (log(C!)/C) (always ranked last, about 1.4 for C = 20).
    """
    n_classes = scores.shape[1]
    if n_classes < 2:
        raise ValueError("log-rank needs at least two identities")
    ranks = true_ranks(scores, labels, np.random.default_rng(seed))
    return float(np.log(ranks).mean() / expected_log_rank(n_classes))


@dataclass(frozen=True)
class AttackerResult:
    """One attacker's figures on the attacker's test set."""

    name: str
    top1: float
    top5: float | None          # None when there are 5 identities or fewer
    log_rank: float
    epochs: int | None


@dataclass(frozen=True)
class IdentityMeasures:
    """What the attackers learn about identity. The headline figures come from the best attacker."""

    n_classes: int
    chance_top1: float          # 1/C
    chance_top5: float | None   # 5/C where C > 5
    best: str                   # name of the attacker with the highest top-1 (ties: lower log-rank)
    top1: float
    top5: float | None
    log_rank: float             # of the best attacker
    nn_error: float             # 1 - top-1 of the 1-nearest-neighbour attacker
    attackers: dict[str, AttackerResult] = field(default_factory=dict)


def encode_identities(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Map identity labels to 0..C-1 by the attacker's training set; every test identity must occur there."""
    known = np.unique(train)
    unknown = np.setdiff1d(np.unique(test), known)
    if len(unknown):
        raise ValueError(f"identities {unknown.tolist()} are in the attacker's test set only")
    return np.searchsorted(known, train), np.searchsorted(known, test), len(known)


def identity_measures(x_train: np.ndarray, id_train: np.ndarray, x_test: np.ndarray,
                      id_test: np.ndarray, *, attackers: tuple[str, ...] = ("linear", "mlp", "1-nn"),
                      settings: TrainSettings = TrainSettings(), seed: int = 0) -> IdentityMeasures:
    """Train every attacker on (x_train, id_train) and measure it on (x_test, id_test).

    x_*: features (N, ...) of any shape per sample; id_*: identity labels (N,) of any integer coding.
    The best attacker is picked on the test set, which is the attacker's most favourable reading:
    privacy figures from it are conservative.
    """
    y_train, y_test, n_classes = encode_identities(np.asarray(id_train), np.asarray(id_test))
    if n_classes < 2:
        raise ValueError("the attacker's training set must hold at least two identities")
    outputs: list[AttackerScores] = []
    for i, name in enumerate(attackers):
        if name == "1-nn":
            outputs.append(nearest_neighbour(x_train, y_train, x_test, n_classes))
        else:
            outputs.append(train_attacker(name, x_train, y_train, x_test, n_classes,
                                          settings=settings, seed=seed + i))
    results = {}
    for out in outputs:
        results[out.name] = AttackerResult(
            name=out.name, top1=topk_accuracy(out.scores, y_test, 1),
            top5=topk_accuracy(out.scores, y_test, 5) if n_classes > 5 else None,
            log_rank=normalised_log_rank(out.scores, y_test, seed=seed), epochs=out.epochs)
    best = min(results.values(), key=lambda r: (-r.top1, r.log_rank))
    nn_res = results.get("1-nn")
    return IdentityMeasures(
        n_classes=n_classes, chance_top1=1.0 / n_classes,
        chance_top5=5.0 / n_classes if n_classes > 5 else None,
        best=best.name, top1=best.top1, top5=best.top5, log_rank=best.log_rank,
        nn_error=1.0 - nn_res.top1 if nn_res else float("nan"), attackers=results)


def label_floor(id_train: np.ndarray, label_train: np.ndarray, id_test: np.ndarray,
                label_test: np.ndarray) -> float:
    """Identity top-1 of an attacker who knows only each sample's true primary label.

    It guesses, for label l, the identity seen most often with l in the training set (ties share the
    credit). Features that keep the primary task cannot leak less than this: where the primary label
    goes with the person (glasses are mostly worn by the same people), it is above chance.
    """
    id_train, label_train = np.asarray(id_train), np.asarray(label_train)
    id_test, label_test = np.asarray(id_test), np.asarray(label_test)
    if len(id_train) != len(label_train) or len(id_test) != len(label_test) or len(id_test) == 0:
        raise ValueError("identities and labels must pair up, and the test set must not be empty")
    credit = 0.0
    for who, label in zip(id_test, label_test):
        seen = id_train[label_train == label]
        if len(seen) == 0:      # a label the attacker never saw: a guess among everyone
            ids = np.unique(id_train)
            credit += float(who in ids) / len(ids)
            continue
        ids, counts = np.unique(seen, return_counts=True)
        best = ids[counts == counts.max()]
        credit += float(who in best) / len(best)
    return credit / len(id_test)


@dataclass(frozen=True)
class LabelFloor:
    """What an attacker who knows only each sample's true primary label gets: the most private reading
    that features keeping the primary task perfectly can have. Where the label goes with the person
    (glasses are mostly worn by the same people), it is above chance; where every person has every
    label (digits), it is chance."""

    top1: float         # label_floor
    log_rank: float     # identities ranked by how often they had the sample's label in training
    eer: float          # verifier: "same person" exactly when the two labels agree


def label_floors(id_train: np.ndarray, label_train: np.ndarray, id_test: np.ndarray,
                 label_test: np.ndarray, *, seed: int = 0) -> LabelFloor:
    """Top-1, normalised log-rank and verification EER of the label-only attacker (see ``LabelFloor``).
    Ties are broken at random for the log-rank; the EER of a constant verifier (one label) is 0.5."""
    top1 = label_floor(id_train, label_train, id_test, label_test)
    y_train, y_test, n = encode_identities(np.asarray(id_train), np.asarray(id_test))
    label_train, label_test = np.asarray(label_train), np.asarray(label_test)
    labels = np.unique(np.concatenate([label_train, label_test]))
    counts = np.zeros((len(labels), n))
    np.add.at(counts, (np.searchsorted(labels, label_train), y_train), 1.0)
    log_rank = normalised_log_rank(counts[np.searchsorted(labels, label_test)], y_test, seed=seed)
    i, j = np.triu_indices(len(y_test), k=1)
    same = y_test[i] == y_test[j]
    agree = (label_test[i] == label_test[j]).astype(np.float64)
    eer = 0.5 if agree.min() == agree.max() or same.all() or not same.any() else equal_error_rate(same, agree)
    return LabelFloor(top1=top1, log_rank=log_rank, eer=eer)


def equal_error_rate(same: np.ndarray, similarity: np.ndarray, weights: np.ndarray | None = None) -> float:
    """EER of a verifier that accepts a pair when ``similarity`` is high; same: bool (P,) ground truth;
    ``weights`` (P,): a weight per pair (a bootstrap resample's, see :mod:`models.audit.intervals`).

    The point where the false-acceptance and false-rejection rates cross, linearly interpolated
    between the two ROC points around it.
    """
    fpr, fnr = _error_rates(same, similarity, weights)
    diff = fnr - fpr                       # decreasing from +1 to -1 along the curve
    i = int(np.flatnonzero(diff <= 0)[0])
    if i == 0 or diff[i] == 0:
        return float((fpr[i] + fnr[i]) / 2)
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr(same: np.ndarray, similarity: np.ndarray, fpr_max: float,
               weights: np.ndarray | None = None) -> float:
    """True-acceptance rate of the verifier at the threshold whose false-acceptance rate is at most
    ``fpr_max`` (the best such threshold; no interpolation, so the figure never flatters the verifier
    beyond a threshold it could actually set). Non-decreasing in ``fpr_max``."""
    fpr, fnr = _error_rates(same, similarity, weights)
    ok = fpr <= fpr_max + 1e-12
    return float((1.0 - fnr[ok]).max())


def _error_rates(same: np.ndarray, similarity: np.ndarray, weights: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(false-acceptance, false-rejection) rates along the ROC, from accepting nothing to everything."""
    same = np.asarray(same, dtype=bool)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        keep = weights > 0
        same, similarity, weights = same[keep], np.asarray(similarity)[keep], weights[keep]
    if same.all() or not same.any():
        raise ValueError("EER needs both same-identity and different-identity pairs")
    fpr, tpr, _ = roc_curve(same, similarity, sample_weight=weights, drop_intermediate=False)
    return fpr, 1.0 - tpr


def verification_eer(x_ref: np.ndarray, x: np.ndarray, identities: np.ndarray, *,
                     max_pairs: int = 200_000, seed: int = 0) -> float:
    """Speaker/face verification EER of feature pairs: the lower of two verifiers, cosine similarity and
    (negative) Euclidean distance, the attacker's most favourable reading. With one or two numbers per
    message the cosine sees little more than signs, and the distance is what a verifier would use.

    x (N, ...) features with identities (N,); all pairs i < j are scored (a random ``max_pairs`` of them
    when there are more). Features are standardised with statistics of ``x_ref`` (the attacker's own
    training features) first, so that a shared offset does not make every pair look alike.
    """
    z = Standardiser(x_ref)(x).astype(np.float64)
    unit = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    i, j = np.triu_indices(len(z), k=1)
    if len(i) > max_pairs:
        keep = np.random.default_rng(seed).choice(len(i), size=max_pairs, replace=False)
        i, j = i[keep], j[keep]
    same = np.asarray(identities)[i] == np.asarray(identities)[j]
    cosine = equal_error_rate(same, np.einsum("pd,pd->p", unit[i], unit[j]))
    distance = equal_error_rate(same, -np.linalg.norm(z[i] - z[j], axis=1))
    return min(cosine, distance)


def _as_images(x: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) or (N, H, W) -> (N, H, W) float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected (N, 1, H, W) or (N, H, W) images, got shape {x.shape}")
    return x


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03), shape (N,).

    reference, test: (N, 1, H, W) or (N, H, W) with H, W >= 11; data_range: max - min of the values.
    """
    a, b = _as_images(reference), _as_images(test)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    return np.array([structural_similarity(p, q, data_range=data_range, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False)
                     for p, q in zip(a, b)])


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float) -> np.ndarray:
    """Per-image peak signal-to-noise ratio in dB, shape (N,); identical images give PSNR_CAP_DB."""
    a, b = _as_images(reference), _as_images(test)
    mse = ((a - b) ** 2).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(data_range ** 2 / mse)
    return np.minimum(db, PSNR_CAP_DB)
