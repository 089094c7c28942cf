"""HuggingFace Mask2Former <-> ours (mask2former/utils/hf_conversion.py, tools/convert_hf_mask2former.py): on
random-initialised HF models built here (a tiny one and a Swin-T-sized one), our forward on the converted weights
matches transformers' own forward within 1e-4 (class and mask logits of every decoder layer), ours -> HF -> ours
round-trips exactly, and our checkpoints saved as HF folders load with from_pretrained."""
import importlib.util
import os

import pytest
import torch
from detectron2.modeling import build_model

transformers = pytest.importorskip("transformers", reason="pip install transformers safetensors (extras 'hf')")
pytest.importorskip("safetensors", reason="pip install safetensors")

from mask2former.utils.hf_conversion import hf_to_ours, ours_to_hf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4


def tool():
    spec = importlib.util.spec_from_file_location("convert_hf", os.path.join(REPO, "tools", "convert_hf_mask2former.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hf_model(size):
    torch.manual_seed(0)
    if size == "tiny":
        backbone = transformers.SwinConfig(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=7,
                                           out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0)
        config = transformers.Mask2FormerConfig(
            backbone_config=backbone, num_labels=10, num_queries=20, hidden_dim=64, mask_feature_size=64,
            feature_size=64, encoder_layers=2, decoder_layers=4, num_attention_heads=4, dim_feedforward=128)
    else:  # Swin-T with the official COCO panoptic head (133 classes, 100 queries, 6 encoder and 9 decoder layers)
        backbone = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                           out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0)
        config = transformers.Mask2FormerConfig(backbone_config=backbone, num_labels=133)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # HF zero-initialises some biases and tables; make every weight count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("size, image", [("tiny", (256, 320)), ("swin_t", (256, 256))])
def test_converted_weights_match_transformers_forward(size, image, tmp_path):
    hf = hf_model(size)
    hf.save_pretrained(tmp_path / "hf")
    cfg, _ = tool().from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), opts=["MODEL.DEVICE", "cpu"])
    ours = build_model(cfg).eval()
    checkpoint = torch.load(tmp_path / "ours" / "model_final.pth", weights_only=True)
    incompatible = ours.load_state_dict(checkpoint["model"], strict=False)
    # not converted: the criterion's class weights and Swin's index tables, constants both models compute at init
    assert [k for k in incompatible.missing_keys
            if not k.startswith("criterion.") and not k.endswith("relative_position_index")] == []
    assert incompatible.unexpected_keys == []

    torch.manual_seed(1)
    x = torch.randn(1, 3, *image)  # normalised pixels, as HF's processor hands them over
    with torch.no_grad():
        mine = ours.sem_seg_head(ours.backbone(x))
        theirs = hf(pixel_values=x, output_auxiliary_logits=True)
    layers = [(mine["pred_logits"], mine["pred_masks"], theirs.class_queries_logits, theirs.masks_queries_logits)]
    assert len(theirs.auxiliary_logits) == len(mine["aux_outputs"]) == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1
    layers += [(a["pred_logits"], a["pred_masks"], b["class_queries_logits"], b["masks_queries_logits"])
               for a, b in zip(mine["aux_outputs"], theirs.auxiliary_logits)]
    for logits, masks, hf_logits, hf_masks in layers:
        torch.testing.assert_close(logits, hf_logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(masks, hf_masks, atol=ATOL, rtol=0)


def test_ours_to_hf_to_ours_round_trips_and_loads_in_transformers(tmp_path):
    hf = hf_model("tiny")
    ours = hf_to_ours(hf.state_dict())
    back = hf_to_ours(ours_to_hf(ours, {k: v.shape for k, v in hf.state_dict().items()}))
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)

    # our checkpoint + config -> an HF folder -> from_pretrained: the same weights
    hf.save_pretrained(tmp_path / "hf")
    converter = tool()
    cfg, _ = converter.from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), opts=["MODEL.DEVICE", "cpu"])
    converter.to_hf(str(tmp_path / "ours" / "config.yaml"), str(tmp_path / "ours" / "model_final.pth"),
                    str(tmp_path / "hf2"))
    reloaded = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(str(tmp_path / "hf2")).eval()
    original = hf.state_dict()
    for k, v in reloaded.state_dict().items():
        if k.startswith("criterion.") or k.endswith("swin.layernorm.weight") or k.endswith("swin.layernorm.bias"):
            continue  # the criterion's buffer and Swin's unused final norm are not part of our model
        assert torch.equal(v, original[k]), k
    # 10 classes: not the base config's dataset (COCO panoptic, 133), so HF's default label names
    assert len(reloaded.config.id2label) == 10
