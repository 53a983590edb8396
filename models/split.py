"""How a network becomes an extractor (gateway) and an analyzer (cloud), and how both are rebuilt from a
bundle's ``arch`` description.

extractor: (B, *in_shape) -> blocks up to the cut -> flatten -> [PCA project (+noise)] -> (B, F)
analyzer:  (B, F) -> [PCA reconstruct] -> unflatten to the cut shape -> remaining blocks -> head -> logits
where F is C*H*W of the cut layer, or k with PCA. Features always travel flat.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from torch import nn

from models.nets import NetConfig, build_net, split
from models.pca import PCAFit, Project, Reconstruct


def assemble(net: nn.Sequential, cfg: NetConfig, cut: str, pca: PCAFit | None = None,
             noise_std: float = 0.0) -> tuple[nn.Sequential, nn.Sequential]:
    """Cut ``net`` (sharing its parameters) and add flatten/unflatten and the optional PCA layers."""
    if noise_std and pca is None:
        raise ValueError("noise_std needs PCA: noise is scaled by the projected features' spread")
    front, back = split(net, cut)
    shape = cfg.shape_after(cut)
    ext: "OrderedDict[str, nn.Module]" = OrderedDict(front.named_children())
    ext["flatten"] = nn.Flatten()  # (B, C, H, W) -> (B, C*H*W)
    ana: "OrderedDict[str, nn.Module]" = OrderedDict()
    if pca is not None:
        ext["project"] = Project.from_fit(pca, noise_std)  # (B, C*H*W) -> (B, k)
        ana["reconstruct"] = Reconstruct.from_fit(pca)  # (B, k) -> (B, C*H*W)
    ana["unflatten"] = nn.Unflatten(1, shape)  # (B, C*H*W) -> (B, C, H, W)
    ana.update(back.named_children())
    return nn.Sequential(ext), nn.Sequential(ana)


def arch_of(cfg: NetConfig, cut: str, pca: PCAFit | None, noise_std: float) -> dict:
    """The manifest's ``arch``: everything needed to rebuild both modules before loading their weights."""
    cfg.cut_index(cut)
    c, h, w = cfg.shape_after(cut)
    return {
        "family": "vgg",
        "net": cfg.to_dict(),
        "cut": cut,
        "cut_shape": [c, h, w],
        "pca": None if pca is None else {"in_dim": pca.in_dim, "k": pca.k},
        "noise_std": float(noise_std),
    }


def build_from_arch(arch: dict) -> tuple[nn.Sequential, nn.Sequential]:
    """Fresh (extractor, analyzer) with the layout of ``arch``; weights and PCA buffers still to be loaded."""
    try:
        if arch["family"] != "vgg":
            raise ValueError(f"unknown network family {arch['family']!r}")
        cfg = NetConfig.from_dict(arch["net"])
        pca_spec = arch.get("pca")
        noise = float(arch.get("noise_std", 0.0))
        cut = arch["cut"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed arch description: {e!r}") from e
    pca = None
    if pca_spec is not None:
        d, k = int(pca_spec["in_dim"]), int(pca_spec["k"])
        pca = PCAFit(mean=np.zeros(d, np.float32), components=np.zeros((d, k), np.float32),
                     std=np.ones(k, np.float32), explained=0.0)
    return assemble(build_net(cfg), cfg, cut, pca, noise)
