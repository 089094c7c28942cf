"""Parity with the reference implementation: same weights and input give the same outputs (1e-4 absolute).

Data: ../shared/golden/tiny_swin_coco_panoptic (see its README). The config is the official Swin-T COCO
panoptic config with the README's overrides.
"""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from mask2former import add_maskformer2_config, add_maskformer2_video_config
from mask2former.modeling.postprocessing import instance_inference, panoptic_inference, semantic_inference
from shared_paths import GOLDEN, require

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml")
ATOL = 1e-4

require(GOLDEN)

OVERRIDES = [
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64, "MODEL.SEM_SEG_HEAD.MASK_DIM", 64,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 2, "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", 4,
    "MODEL.MASK_FORMER.HIDDEN_DIM", 64, "MODEL.MASK_FORMER.NHEADS", 4, "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 128,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 20, "MODEL.MASK_FORMER.DEC_LAYERS", 4,
    "MODEL.SWIN.EMBED_DIM", 32, "MODEL.SWIN.DEPTHS", [1, 1, 2, 1], "MODEL.SWIN.NUM_HEADS", [1, 2, 4, 8],
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
]


def load(name):
    return torch.load(os.path.join(GOLDEN, name), weights_only=True)


@pytest.fixture(scope="module")
def model():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([str(v) if not isinstance(v, str) else v for v in OVERRIDES])
    cfg.freeze()
    model = build_model(cfg).eval()
    incompatible = model.load_state_dict(load("model_state_dict.pt"), strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    return model


@pytest.fixture(scope="module")
def raw(model):
    """Intermediate outputs of our model on the golden input, captured with forward hooks."""
    captured = {}
    image = load("input.pt")
    batch = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]

    def grab(name):
        def hook(module, args, output):
            captured[name] = output
        return hook

    handles = [
        model.backbone.register_forward_hook(grab("backbone")),
        model.sem_seg_head.predictor.register_forward_hook(grab("predictor")),
    ]
    decoder = model.sem_seg_head.pixel_decoder
    forward_features = decoder.forward_features

    def capture_features(features):
        out = forward_features(features)
        captured["pixel_decoder"] = out
        return out

    decoder.forward_features = capture_features
    try:
        with torch.no_grad():
            captured["results"] = model(batch)
    finally:
        decoder.forward_features = forward_features
        for h in handles:
            h.remove()
    return captured


def assert_close(ours, ref, name):
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= ATOL, f"{name}: max abs difference {diff:.3g} > {ATOL}"


def test_backbone(raw):
    ref = load("raw_outputs.pt")["backbone"]
    assert sorted(raw["backbone"]) == sorted(ref)
    for k in ref:
        assert_close(raw["backbone"][k], ref[k], f"backbone.{k}")


def test_pixel_decoder(raw):
    ref = load("raw_outputs.pt")
    mask_features, encoder_features, multi_scale = raw["pixel_decoder"]
    assert_close(mask_features, ref["mask_features"], "mask_features")
    assert_close(encoder_features, ref["transformer_encoder_features"], "transformer_encoder_features")
    assert len(multi_scale) == len(ref["multi_scale_features"])
    for i, (a, b) in enumerate(zip(multi_scale, ref["multi_scale_features"])):
        assert_close(a, b, f"multi_scale_features[{i}]")


def test_transformer_decoder(raw):
    ref = load("raw_outputs.pt")
    out = raw["predictor"]
    assert_close(out["pred_logits"], ref["pred_logits"], "pred_logits")
    assert_close(out["pred_masks"], ref["pred_masks"], "pred_masks")
    assert len(out["aux_outputs"]) == len(ref["aux_outputs"])
    for i, (a, b) in enumerate(zip(out["aux_outputs"], ref["aux_outputs"])):
        assert_close(a["pred_logits"], b["pred_logits"], f"aux_outputs[{i}].pred_logits")
        assert_close(a["pred_masks"], b["pred_masks"], f"aux_outputs[{i}].pred_masks")


def assert_instances_equal(ours, ref):
    """Compare as sets: sort both by (score, class) descending, ties in the reference are arbitrary."""
    def order(scores, classes):
        keys = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), int(classes[i])))
        return torch.as_tensor(keys, dtype=torch.long)

    assert len(ours["scores"]) == len(ref["scores"])
    a = order(ours["scores"], ours["pred_classes"])
    b = order(ref["scores"], ref["pred_classes"])
    assert_close(ours["scores"][a], ref["scores"][b], "instances.scores")
    assert torch.equal(ours["pred_classes"][a], ref["pred_classes"][b].to(ours["pred_classes"].dtype))
    assert torch.equal(ours["pred_masks"][a].bool(), ref["pred_masks"][b].bool())


def instances_as_dict(inst):
    return {"scores": inst.scores, "pred_classes": inst.pred_classes, "pred_masks": inst.pred_masks}


def test_postprocessed(raw):
    ref = load("postprocessed.pt")
    ours = raw["results"][0]
    assert_close(ours["sem_seg"], ref["sem_seg"], "sem_seg")
    pan, info = ours["panoptic_seg"]
    ref_pan = ref["panoptic_seg"]
    ref_pan, ref_info = ref_pan if isinstance(ref_pan, (tuple, list)) else (ref_pan, ref["segments_info"])
    assert pan.dtype == torch.int32 and torch.equal(pan, ref_pan)
    assert info == ref_info
    assert_instances_equal(instances_as_dict(ours["instances"]), ref["instances"])


def test_panoptic_threshold_zero(model, raw):
    """The same call with the object-mask threshold set to 0: segments appear and must match exactly."""
    ref = load("postprocessed_thr0.pt")
    image = load("input.pt")
    old = model.object_mask_threshold
    model.object_mask_threshold = 0.0
    try:
        with torch.no_grad():
            out = model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])[0]
    finally:
        model.object_mask_threshold = old
    pan, info = out["panoptic_seg"]
    ref_pan = ref["panoptic_seg"]
    ref_pan, ref_info = ref_pan if isinstance(ref_pan, (tuple, list)) else (ref_pan, ref["segments_info"])
    assert torch.equal(pan, ref_pan)
    assert info == ref_info
    assert len(info) > 0


def test_postprocess_synthetic(model):
    data = load("postprocess_synthetic.pt")
    inputs, outputs = data["inputs"], data["outputs"]
    mask_cls, mask_pred = inputs["mask_cls"], inputs["mask_pred"]
    thr = data.get("object_mask_threshold", 0.8), data.get("overlap_threshold", 0.8)
    assert_close(semantic_inference(mask_cls, mask_pred), outputs["sem_seg"], "synthetic sem_seg")
    pan, info = panoptic_inference(mask_cls, mask_pred, thing_ids=model.thing_ids,
                                   object_mask_threshold=thr[0], overlap_threshold=thr[1])
    ref_pan = outputs["panoptic_seg"]
    ref_pan, ref_info = ref_pan if isinstance(ref_pan, (tuple, list)) else (ref_pan, outputs["segments_info"])
    assert torch.equal(pan, ref_pan)
    assert info == ref_info
    inst = instance_inference(mask_cls, mask_pred, topk=100, thing_ids=model.thing_ids)
    assert_instances_equal(instances_as_dict(inst), outputs["instances"])
