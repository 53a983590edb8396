"""Training loops: classification, Siamese fine-tuning with an extra loss (from :mod:`models.losses`),
analyzer fine-tuning, and the helpers that run a trained module (predict, accuracy, features).

Everything is deterministic on CPU for a fixed seed: batches and augmentation come from a
``numpy.random.Generator``, dropout and initialisation from ``torch.manual_seed``, and deterministic
algorithms are enforced while training.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from models.inputs import InputSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """One optimisation run."""

    epochs: int
    # Adam with decoupled weight decay and a cosine schedule: converges in tens of epochs on 200-3000 inputs.
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # 32 inputs per step: small enough for many steps per epoch on ORL's 200 training images.
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"invalid loop settings {self}")


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and enforce deterministic kernels for the duration of the block."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def fit(model: nn.Module, data: InputSet, loop: LoopConfig, rng: np.random.Generator, *,
        params: list[nn.Parameter] | None = None, frozen: nn.Module | None = None,
        extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        features_of: nn.Module | None = None, progress: Callable[[int], None] | None = None) -> list[float]:
    """Minimise cross-entropy (+ optional ``extra_loss(features, labels)``) over ``loop.epochs`` epochs.

    model: (B, C, H, W) -> logits (B, n_classes). frozen: a leading part kept in eval mode (its batch-norm
    statistics untouched) whose parameters are not trained. features_of: a prefix of ``model`` whose
    output, flattened, is handed to ``extra_loss``. Returns the mean loss of each epoch.
    """
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=loop.lr, weight_decay=loop.weight_decay)
    steps = max(1, loop.epochs * -(-len(data) // loop.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    ce = nn.CrossEntropyLoss()
    history = []
    for _ in range(loop.epochs):
        model.train()
        if frozen is not None:
            frozen.eval()
        x_all = data.epoch_inputs(rng)  # (N, C, H, W)
        order = torch.from_numpy(rng.permutation(len(data)))
        total, count = 0.0, 0
        for start in range(0, len(data), loop.batch_size):
            idx = order[start:start + loop.batch_size]
            if len(idx) < 2:
                continue  # batch norm needs two inputs
            x, y = x_all[idx], data.y[idx]
            if features_of is not None and extra_loss is not None:
                f = features_of(x)
                rest = model[len(features_of):]
                logits = rest(f)
                loss = ce(logits, y) + extra_loss(f.flatten(1), y)
            else:
                loss = ce(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
            if progress is not None:
                progress(len(idx))
        history.append(total / max(count, 1))
        log.debug("epoch %d/%d: mean loss %.4f", len(history), loop.epochs, history[-1])
    if loop.epochs > 0:
        recalibrate_batch_norm(model, data.epoch_inputs(rng), frozen=frozen)
    model.eval()
    return history


def recalibrate_batch_norm(model: nn.Module, x: torch.Tensor, *, frozen: nn.Module | None = None,
                           batch_size: int = 256) -> None:
    """Replace the batch-norm running statistics by exact averages over ``x`` (N, C, H, W).

    The running averages (momentum 0.1) still remember the first steps after a short run (a few dozen
    steps on a small set), and then the network in eval mode is much worse than in training. One pass
    over the training inputs with cumulative averaging fixes that. ``frozen`` layers keep theirs.
    """
    skip = set(frozen.modules()) if frozen is not None else set()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in skip]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    if frozen is not None:
        frozen.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


def predict(module: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, ...) inputs -> (N, n_classes) logits, in eval mode, in batches."""
    module.eval()
    with torch.inference_mode():
        return torch.cat([module(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) \
            if len(x) else torch.zeros((0, 0))


def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``module`` on (N, ...) inputs with (N,) integer labels."""
    if len(y) == 0:
        raise ValueError("no inputs to measure accuracy on")
    return float((predict(module, x).argmax(dim=1) == y).float().mean())


def features(module: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """(N, ...) inputs -> (N, F) flattened outputs of ``module`` (eval mode), float32."""
    module.eval()
    with torch.inference_mode():
        outs = [module(x[i:i + batch_size]).flatten(1) for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy()
