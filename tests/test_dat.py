"""Tests of the DAT backbone (mask2former/modeling/backbone/dat.py) against the official DAT v1 golden data
(../shared/golden/dat_tiny: outputs of the official code with fixed weights, and the official state_dict
names and shapes of DAT-T/S/B)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from mask2former import add_maskformer2_config
from mask2former.modeling.backbone.dat import D2DAT, DAttentionBaseline, DepthwiseConv2d, window_attention_mask

from shared_paths import SHARED, require

GOLDEN = SHARED / "golden" / "dat_tiny"
require(GOLDEN)

ARGS = json.loads((GOLDEN / "constructor_args.json").read_text())
OFFICIAL = json.loads((GOLDEN / "official_param_shapes.json").read_text())["models"]

# constructor argument -> MODEL.DAT key
KEYS = {
    "img_size": "PRETRAIN_IMG_SIZE", "patch_size": "PATCH_SIZE", "expansion": "EXPANSION", "dim_stem": "DIM_STEM",
    "dims": "DIMS", "depths": "DEPTHS", "heads": "HEADS", "window_sizes": "WINDOW_SIZES",
    "stage_spec": "STAGE_SPEC", "groups": "GROUPS", "use_pes": "USE_PES", "dwc_pes": "DWC_PES",
    "fixed_pes": "FIXED_PES", "no_offs": "NO_OFFS", "strides": "STRIDES", "sr_ratios": "SR_RATIOS",
    "offset_range_factor": "OFFSET_RANGE_FACTOR", "use_dwc_mlps": "USE_DWC_MLPS",
    "use_conv_patches": "USE_CONV_PATCHES", "drop_rate": "DROP_RATE", "attn_drop_rate": "ATTN_DROP_RATE",
    "drop_path_rate": "DROP_PATH_RATE",
}


def dat_cfg(args=ARGS, **overrides):
    """Config whose MODEL.DAT block holds the official constructor arguments ``args``, then ``overrides``."""
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "D2DAT"
    for arg, key in KEYS.items():
        if arg in args:
            cfg.MODEL.DAT[key] = args[arg]
    for key, value in overrides.items():
        cfg.MODEL.DAT[key] = value
    return cfg


# A smaller model than the golden's for the behaviour tests (a few seconds each): 1 block in stages 1-2.
SMALL = dict(
    ARGS, dim_stem=16, dims=[16, 32, 64, 128], depths=[1, 1, 2, 2], heads=[1, 2, 4, 8], groups=[-1, -1, 2, 4],
    stage_spec=[["S"], ["L"], ["L", "D"], ["L", "D"]],
)


def golden_model():
    backbone = build_backbone(dat_cfg()).eval()
    state = torch.load(GOLDEN / "model_state_dict.pt", weights_only=True)
    return backbone, state


def load_golden(backbone, state):
    result = backbone.load_state_dict(state, strict=False)
    assert result.unexpected_keys == ["cls_norm.norm.weight", "cls_norm.norm.bias", "cls_head.weight", "cls_head.bias"]
    assert result.missing_keys == [f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")]


@pytest.fixture(scope="module")
def golden_run():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    backbone, state = golden_model()
    load_golden(backbone, state)
    image = torch.load(GOLDEN / "input.pt", weights_only=True)
    with torch.no_grad():
        stages, positions = backbone.forward_stages_with_positions(image)
    return backbone, state, stages, positions, torch.load(GOLDEN / "outputs.pt", weights_only=True)


def test_golden_stage_outputs_and_logits(golden_run):
    backbone, state, stages, _, expected = golden_run
    for i in range(4):
        assert stages[i].shape == expected[f"stage{i}"].shape
        diff = (stages[i] - expected[f"stage{i}"]).abs().max().item()
        assert diff < 1e-4, f"stage{i}: max abs diff {diff}"
    # the official classifier on top of stage 4 gives the golden logits: nothing is left out before it
    x = F.layer_norm(stages[3].permute(0, 2, 3, 1), (160,), state["cls_norm.norm.weight"], state["cls_norm.norm.bias"])
    logits = F.linear(x.mean(dim=(1, 2)), state["cls_head.weight"], state["cls_head.bias"])
    assert (logits - expected["logits"]).abs().max().item() < 1e-4
    # forward_stages is the same computation
    with torch.no_grad():
        again = backbone.forward_stages(torch.load(GOLDEN / "input.pt", weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(again, stages))


def test_golden_sampling_positions(golden_run):
    _, _, _, positions, expected = golden_run
    assert sorted(positions) == sorted(expected["deform"]) == [
        "stages.2.attns.1", "stages.2.attns.3", "stages.2.attns.5", "stages.3.attns.1"
    ]
    for name, ref in expected["deform"].items():
        pos, reference = positions[name]
        assert pos.shape == ref["pos"].shape, name
        for key, ours in (("pos", pos), ("reference", reference), ("offset", pos - reference)):
            diff = (ours - ref[key]).abs().max().item()
            assert diff < 1e-4, f"{name} {key}: max abs diff {diff}"


def test_golden_probe_of_one_deformable_block(golden_run):
    """The probed block alone: raw offsets of the offset network and the attention output."""
    backbone, _, _, _, expected = golden_run
    probe = expected["probe"]
    attn = backbone.get_submodule(probe["block"])
    assert isinstance(attn, DAttentionBaseline)
    with torch.no_grad():
        q = attn.proj_q(probe["input"])
        raw = attn.conv_offset(q.reshape(2, 40, 14, 14))
        y, pos, reference = attn(probe["input"])
    for ours, key in ((raw, "offset_raw"), (y, "output"), (pos, "pos"), (reference, "reference")):
        assert ours.shape == probe[key].shape, key
        assert (ours - probe[key]).abs().max().item() < 1e-4, key
    # offsets are tanh(raw) * OFFSET_RANGE_FACTOR / (Hk, Wk); reference points are pixel centres (i + 0.5) / H * 2 - 1
    torch.testing.assert_close(pos - reference, raw.tanh().permute(0, 2, 3, 1)[None] * 2 / 14, atol=1e-6, rtol=0)
    torch.testing.assert_close(reference[0, 0, :, 0, 0], (torch.arange(14) + 0.5) / 14 * 2 - 1)


def test_golden_buffers_are_the_official_constants():
    backbone, state = golden_model()
    ours = backbone.state_dict()
    buffers = [k for k in state if k.endswith(("attn_mask", "relative_position_index"))]
    assert len(buffers) == 8 + 2  # 8 window blocks, 2 of them shifted
    for k in buffers:
        assert ours[k].dtype == state[k].dtype and torch.equal(ours[k], state[k]), k
    # the mask built for the actual size is the official buffer at the construction size (shift 4 = ceil(7 / 2))
    for i, size in ((0, 56), (1, 28)):
        attn = backbone.stages[i].attns[1]
        assert attn.shift_size == 4
        torch.testing.assert_close(window_attention_mask(size, size, 7, 4, torch.device("cpu")), attn.attn_mask)


@pytest.mark.parametrize("variant", ["dat_tiny", "dat_small", "dat_base", "dat_base_384"])
def test_state_dict_names_and_shapes_match_official(variant):
    info = OFFICIAL[variant]
    with torch.device("meta"):  # shapes only: DAT-B has ~88M parameters
        backbone = build_backbone(dat_cfg(info["constructor_args"]))
    official = [
        (e["name"], e["shape"], e["kind"]) for e in info["state_dict"] if not e["name"].startswith("cls_")
    ]
    params = dict(backbone.named_parameters())
    ours = [
        (name, list(t.shape), "parameter" if name in params else "buffer")
        for name, t in backbone.state_dict().items()
        if not name.startswith("norm")
    ]
    assert ours == official
    classifier = sum(math.prod(e["shape"]) for e in info["state_dict"] if e["name"].startswith("cls_"))
    norms = sum(p.numel() for n, p in params.items() if n.startswith("norm"))
    assert sum(p.numel() for p in params.values()) - norms == info["num_parameters"] - classifier
    assert {k: (s.channels, s.stride) for k, s in backbone.output_shape().items()} == {
        f"res{i + 2}": (info["constructor_args"]["dims"][i], 4 * 2**i) for i in range(4)
    }


@pytest.mark.parametrize("height,width", [(97, 131), (20, 13), (230, 250), (256, 320)])
def test_any_input_size_gives_strided_outputs(height, width):
    torch.manual_seed(0)
    backbone = build_backbone(dat_cfg(SMALL)).eval()
    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, height, width))
        stages, positions = backbone.forward_stages_with_positions(torch.randn(1, 3, height, width))
    for name, spec in backbone.output_shape().items():
        s = spec.stride
        assert outputs[name].shape == (2, spec.channels, math.ceil(height / s), math.ceil(width / s))
        assert torch.isfinite(outputs[name]).all()
    for name, (pos, reference) in positions.items():
        stage = int(name.split(".")[1])
        groups = SMALL["groups"][stage]
        assert pos.shape == reference.shape == (1, groups) + stages[stage].shape[2:] + (2,)
        # offsets stay within OFFSET_RANGE_FACTOR / 2 key cells of the reference points
        bound = 2 / torch.tensor(stages[stage].shape[2:], dtype=torch.float32)
        assert ((pos - reference).abs() <= bound + 1e-6).all()


def test_batch_is_per_image():
    torch.manual_seed(0)
    backbone = build_backbone(dat_cfg(SMALL)).eval()
    images = torch.randn(2, 3, 75, 101)
    with torch.no_grad():
        batched = backbone(images)
        single = backbone(images[1:])
    for name in batched:
        torch.testing.assert_close(batched[name][1:], single[name], atol=1e-5, rtol=1e-5)


def test_window_mask_hides_padding_from_real_tokens():
    # 9 x 9 map, window 7: padded to 14 x 14; with and without the shift
    for shift in (0, 4):
        mask = window_attention_mask(9, 9, 7, shift, torch.device("cpu"))
        padded = torch.zeros(14, 14, dtype=torch.bool)
        padded[9:] = padded[:, 9:] = True
        padded = torch.roll(padded, (-shift, -shift), (0, 1))
        windows = padded.view(2, 7, 2, 7).permute(0, 2, 1, 3).reshape(4, 49)
        real_to_pad = (~windows)[:, :, None] & windows[:, None, :]
        assert (mask[real_to_pad] == -100).all()
        assert (mask.diagonal(dim1=1, dim2=2) == 0).all()
    assert window_attention_mask(14, 21, 7, 0, torch.device("cpu")) is None


def test_gradients_reach_the_offset_network_and_bias_tables():
    torch.manual_seed(0)
    backbone = build_backbone(dat_cfg(SMALL, DROP_PATH_RATE=0.0)).train()  # no block may be dropped
    outputs = backbone(torch.randn(1, 3, 70, 90))
    sum((o * torch.randn_like(o)).sum() for o in outputs.values()).backward()
    deformable = [n for n, m in backbone.named_modules() if isinstance(m, DAttentionBaseline)]
    assert deformable == ["stages.2.attns.1", "stages.3.attns.1"]
    for name in deformable:
        attn = backbone.get_submodule(name)
        for p in (attn.conv_offset[0].weight, attn.conv_offset[3].weight, attn.rpe_table, attn.proj_q.weight):
            assert p.grad is not None and p.grad.abs().max() > 0, name
    for name, p in backbone.named_parameters():
        if not name.endswith("proj_k.bias"):  # adds the same q.b_k to every logit of a query: no effect
            assert p.grad is not None and p.grad.abs().max() > 0, name


def test_gradcheck_of_deformable_sampling_float64():
    """Finite differences through offsets, bilinear sampling of keys/values and the interpolated bias."""
    torch.manual_seed(0)
    attn = DAttentionBaseline(
        (5, 5), (5, 5), n_heads=2, n_head_channels=2, n_groups=2, attn_drop=0.0, proj_drop=0.0, stride=1,
        offset_range_factor=2.0, use_pe=True, dwc_pe=False, no_off=False, fixed_pe=False, stage_idx=3,
    ).double()
    with torch.no_grad():  # large offsets and a non-trivial bias, so every path matters
        attn.conv_offset[3].weight.mul_(20)
        attn.rpe_table.normal_()
    x = torch.randn(1, 4, 4, 6, dtype=torch.float64, requires_grad=True)  # not the construction size
    table = attn.rpe_table.detach().clone().requires_grad_(True)
    offset_weight = attn.conv_offset[3].weight.detach().clone().requires_grad_(True)

    def run(x, table, offset_weight):
        params = {"rpe_table": table, "conv_offset.3.weight": offset_weight}
        y, pos, _ = torch.func.functional_call(attn, params, (x,))
        return y, pos

    y, pos = run(x, table, offset_weight)
    assert pos.dtype == torch.float64
    moved = (pos - attn.reference_points(4, 6, 2, x.dtype, x.device)[None]).abs().amax(-1)
    assert (moved > 0.05).any()  # the offsets matter
    assert torch.autograd.gradcheck(run, (x, table, offset_weight), eps=1e-6, atol=1e-5)



@pytest.mark.parametrize("dtype,amp", [(torch.float32, False), (torch.float32, True), (torch.float64, False)])
@pytest.mark.parametrize("batch,groups,channels,size,kernel", [(1, 3, 128, 32, 5), (2, 2, 16, 23, 5), (8, 2, 64, 12, 5),
                                                               (1, 2, 32, 16, 3), (1, 2, 8, 20, 9)])
def test_offset_convolution_matches_conv2d(dtype, amp, batch, groups, channels, size, kernel):
    """The offset network's depthwise convolution: output and input gradient equal nn.Conv2d's bit for bit
    (on the strides the offset network gives it, and under bfloat16 autocast), the weight and bias gradients
    up to rounding."""
    torch.manual_seed(0)
    ours = DepthwiseConv2d(channels, channels, kernel, 1, kernel // 2, groups=channels).to(dtype)
    plain = torch.nn.Conv2d(channels, channels, kernel, 1, kernel // 2, groups=channels).to(dtype)
    plain.load_state_dict(ours.state_dict())
    assert [n for n, _ in ours.named_parameters()] == ["weight", "bias"]
    source = torch.randn(batch, size, size, groups * channels, dtype=dtype)
    results = []
    for conv in (plain, ours):
        x = source.clone().requires_grad_()
        q = x.permute(0, 3, 1, 2).reshape(batch * groups, channels, size, size)  # as proj_q's output is split
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = conv(q)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
        results.append((y.detach(), x.grad, conv.weight.grad, conv.bias.grad))
    (y_a, gx_a, gw_a, gb_a), (y_b, gx_b, gw_b, gb_b) = results
    assert y_b.dtype == (torch.bfloat16 if amp else dtype)
    assert torch.equal(y_a, y_b) and torch.equal(gx_a, gx_b)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype] if not amp else 1e-2  # bf16: 8 mantissa bits
    torch.testing.assert_close(gw_b, gw_a, rtol=tol, atol=tol * gw_a.abs().max().item())
    torch.testing.assert_close(gb_b, gb_a, rtol=tol, atol=tol * gb_a.abs().max().item())
    with torch.no_grad():
        assert torch.equal(ours(q), plain(q))


def test_offset_network_uses_the_depthwise_convolution():
    backbone = build_backbone(dat_cfg(SMALL))
    offset_convs = [m.conv_offset[0] for m in backbone.modules() if isinstance(m, DAttentionBaseline)]
    assert offset_convs and all(type(c) is DepthwiseConv2d and c.groups == c.in_channels for c in offset_convs)

def test_amp_bfloat16_on_cpu():
    torch.manual_seed(0)
    backbone = build_backbone(dat_cfg(SMALL)).eval()  # no random drop path: both runs compute the same
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref_stages, ref_positions = backbone.forward_stages_with_positions(image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stages, positions = backbone.forward_stages_with_positions(image)
        loss = sum(s.float().square().mean() for s in stages)
    loss.backward()
    for ours, ref in zip(stages, ref_stages):
        assert torch.isfinite(ours).all()
        assert (ours.float() - ref).norm() / ref.norm() < 0.05
    for name, (pos, _) in positions.items():
        assert pos.dtype == torch.float32, name  # positions are never rounded to bf16
        assert (pos - ref_positions[name][0]).abs().max() < 0.05, name
    grad = backbone.stages[2].attns[1].conv_offset[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0


def test_activation_checkpointing_gives_same_forward_and_gradients():
    torch.manual_seed(0)
    plain = build_backbone(dat_cfg(SMALL, DROP_RATE=0.1)).train()
    ckpt = build_backbone(dat_cfg(SMALL, DROP_RATE=0.1, USE_CHECKPOINT=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 45, 61)
    calls = []
    ckpt.stages[2].attns[1].register_forward_pre_hook(lambda *args: calls.append(1))
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same drop-path / dropout draws
        outputs = model(image)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs.values()).backward()
        results.append((outputs, {n: p.grad for n, p in model.named_parameters()}))
    assert len(calls) == 2  # the deformable block ran again in backward
    (out_a, grad_a), (out_b, grad_b) = results
    for name in out_a:
        torch.testing.assert_close(out_a[name], out_b[name])
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], msg=name)


def test_drop_path_increases_linearly_and_acts_in_training_only():
    backbone = build_backbone(dat_cfg(SMALL, DROP_PATH_RATE=0.3))
    rates = [getattr(m, "drop_prob", 0.0) for stage in backbone.stages for m in stage.drop_path]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 6).tolist())
    x = torch.randn(4, 3, 64, 64)  # drop path draws per image: 4 images make equal draws unlikely
    torch.manual_seed(1)
    a = backbone.train()(x)["res5"]
    torch.manual_seed(2)
    b = backbone(x)["res5"]
    assert not torch.allclose(a, b)
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)["res5"], backbone(x)["res5"])


def test_out_features_subset():
    backbone = build_backbone(dat_cfg(SMALL, OUT_FEATURES=["res5", "res3"])).eval()
    norms = [n for n in backbone.state_dict() if n.startswith("norm")]
    assert norms == ["norm1.weight", "norm1.bias", "norm3.weight", "norm3.bias"]
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 97, 131))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"res3": (1, 32, 13, 17), "res5": (1, 128, 4, 5)}


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"DEPTHS": [1, 1, 2]}, "MODEL.DAT.DEPTHS"),
        ({"STAGE_SPEC": [["S"], ["L"], ["L", "D"], ["L"]]}, r"MODEL.DAT.STAGE_SPEC\[3\]"),
        ({"STAGE_SPEC": [["S"], ["L"], ["L", "P"], ["L", "D"]]}, "'P'"),
        ({"GROUPS": [-1, -1, 3, 4]}, r"MODEL.DAT.GROUPS\[2\]"),
        ({"HEADS": [1, 3, 4, 8]}, r"MODEL.DAT.HEADS\[1\]"),
        ({"DIMS": [16, 32, 64, 96]}, "MODEL.DAT.DIMS"),
        ({"OUT_FEATURES": ["res6"]}, "MODEL.DAT.OUT_FEATURES"),
    ],
)
def test_inconsistent_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(dat_cfg(SMALL, **overrides))


def test_registered_and_rejects_non_batched_input():
    assert BACKBONE_REGISTRY.get("D2DAT") is D2DAT
    backbone = D2DAT(dat_cfg(SMALL), ShapeSpec(channels=3))
    assert backbone.size_divisibility == 32
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        backbone(torch.randn(3, 64, 64))
