"""Identity attackers: classifiers the curious cloud trains on released features.

Every attacker maps test features to a score per identity, shape (N_test, C); a higher score means "more
likely this person". The trained ones (multinomial logistic regression and a small MLP, both on inputs
standardised with the attacker's own training statistics) are trained until their accuracy on a
validation slice carved from the attacker's training set stops improving, then refitted on the whole
training set for the number of epochs that worked best. The 1-nearest-neighbour attacker scores each
identity by minus the distance to that identity's nearest training sample.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """How an attacker (or the inversion decoder) is trained; the defaults suit a few thousand samples."""

    max_epochs: int = 300          # upper bound; early stopping normally ends far sooner
    patience: int = 20             # epochs without a better validation score before stopping
    min_loss_delta: float = 0.01   # nats: a smaller drop of validation loss is not progress
    batch_size: int = 128
    lr: float = 1e-3               # Adam, for the MLP and the inversion decoder
    linear_lr: float = 1e-2        # a convex model tolerates (and needs, to converge in time) a larger step
    weight_decay: float = 1e-4     # mild L2, so that tiny training sets do not blow the weights up
    val_fraction: float = 0.15     # of each identity's training samples (at least one when it has two)
    hidden: int = 256              # MLP width
    refit: bool = True             # retrain on train+validation for the best epoch count

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ValueError("max_epochs, patience and batch_size must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class AttackerScores:
    """One attacker's output on the test set."""

    name: str                  # "linear", "mlp", "1-nn"
    scores: np.ndarray         # float64 (N_test, C): higher = more likely that identity
    epochs: int | None         # epochs trained (None for 1-NN)
    val_accuracy: float | None = None   # best accuracy on the validation slice (trained attackers)


class Standardiser:
    """Per-dimension z-score with statistics from the attacker's training features only."""

    def __init__(self, x_train: np.ndarray) -> None:
        x = _flat(x_train)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        # A constant dimension carries nothing; dividing by 1 keeps it constant instead of exploding.
        self.std = np.where(std > 1e-8, std, 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((_flat(x) - self.mean) / self.std).astype(np.float32)


def _flat(x: np.ndarray) -> np.ndarray:
    """(N, ...) -> (N, D) float64."""
    x = np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float64)



class BestSoFar:
    """Early stopping on a validation score ``(accuracy, -loss)``: keeps the best model's weights, and says
    when to stop (``patience`` epochs without progress; a better score whose loss moved less than
    ``min_loss_delta`` and whose accuracy did not rise is kept but is not progress)."""

    def __init__(self, settings: TrainSettings) -> None:
        self.patience, self.min_loss_delta = settings.patience, settings.min_loss_delta
        self.best: tuple[float, float] = (-1.0, float("-inf"))
        self.epoch = 0
        self.state: dict | None = None
        self._since = 0

    def update(self, score: tuple[float, float], model: nn.Module, epoch: int = 0) -> bool:
        """Record this epoch's ``score``; True when training should stop."""
        if score > self.best:
            gain = score[0] > self.best[0] or score[1] > self.best[1] + self.min_loss_delta
            self.best, self.epoch = score, epoch
            self.state = {k: v.clone() for k, v in model.state_dict().items()}
            self._since = 0 if gain else self._since + 1
        else:
            self._since += 1
        return self._since >= self.patience


def validation_split(labels: np.ndarray, fraction: float, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices into (fit, validation); identities with one sample stay in fit."""
    fit, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, int(round(fraction * len(idx)))) if len(idx) >= 2 else 0
        val.extend(idx[:n_val])
        fit.extend(idx[n_val:])
    return np.sort(np.array(fit, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def _make_model(kind: str, dims: int, n_classes: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dims, n_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(), nn.Dropout(0.2),
                             nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
    if kind.startswith("mlp:"):          # "mlp:WIDTHxDEPTH", the post-hoc sweep's attackers
        width, depth = (int(v) for v in kind[4:].split("x"))
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(dims if i == 0 else width, width), nn.ReLU(), nn.Dropout(0.2)]
        return nn.Sequential(*layers, nn.Linear(width, n_classes))
    raise ValueError(f"unknown attacker kind {kind!r}")


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
           batch_size: int, gen: torch.Generator) -> None:
    model.train()
    order = torch.randperm(len(x), generator=gen)
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


@torch.inference_mode()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[s:s + 4096]) for s in range(0, len(x), 4096)])


def _fit(kind: str, x: torch.Tensor, y: torch.Tensor, n_classes: int, s: TrainSettings, seed: int,
         epochs: int | None = None, val: tuple[torch.Tensor, torch.Tensor] | None = None
         ) -> tuple[nn.Module, int, float | None]:
    """Train for ``epochs``, or with early stopping on ``val``; returns (model, best epoch count, best
    validation accuracy or None)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _make_model(kind, x.shape[1], n_classes, s.hidden)
    lr = s.linear_lr if kind == "linear" else s.lr
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=s.weight_decay)
    if val is None:
        for _ in range(epochs or s.max_epochs):
            _epoch(model, opt, x, y, s.batch_size, gen)
        return model, epochs or s.max_epochs, None
    best, best_epoch, best_state = (-1.0, float("-inf")), 0, None
    progress = (-1.0, float("inf"), 0)        # (accuracy, loss, epoch) of the last real progress
    for epoch in range(1, s.max_epochs + 1):
        _epoch(model, opt, x, y, s.batch_size, gen)
        logits = _logits(model, val[0])
        acc = (logits.argmax(1) == val[1]).double().mean().item()
        loss = nn.functional.cross_entropy(logits, val[1]).item()
        # Accuracy on a small validation slice moves in coarse steps: the loss breaks ties.
        if (acc, -loss) > best:
            best, best_epoch = (acc, -loss), epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        # Patience restarts on better accuracy or a clearly lower loss, not on the endless tiny
        # loss decrease of a separable problem.
        if acc > progress[0] or loss < progress[1] - s.min_loss_delta:
            progress = (max(acc, progress[0]), min(loss, progress[1]), epoch)
        elif epoch - progress[2] >= s.patience:
            break
    model.load_state_dict(best_state)
    return model, best_epoch, best[0]


def train_attacker(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   n_classes: int, *, settings: TrainSettings = TrainSettings(), seed: int = 0
                   ) -> AttackerScores:
    """Train a ``"linear"`` (multinomial logistic regression) or ``"mlp"`` attacker; score the test set.

    x_train (N, ...) features, y_train int (N,) in [0, n_classes); x_test (M, ...).
    Returns logits (M, n_classes) as scores.
    """
    norm = Standardiser(x_train)
    xt, xs = torch.from_numpy(norm(x_train)), torch.from_numpy(norm(x_test))
    y = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    fit_idx, val_idx = validation_split(np.asarray(y_train), settings.val_fraction,
                                        np.random.default_rng(seed))
    val_acc = None
    if len(val_idx) == 0:
        model, epochs, _ = _fit(kind, xt, y, n_classes, settings, seed)
    else:
        fi, vi = torch.from_numpy(fit_idx), torch.from_numpy(val_idx)
        model, epochs, val_acc = _fit(kind, xt[fi], y[fi], n_classes, settings, seed, val=(xt[vi], y[vi]))
        if settings.refit:
            model, _, _ = _fit(kind, xt, y, n_classes, settings, seed, epochs=epochs)
    log.debug("attacker %s: %d epochs", kind, epochs)
    return AttackerScores(kind, _logits(model, xs).double().numpy(), epochs, val_acc)


def nearest_neighbour_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                             n_classes: int) -> np.ndarray:
    """Minus the Euclidean distance (standardised features) to each identity's nearest training sample.

    Returns (M, n_classes); its argmax is the 1-NN prediction. An identity without training samples
    scores -inf.
    """
    norm = Standardiser(x_train)
    a = torch.from_numpy(norm(x_train)).double()
    y = np.asarray(y_train)
    scores = np.full((len(x_test), n_classes), -np.inf)
    b_all = torch.from_numpy(norm(x_test)).double()
    for start in range(0, len(b_all), 1024):
        d = torch.cdist(b_all[start:start + 1024], a).numpy()     # (m, N_train)
        for c in np.unique(y):
            scores[start:start + len(d), c] = -d[:, y == c].min(axis=1)
    return scores


def nearest_neighbour(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                      n_classes: int) -> AttackerScores:
    """The 1-nearest-neighbour attacker as an :class:`AttackerScores`."""
    return AttackerScores("1-nn", nearest_neighbour_scores(x_train, y_train, x_test, n_classes), None)
