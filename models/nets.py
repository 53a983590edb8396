"""VGG-style CNNs for face crops and log-mel spectrograms, built from named blocks so they can be cut.

A network is an ``nn.Sequential`` of named children ``block1 .. blockN`` then ``head``. Cutting after a
block gives the extractor (blocks up to and including the cut, run at the gateway) and the analyzer (the
remaining blocks and the head, run in the cloud). The early blocks are deliberately narrow (one conv each)
and the heavy ones (two wide convs, the fully connected head) come late, so that with the default cut the
gateway does the cheap part and the analyzer carries most of the multiply-adds.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetConfig:
    """Shape of one VGG-style network. Everything needed to rebuild it goes into a bundle's manifest."""

    # (C, H, W) of one input: a 64x64 grey face crop, or (1, n_mels, frames) of log-mel.
    in_shape: tuple[int, int, int] = (1, 64, 64)
    n_classes: int = 2
    # Output channels of each conv, per block; every block ends with a 2x2 max-pool. One narrow conv in the
    # first blocks keeps the extractor cheap (it runs on a home gateway); two wide convs in the last block
    # put the heavy layers in the analyzer.
    blocks: tuple[tuple[int, ...], ...] = ((16,), (32,), (64,), (128, 128))
    # Width of the hidden fully connected layer of the head.
    hidden: int = 128
    # Dropout before each linear layer of the head: ORL has 200 training images, the nets overfit without it.
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if len(self.in_shape) != 3 or min(self.in_shape) < 1:
            raise ValueError(f"in_shape must be (C, H, W) with positive sizes, got {self.in_shape}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {self.n_classes}")
        if len(self.blocks) < 3:
            raise ValueError(f"need at least three blocks (three cut points), got {len(self.blocks)}")
        if any(len(b) == 0 or min(b) < 1 for b in self.blocks):
            raise ValueError(f"every block needs at least one conv with positive width, got {self.blocks}")
        h, w = self.in_shape[1:]
        if h >> len(self.blocks) < 1 or w >> len(self.blocks) < 1:
            raise ValueError(f"input {self.in_shape} too small for {len(self.blocks)} 2x2 pools")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        return cls(
            in_shape=tuple(d["in_shape"]),
            n_classes=int(d["n_classes"]),
            blocks=tuple(tuple(int(c) for c in b) for b in d["blocks"]),
            hidden=int(d["hidden"]),
            dropout=float(d["dropout"]),
        )

    @property
    def cut_names(self) -> list[str]:
        """Names of the points where the network may be cut (after each block)."""
        return [f"block{i + 1}" for i in range(len(self.blocks))]

    def shape_after(self, cut: str) -> tuple[int, int, int]:
        """(C, H, W) of one input's activations after block ``cut``."""
        i = self.cut_index(cut)
        c = self.blocks[i][-1]
        h, w = self.in_shape[1] >> (i + 1), self.in_shape[2] >> (i + 1)
        return (c, h, w)

    def cut_index(self, cut: str) -> int:
        if cut not in self.cut_names:
            raise ValueError(f"unknown cut {cut!r}; choose one of {self.cut_names}")
        return self.cut_names.index(cut)


def image_config(n_classes: int = 2) -> NetConfig:
    """The face network: (B, 1, 64, 64) grey crops in [0, 1]."""
    return NetConfig(in_shape=(1, 64, 64), n_classes=n_classes)


def speech_config(n_classes: int = 10, n_mels: int = 40, frames: int = 64) -> NetConfig:
    """The speech network: (B, 1, n_mels, frames) log-mel from ``models.speech.SpeechFrontEnd``."""
    return NetConfig(in_shape=(1, n_mels, frames), n_classes=n_classes)


# The cut used when none is given: after block 3 the extractor holds the narrow convs (about 10 M
# multiply-adds for a face crop) and the analyzer the wide block 4 and the head.
DEFAULT_CUT = "block3"


def _conv_block(c_in: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_out in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        c_in = c_out
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def build_net(cfg: NetConfig) -> nn.Sequential:
    """The uncut network: (B, *cfg.in_shape) -> logits (B, n_classes). Children: block1..blockN, head."""
    parts: "OrderedDict[str, nn.Module]" = OrderedDict()
    c = cfg.in_shape[0]
    for name, widths in zip(cfg.cut_names, cfg.blocks):
        parts[name] = _conv_block(c, widths)  # (B, c, H, W) -> (B, widths[-1], H/2, W/2)
        c = widths[-1]
    c_last, h, w = cfg.shape_after(cfg.cut_names[-1])
    parts["head"] = nn.Sequential(
        nn.Flatten(),  # (B, C*H*W)
        nn.Dropout(cfg.dropout),
        nn.Linear(c_last * h * w, cfg.hidden),
        nn.ReLU(),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.hidden, cfg.n_classes),  # (B, n_classes)
    )
    return nn.Sequential(parts)


def split(net: nn.Sequential, cut: str) -> tuple[nn.Sequential, nn.Sequential]:
    """Cut ``net`` after the block named ``cut``: (extractor layers, analyzer layers), sharing parameters.

    ``analyzer(extractor(x)) == net(x)`` exactly: the two halves are the same modules, in order.
    """
    names = [n for n, _ in net.named_children()]
    if cut not in names or cut == names[-1]:
        raise ValueError(f"cannot cut after {cut!r}; cut points are {names[:-1]}")
    i = names.index(cut) + 1
    children = list(net.named_children())
    return nn.Sequential(OrderedDict(children[:i])), nn.Sequential(OrderedDict(children[i:]))


@dataclass
class Cost:
    """Per-input cost of a module: parameters and multiply-adds of its convolutions and matrix products."""

    params: int
    macs: int
    per_layer: dict[str, int] = field(default_factory=dict)


def count_cost(module: nn.Module, in_shape: tuple[int, ...]) -> Cost:
    """Parameters and multiply-adds for one input of shape ``in_shape`` (no batch dimension).

    Counts Conv2d, Linear and any module that defines ``macs_per_input(in_numel) -> int`` (the PCA
    layers); BatchNorm, ReLU and pooling are a few operations per element and are left out, as usual.
    """
    per_layer: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(mod, nn.Conv2d):
                k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                per_layer[name] = output[0].numel() * k
            elif isinstance(mod, nn.Linear):
                per_layer[name] = mod.in_features * mod.out_features
            else:
                per_layer[name] = int(mod.macs_per_input(inputs[0][0].numel()))
        return fn

    for name, mod in module.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) or hasattr(mod, "macs_per_input"):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            module(torch.zeros((1, *in_shape)))
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    params = sum(p.numel() for p in module.parameters())
    return Cost(params=params, macs=sum(per_layer.values()), per_layer=per_layer)
