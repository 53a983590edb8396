"""Inversion attack: a decoder trained to rebuild the extractor's input from the released features.

In the style of Dosovitskiy & Brox ("Inverting visual representations with convolutional networks"):
fully connected layers lift the feature vector to a small spatial map, transposed convolutions upsample
it x16 to the input's size, and the decoder is trained with pixel-wise squared error. The target is the
extractor's own input: the 64x64 face crop, or for speech the log-mel the front end computed (both in
[0, 1]). The attacker trains the decoder on inputs it holds, with early stopping on a validation slice,
and is judged on held-out inputs.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.audit.attackers import Standardiser

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderSettings:
    """Training of the inversion decoder; the defaults bound it to a few minutes on one core.

    Training goes in rounds of ``steps_per_round`` minibatch steps (a few hundred faces make a handful of
    minibatches, far too few steps for one validation check), with a validation check after each round.
    """

    max_rounds: int = 20
    steps_per_round: int = 40
    patience: int = 5           # rounds without a lower validation loss before stopping
    max_train: int = 1500       # inputs used for training at most (a random subset): bounds the time
    batch_size: int = 64
    lr: float = 1e-3            # Adam
    val_fraction: float = 0.1
    hidden: int = 512           # width of the fully connected lift
    base_channels: int = 64     # channels of the 1/16-resolution map; halved at every upsampling

    def __post_init__(self) -> None:
        if min(self.max_rounds, self.steps_per_round, self.patience, self.batch_size) < 1:
            raise ValueError("max_rounds, steps_per_round, patience and batch_size must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_train < 2:
            raise ValueError(f"max_train must be >= 2, got {self.max_train}")
        if self.base_channels < 16:
            raise ValueError(f"base_channels must be >= 16 (four halvings), got {self.base_channels}")


class InversionDecoder(nn.Module):
    """(B, D) standardised features -> (B, 1, H, W) reconstruction in [0, 1]."""

    UPSAMPLINGS = 4   # x16: a 64x64 face starts from a 4x4 map

    def __init__(self, dims: int, out_hw: tuple[int, int], hidden: int = 512, base_channels: int = 64
                 ) -> None:
        super().__init__()
        if dims < 1 or min(out_hw) < 1:
            raise ValueError(f"bad decoder shape: dims {dims}, output {out_hw}")
        self.out_hw = tuple(out_hw)
        scale = 2 ** self.UPSAMPLINGS
        self.h0, self.w0 = math.ceil(out_hw[0] / scale), math.ceil(out_hw[1] / scale)
        self.c0 = base_channels
        self.lift = nn.Sequential(
            nn.Linear(dims, hidden), nn.ReLU(),
            nn.Linear(hidden, base_channels * self.h0 * self.w0), nn.ReLU())
        layers: list[nn.Module] = []
        c = base_channels
        for _ in range(self.UPSAMPLINGS):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1), nn.BatchNorm2d(c // 2),
                       nn.ReLU()]
            c //= 2
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.up = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> (B, 1, H, W)."""
        m = self.lift(z).view(-1, self.c0, self.h0, self.w0)     # (B, c0, h0, w0)
        y = self.up(m)                                            # (B, 1, 16*h0, 16*w0)
        return torch.sigmoid(y[:, :, :self.out_hw[0], :self.out_hw[1]])


@dataclass(frozen=True)
class InversionResult:
    """Reconstructions of the held-out inputs, shape (N, 1, H, W) float32 in [0, 1]."""

    reconstructions: np.ndarray
    steps: int          # minibatch steps of the kept (best) decoder
    val_mse: float


def _targets(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"inversion targets must be (N, 1, H, W), got {x.shape}")
    return x


def _batches(idx: torch.Tensor, batch_size: int, gen: torch.Generator):
    """Endless minibatches of ``idx``, reshuffled every pass; never a batch of one (BatchNorm)."""
    while True:
        perm = idx[torch.randperm(len(idx), generator=gen)]
        for s in range(0, len(perm), batch_size):
            if len(perm[s:s + batch_size]) >= 2:
                yield perm[s:s + batch_size]


@torch.inference_mode()
def _predict(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(z[s:s + 256]) for s in range(0, len(z), 256)])


def train_inversion(features: np.ndarray, inputs: np.ndarray, test_features: np.ndarray, *,
                    settings: DecoderSettings = DecoderSettings(), seed: int = 0) -> InversionResult:
    """Train a decoder features -> inputs and reconstruct the inputs behind ``test_features``.

    features (N, ...) released features of the attacker's inputs (N, 1, H, W) in [0, 1];
    test_features (M, ...) of held-out inputs. Returns (M, 1, H, W) reconstructions.
    """
    target = _targets(inputs)
    if len(target) != len(features) or len(target) < 2:
        raise ValueError(f"need matching features and inputs (>= 2), got {len(features)} / {len(target)}")
    norm = Standardiser(features)
    z = torch.from_numpy(norm(features))
    zt = torch.from_numpy(norm(test_features))
    y = torch.from_numpy(target)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(z), generator=gen)[:settings.max_train]
    n_val = max(1, int(round(settings.val_fraction * len(order))))
    val, fit = order[:n_val], order[n_val:]
    if len(fit) < 2:
        raise ValueError(f"too few inputs to train a decoder: {len(order)}")
    model = InversionDecoder(z.shape[1], target.shape[2:], settings.hidden, settings.base_channels)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    best, best_round, best_state = float("inf"), 0, None
    batches = _batches(fit, settings.batch_size, gen)
    for rnd in range(1, settings.max_rounds + 1):
        model.train()
        for _ in range(settings.steps_per_round):
            idx = next(batches)
            opt.zero_grad()
            nn.functional.mse_loss(model(z[idx]), y[idx]).backward()
            opt.step()
        val_mse = nn.functional.mse_loss(_predict(model, z[val]), y[val]).item()
        if val_mse < best:
            best, best_round = val_mse, rnd
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif rnd - best_round >= settings.patience:
            break
    model.load_state_dict(best_state)
    log.info("inversion decoder: best round %d of %d, validation MSE %.4f", best_round, rnd, best)
    return InversionResult(_predict(model, zt).numpy(), best_round * settings.steps_per_round, best)
