"""Tests of the Swin Transformer backbone (mask2former/modeling/backbone/swin.py)."""
import json
import math
from pathlib import Path

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from mask2former import add_maskformer2_config
from mask2former.modeling.backbone.swin import (
    D2SwinTransformer,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

from shared_paths import GOLDEN, REFERENCE, require

require(REFERENCE)
require(GOLDEN)

# The four official variants: EMBED_DIM, DEPTHS, NUM_HEADS.
VARIANTS = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
}


def swin_cfg(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), **swin):
    """Config of the golden tiny model's backbone (official Swin-T COCO values, smaller sizes)."""
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.MODEL.SWIN.EMBED_DIM = embed_dim
    cfg.MODEL.SWIN.DEPTHS = list(depths)
    cfg.MODEL.SWIN.NUM_HEADS = list(num_heads)
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    for key, value in swin.items():
        cfg.MODEL.SWIN[key] = value
    return cfg


def official_swin_backbones():
    """[(config paths, variant, window size, [(name, shape)] of the backbone)] for each distinct official
    Swin backbone, with the variant and window size named by its config files."""
    data = json.loads(REFERENCE.read_text())
    groups = {}
    for path, info in data["configs"].items():
        if info["backbone"] != "D2SwinTransformer":
            continue
        name = Path(path).name
        variant = next(v for v in VARIANTS if f"swin_{v}" in name)
        window = 12 if "_384_" in name else 7
        names = tuple(
            (n[len("backbone.") :], tuple(s))
            for n, s in data["architectures"][info["arch"]]["state_dict"]
            if n.startswith("backbone.")
        )
        groups.setdefault((variant, window, names), []).append(path)
    return [(paths, variant, window, list(names)) for (variant, window, names), paths in groups.items()]


OFFICIAL = official_swin_backbones()


def test_official_configs_cover_the_four_variants():
    assert {(variant, window) for _, variant, window, _ in OFFICIAL} == {
        ("tiny", 7),
        ("small", 7),
        ("base", 12),
        ("large", 12),
    }


@pytest.mark.parametrize(
    "paths,variant,window,official", OFFICIAL, ids=[f"{v}-w{w}" for _, v, w, _ in OFFICIAL]
)
def test_state_dict_names_and_shapes_match_official(paths, variant, window, official):
    embed_dim, depths, num_heads = VARIANTS[variant]
    cfg = swin_cfg(embed_dim, depths, num_heads, WINDOW_SIZE=window, PRETRAIN_IMG_SIZE=32 * window)
    with torch.device("meta"):  # shapes only: Swin-L has ~200M parameters
        backbone = build_backbone(cfg)
    ours = [(name, tuple(t.shape)) for name, t in backbone.state_dict().items()]
    assert ours == official, paths[0]
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        f"res{i + 2}": (embed_dim * 2**i, 4 * 2**i) for i in range(4)
    }
    assert backbone.size_divisibility == 32


def load_golden_backbone():
    state = torch.load(GOLDEN / "model_state_dict.pt", weights_only=True)
    golden = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    backbone = build_backbone(swin_cfg())
    return backbone, golden


def golden_input():
    cfg = swin_cfg()
    image = torch.load(GOLDEN / "input.pt", weights_only=True).float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    return ((image - mean) / std)[None]


def test_golden_state_dict_layout_and_buffers():
    backbone, golden = load_golden_backbone()
    ours = backbone.state_dict()
    assert [(k, v.shape, v.dtype) for k, v in ours.items()] == [
        (k, v.shape, v.dtype) for k, v in golden.items()
    ]
    # relative_position_index is a persistent buffer and must equal the reference's; no attention-mask buffer
    index_keys = [k for k in ours if k.endswith("relative_position_index")]
    assert len(index_keys) == 5
    for k in index_keys:
        assert torch.equal(ours[k], golden[k]), k
    assert not any("attn_mask" in k for k in ours)


def test_golden_parity():
    backbone, golden = load_golden_backbone()
    backbone.load_state_dict(golden, strict=True)
    backbone.eval()
    reference = torch.load(GOLDEN / "raw_outputs.pt", weights_only=True)["backbone"]
    with torch.no_grad():
        outputs = backbone(golden_input())
    assert sorted(outputs) == sorted(reference) == ["res2", "res3", "res4", "res5"]
    for name, expected in reference.items():
        assert outputs[name].shape == expected.shape, name
        diff = (outputs[name] - expected).abs().max().item()
        assert diff < 1e-4, f"{name}: max abs diff {diff}"


@pytest.mark.parametrize("height,width", [(97, 131), (20, 13), (192, 256)])
def test_any_input_size_gives_strided_outputs(height, width):
    backbone = build_backbone(swin_cfg()).eval()
    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, height, width))
    for name, spec in backbone.output_shape().items():
        s = spec.stride
        assert outputs[name].shape == (2, spec.channels, math.ceil(height / s), math.ceil(width / s))
        assert torch.isfinite(outputs[name]).all()


def test_batch_is_per_image():
    """The shifted-window mask is shared by the images of a batch: results must not mix images."""
    torch.manual_seed(0)
    backbone = build_backbone(swin_cfg()).eval()
    images = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        batched = backbone(images)
        single = backbone(images[1:])
    for name in batched:
        torch.testing.assert_close(batched[name][1:], single[name], atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_gives_same_forward_and_gradients():
    torch.manual_seed(0)
    plain = build_backbone(swin_cfg(DROP_RATE=0.1, ATTN_DROP_RATE=0.1)).train()
    ckpt = build_backbone(swin_cfg(DROP_RATE=0.1, ATTN_DROP_RATE=0.1, USE_CHECKPOINT=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 45, 61)

    calls = []
    ckpt.layers[2].blocks[1].register_forward_pre_hook(lambda *args: calls.append(1))

    results = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same drop-path / dropout draws
        outputs = model(image)
        loss = sum((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() for out in outputs.values())
        loss.backward()
        results.append((outputs, {n: p.grad for n, p in model.named_parameters()}))
    assert len(calls) == 2  # the block ran again during backward: activations were recomputed

    (out_a, grad_a), (out_b, grad_b) = results
    for name in out_a:
        torch.testing.assert_close(out_a[name], out_b[name])
    assert grad_a.keys() == grad_b.keys()
    for name in grad_a:
        assert grad_a[name] is not None, name
        torch.testing.assert_close(grad_a[name], grad_b[name], msg=name)


def test_drop_path_increases_linearly():
    backbone = build_backbone(swin_cfg())
    rates = [blk.drop_path.drop_prob for layer in backbone.layers for blk in layer.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 5).tolist())
    shifts = [[blk.shift_size for blk in layer.blocks] for layer in backbone.layers]
    assert shifts == [[0], [0], [0, 3], [0]]
    # stochastic depth is active in training only
    x = torch.randn(1, 3, 64, 64)
    backbone.train()
    torch.manual_seed(1)
    a = backbone(x)["res5"]
    torch.manual_seed(2)
    b = backbone(x)["res5"]
    assert not torch.allclose(a, b)
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)["res5"], backbone(x)["res5"])


def test_absolute_position_embedding_and_out_features_subset():
    cfg = swin_cfg(APE=True, OUT_FEATURES=["res5", "res3"])
    backbone = build_backbone(cfg).eval()
    names = list(backbone.state_dict())
    assert names[0] == "absolute_pos_embed"
    assert backbone.absolute_pos_embed.shape == (1, 32, 56, 56)
    assert [n for n in names if n.startswith("norm")] == ["norm1.weight", "norm1.bias", "norm3.weight", "norm3.bias"]
    assert list(backbone.output_shape()) == ["res3", "res5"]
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 97, 131))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"res3": (1, 64, 13, 17), "res5": (1, 256, 4, 5)}


def test_window_helpers():
    x = torch.randn(2, 14, 21, 5)
    windows = window_partition(x, 7)
    assert windows.shape == (2 * 6, 49, 5)
    torch.testing.assert_close(windows[1].view(7, 7, 5), x[0, :7, 7:14])
    assert torch.equal(window_reverse(windows, 7, 14, 21), x)

    mask = shifted_window_mask(4, 4, window_size=2, shift_size=1, device=torch.device("cpu"))
    assert mask.shape == (4, 4, 4)
    assert (mask[0] == 0).all()  # top-left window: one region
    # bottom-right window mixes 4 regions of the shifted map: each token sees itself only
    assert torch.equal(mask[3] == 0, torch.eye(4, dtype=torch.bool))
    # top-right window: two column regions
    assert torch.equal(mask[1] == 0, torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]] * 2, dtype=torch.bool))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"DEPTHS": [1, 1, 2], "NUM_HEADS": [1, 2, 4, 8]}, "MODEL.SWIN.DEPTHS"),
        ({"OUT_FEATURES": ["res2", "res6"]}, "res6"),
        ({"OUT_FEATURES": []}, "MODEL.SWIN.OUT_FEATURES"),
        ({"NUM_HEADS": [1, 3, 4, 8]}, r"MODEL.SWIN.NUM_HEADS\[1\]"),
        ({"DEPTHS": [1, 0, 2, 1]}, "MODEL.SWIN.DEPTHS"),
    ],
)
def test_inconsistent_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(swin_cfg(**overrides))


def test_registered_and_rejects_non_batched_input():
    assert BACKBONE_REGISTRY.get("D2SwinTransformer") is D2SwinTransformer
    backbone = D2SwinTransformer(swin_cfg(), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        backbone(torch.randn(3, 64, 64))
