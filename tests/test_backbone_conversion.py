"""Backbone converters (tools/convert_resnet_to_d2.py, tools/convert_swin_to_d2.py): random-initialised torchvision
and timm models built here, converted to .pkl files, loaded through MODEL.WEIGHTS' checkpointer into the
backbones the official configs build, give the same features within 1e-4."""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from torch import nn

from mask2former import add_maskformer2_config, add_maskformer2_video_config
from mask2former.utils.weights import WeightsCheckpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4


def tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backbone_of(config, *opts):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    holder = nn.Module()  # names as in the full model: backbone.*
    holder.backbone = build_backbone(cfg).eval()
    return holder


def randomise_batch_norm(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def resnet_features(model, x):
    x = model.maxpool(model.act1(model.bn1(model.conv1(x))) if hasattr(model, "act1") else
                      model.relu(model.bn1(model.conv1(x))))
    feats = {}
    for i in range(1, 5):
        x = getattr(model, f"layer{i}")(x)
        feats[f"res{i + 1}"] = x
    return feats


def check_resnet(source_model, depth, tmp_path):
    randomise_batch_norm(source_model)
    source_model.eval()
    src = tmp_path / "source.pth"
    torch.save(source_model.state_dict(), src)
    out = tool("convert_resnet_to_d2").main([str(src), str(tmp_path / "R.pkl")])
    config = ("configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml" if depth == 50 else
              "configs/coco/panoptic-segmentation/maskformer2_R101_bs16_50ep.yaml")
    holder = backbone_of(config)
    incompatible = WeightsCheckpointer(holder).load(out)
    del incompatible
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = holder.backbone(x)
        theirs = resnet_features(source_model, x)
    for name in ("res2", "res3", "res4", "res5"):
        torch.testing.assert_close(ours[name], theirs[name], atol=ATOL, rtol=0)


@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_resnet(depth, tmp_path):
    import torchvision

    torch.manual_seed(0)
    check_resnet(getattr(torchvision.models, f"resnet{depth}")(weights=None), depth, tmp_path)


def test_timm_resnet50(tmp_path):
    timm = pytest.importorskip("timm", reason="pip install timm")
    torch.manual_seed(0)
    check_resnet(timm.create_model("resnet50", pretrained=False), 50, tmp_path)


SWIN_T = "configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"


def test_timm_swin_tiny(tmp_path):
    timm = pytest.importorskip("timm", reason="pip install timm")
    torch.manual_seed(0)
    # 448 px so that the last stage (14 x 14) is larger than a window: at 224 timm (as the classification
    # release) turns the last stage's window shift off, which the detection Swin never does
    source = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=448).eval()
    for p in source.parameters():  # non-trivial biases and tables everywhere
        p.data.add_(torch.randn_like(p) * 0.02)
    src = tmp_path / "swin.pth"
    torch.save(source.state_dict(), src)
    out = tool("convert_swin_to_d2").main(["--source", "timm", str(src), str(tmp_path / "swin.pkl")])
    holder = backbone_of(SWIN_T, "MODEL.SWIN.DROP_PATH_RATE", "0.0")
    WeightsCheckpointer(holder).load(out)
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        ours = holder.backbone(x)
        # (N, C, H, W) per stage, before our per-stage output norms (fresh: weight 1, bias 0)
        theirs = source.forward_intermediates(x, indices=4, intermediates_only=True)
    for i, feat in enumerate(theirs):
        expected = F.layer_norm(feat.permute(0, 2, 3, 1), feat.shape[1:2]).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours[f"res{i + 2}"], expected, atol=ATOL, rtol=0)


def test_official_swin_checkpoint_names(tmp_path):
    """The Microsoft release stores {"model": ...} with our names plus the classifier, the final norm and
    index buffers, which are dropped; every backbone parameter but the output norms is loaded."""
    holder = backbone_of(SWIN_T)
    torch.manual_seed(0)
    ours = {k[len("backbone."):]: torch.randn_like(v) if v.is_floating_point() else v
            for k, v in holder.state_dict().items() if k.startswith("backbone.") and not k.startswith("backbone.norm")}
    release = dict(ours, **{"head.weight": torch.zeros(1000, 768), "head.bias": torch.zeros(1000),
                            "norm.weight": torch.ones(768), "norm.bias": torch.zeros(768),
                            "layers.0.blocks.1.attn_mask": torch.zeros(64, 49, 49)})
    torch.save({"model": release}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    out = tool("convert_swin_to_d2").main([str(tmp_path / "swin_tiny_patch4_window7_224.pth"), str(tmp_path / "s.pkl")])
    WeightsCheckpointer(holder).load(out)
    state = holder.state_dict()
    for k, v in ours.items():
        if "relative_position_index" not in k:
            assert torch.equal(state["backbone." + k], v), k
