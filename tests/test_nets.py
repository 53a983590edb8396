"""Networks: the split is exact at every cut, batches equal items, costs are counted right."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.nets import DEFAULT_CUT, NetConfig, build_net, count_cost, image_config, speech_config, split
from models.split import arch_of, assemble, build_from_arch

CONFIGS = {"image": image_config(2), "speech": speech_config(10)}


def _trained_looking(cfg: NetConfig, seed: int = 0) -> nn.Sequential:
    """A random net whose batch-norm layers have non-trivial statistics, in eval mode."""
    torch.manual_seed(seed)
    net = build_net(cfg)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(8, *cfg.in_shape))
    return net.eval()


@pytest.mark.parametrize("modality", ["image", "speech"])
def test_at_least_three_cut_points_and_split_is_exact(modality):
    cfg = CONFIGS[modality]
    assert len(cfg.cut_names) >= 3 and DEFAULT_CUT in cfg.cut_names
    net = _trained_looking(cfg)
    x = torch.rand(6, *cfg.in_shape)
    with torch.inference_mode():
        full = net(x)
        assert full.shape == (6, cfg.n_classes)
        for cut in cfg.cut_names:
            front, back = split(net, cut)
            mid = front(x)
            assert mid.shape == (6, *cfg.shape_after(cut))
            torch.testing.assert_close(back(mid), full, atol=1e-5, rtol=0)
            ext, ana = assemble(net, cfg, cut)
            feats = ext(x)
            c, h, w = cfg.shape_after(cut)
            assert feats.shape == (6, c * h * w)
            torch.testing.assert_close(ana(feats), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("modality", ["image", "speech"])
def test_batch_equals_item_by_item(modality):
    cfg = CONFIGS[modality]
    net = _trained_looking(cfg, seed=1)
    ext, ana = assemble(net, cfg, DEFAULT_CUT)
    x = torch.rand(5, *cfg.in_shape)
    with torch.inference_mode():
        batch = ana(ext(x))
        items = torch.cat([ana(ext(x[i:i + 1])) for i in range(5)])
    torch.testing.assert_close(items, batch, atol=1e-5, rtol=0)


def test_cannot_cut_after_the_head_or_at_unknown_names():
    net = build_net(CONFIGS["image"])
    with pytest.raises(ValueError, match="cut points"):
        split(net, "head")
    with pytest.raises(ValueError, match="unknown cut"):
        CONFIGS["image"].shape_after("conv9")


@pytest.mark.parametrize("bad", [dict(in_shape=(1, 64)), dict(n_classes=1), dict(blocks=((8,), (8,))),
                                 dict(in_shape=(1, 8, 8), blocks=((4,), (4,), (4,), (4,))), dict(dropout=1.0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        NetConfig(**bad)


def test_config_round_trips_through_arch():
    cfg = CONFIGS["speech"]
    assert NetConfig.from_dict(cfg.to_dict()) == cfg
    ext, ana = build_from_arch(arch_of(cfg, "block2", None, 0.0))
    assert ext(torch.zeros(1, *cfg.in_shape)).shape == (1, 32 * 10 * 16)


def test_count_cost_matches_hand_count():
    cfg = NetConfig(in_shape=(1, 16, 16), n_classes=3, blocks=((4,), (8,), (8,)), hidden=5, dropout=0.0)
    net = build_net(cfg)
    cost = count_cost(net, cfg.in_shape)
    conv = 16 * 16 * 4 * (1 * 9) + 8 * 8 * 8 * (4 * 9) + 4 * 4 * 8 * (8 * 9)
    head = (8 * 2 * 2) * 5 + 5 * 3
    assert cost.macs == conv + head
    assert cost.params == sum(p.numel() for p in net.parameters())
    front, _ = split(net, "block1")
    assert count_cost(front, cfg.in_shape).macs == 16 * 16 * 4 * 9


def test_default_cut_puts_most_work_in_the_analyzer():
    cfg = CONFIGS["image"]
    net = build_net(cfg)
    ext, ana = assemble(net, cfg, DEFAULT_CUT)
    e = count_cost(ext, cfg.in_shape)
    a = count_cost(ana, (64 * 8 * 8,))
    assert e.macs < a.macs and e.params < a.params
    assert e.macs < 38_000_000  # cheaper than the 38 M MAC extractor measured at ~420 inputs/s
