"""The image model on small configs: checkpoints in the model-zoo formats, inference options, training step."""
import copy
import logging
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances

from mask2former import add_maskformer2_config, add_maskformer2_video_config
from detectron2.modeling.postprocessing import sem_seg_postprocess

from mask2former.modeling.postprocessing import instance_inference, mask_nms, masks_to_boxes, resize_to_output


def tiny_cfg(**overrides):
    """A small R18 + deformable pixel decoder Mask2Former (random init, CPU)."""
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "MaskFormer", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.BACKBONE.FREEZE_AT", "0", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.STEM_TYPE", "basic", "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
        "MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHead", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
        "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "MSDeformAttnPixelDecoder",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.SEM_SEG_HEAD.NORM", "GN",
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", "4",
        "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "multi_scale_pixel_decoder",
        "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.NHEADS", "4", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "6", "MODEL.MASK_FORMER.DEC_LAYERS", "4",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "MODEL.MASK_FORMER.DROPOUT", "0.0",
        "MODEL.MASK_FORMER.CLASS_WEIGHT", "2.0", "MODEL.MASK_FORMER.MASK_WEIGHT", "5.0",
        "MODEL.MASK_FORMER.DICE_WEIGHT", "5.0",
        "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True", "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True",
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "False",
        "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]", "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
        "INPUT.FORMAT", "RGB",
    ])
    cfg.merge_from_list([x for kv in overrides.items() for x in (kv[0], str(kv[1]))])
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


def test_state_dict_has_no_normalisation_buffers_and_has_empty_weight(model):
    keys = model.state_dict().keys()
    assert "criterion.empty_weight" in keys
    assert "pixel_mean" not in keys and "pixel_std" not in keys
    assert "sem_seg_head.predictor.query_feat.weight" in keys


def _reload_and_compare(model, path):
    torch.manual_seed(1)
    fresh = build_model(tiny_cfg()).eval()
    checkpointer = DetectionCheckpointer(fresh)
    result = checkpointer.load(path)
    assert result == {} or "model" not in result
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    return fresh


def test_model_zoo_pickle_with_static_query_loads_without_missing_keys(model, tmp_path, caplog):
    """Model-zoo files: {"model": {name: numpy}, "__author__"}, query features stored as static_query."""
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["sem_seg_head.predictor.static_query.weight"] = state.pop("sem_seg_head.predictor.query_feat.weight")
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    with caplog.at_level(logging.WARNING):
        _reload_and_compare(model, str(path))
    text = caplog.text
    assert "missing" not in text.lower() and "unexpected" not in text.lower() and "not used" not in text.lower()


def test_pth_checkpoint_loads(model, tmp_path, caplog):
    path = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 3}, path)
    with caplog.at_level(logging.WARNING):
        _reload_and_compare(model, str(path))
    assert "missing" not in caplog.text.lower() and "not used" not in caplog.text.lower()


def test_inference_output_sizes(model):
    image = torch.randint(0, 255, (3, 50, 70), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 100, "width": 140}])[0]
    assert out["sem_seg"].shape == (5, 100, 140)
    inst = out["instances"]
    assert inst.image_size == (100, 140)
    assert inst.pred_masks.shape[1:] == (100, 140)
    # 6 queries x 5 classes = 30 candidates < TEST.DETECTIONS_PER_IMAGE (100): no crash, all kept.
    assert len(inst) == 30


def test_predict_queries_and_inference_single_by_task(model):
    image = torch.randint(0, 255, (3, 50, 70), dtype=torch.uint8)
    inputs = [{"image": image, "height": 100, "width": 140}]
    with torch.no_grad():
        out = model(inputs)[0]
        (q,) = model.predict_queries(inputs)
        # the raw predictions at the padded input size (divisible by 32), before any post-processing
        assert q["pred_logits"].shape == (6, 6) and q["pred_masks"].shape == (6, 64, 96)
        assert q["image_size"] == (50, 70)
        args = (q["pred_logits"], q["pred_masks"], q["image_size"], 100, 140)
        semantic = model.inference_single(*args, tasks=("semantic",))
        instance = model.inference_single(*args, tasks=["instance"])
        assert set(semantic) == {"sem_seg"} and set(instance) == {"instances"}
        assert set(model.inference_single(*args)) == {"sem_seg", "instances"}  # the TEST.*_ON switches
    torch.testing.assert_close(semantic["sem_seg"], out["sem_seg"])
    torch.testing.assert_close(instance["instances"].scores, out["instances"].scores)
    assert torch.equal(instance["instances"].pred_masks, out["instances"].pred_masks)
    with pytest.raises(ValueError, match="unknown tasks \\['semantics'\\]"):
        model.inference_single(*args, tasks=("semantics",))


def test_instance_nms_threshold_from_config():
    torch.manual_seed(0)
    nms = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.TEST.INSTANCE_NMS_THRESH": 0.5})).eval()
    assert nms.instance_nms_threshold == 0.5
    image = torch.randint(0, 255, (3, 50, 70), dtype=torch.uint8)
    with torch.no_grad():
        inst = nms([{"image": image}])[0]["instances"]
    # what is left has no two masks of one class overlapping by more than the threshold
    for c in inst.pred_classes.unique():
        masks = inst.pred_masks[inst.pred_classes == c].flatten(1).float()
        inter = masks @ masks.T
        iou = inter / (masks.sum(1)[:, None] + masks.sum(1)[None] - inter).clamp(min=1)
        assert (iou.fill_diagonal_(0) <= 0.5).all()
    with pytest.raises(ValueError, match="INSTANCE_NMS_THRESH"):
        build_model(tiny_cfg(**{"MODEL.MASK_FORMER.TEST.INSTANCE_NMS_THRESH": 1.5}))


def test_instance_inference_topk_threshold_and_boxes():
    torch.manual_seed(0)
    mask_cls = torch.randn(3, 5)  # 3 queries, 4 classes + no-object
    mask_pred = torch.full((3, 20, 30), -10.0)
    mask_pred[0, 2:5, 3:9] = 10.0
    mask_pred[1, 10:20, 0:30] = 10.0
    # query 2 predicts an empty mask
    r = instance_inference(mask_cls, mask_pred, topk=100)
    assert len(r) == 12  # clamped to queries x classes
    r = instance_inference(mask_cls, mask_pred, topk=5)
    assert len(r) == 5
    r = instance_inference(mask_cls, mask_pred, topk=12)
    boxes = r.pred_boxes.tensor
    for mask, box in zip(r.pred_masks, boxes):
        if mask.any():
            ys, xs = torch.where(mask)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        else:
            assert box.tolist() == [0, 0, 0, 0]
    # The score threshold removes detections below it (the empty-mask query scores 0).
    thr = float(r.scores.median())
    rt = instance_inference(mask_cls, mask_pred, topk=12, score_threshold=thr)
    assert len(rt) == int((r.scores >= thr).sum()) and (rt.scores >= thr).all()
    # Only thing classes survive with thing_ids.
    rth = instance_inference(mask_cls, mask_pred, topk=12, thing_ids=[1, 3])
    assert set(rth.pred_classes.tolist()) <= {1, 3} and len(rth) == 6


def test_mask_nms_is_greedy_within_each_class():
    masks = torch.zeros(6, 10, 10, dtype=torch.bool)
    masks[0, 0:5, 0:5] = True  # A: class 0, best score
    masks[1, 0:5, 0:4] = True  # B: IoU 0.8 with A, class 0 -> suppressed
    masks[2, 0:5, 0:4] = True  # C: B's mask but class 1 -> kept
    masks[3, 0:5, 3:8] = True  # D: IoU 0.25 with A, 0.43 with B; kept (B is gone, and below 0.5 anyway)
    masks[4, 0:5, 0:5] = True  # E: A's mask, class 0, lower score -> suppressed
    # masks[5] empty: overlaps nothing, kept
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = torch.tensor([0, 0, 1, 0, 0, 0])
    assert mask_nms(masks, scores, labels, 0.5).tolist() == [0, 2, 3, 5]
    assert mask_nms(masks, scores, labels, 0.2).tolist() == [0, 2, 5]  # D (IoU 0.25 with A) goes too
    assert mask_nms(masks, scores, labels, 1.0).tolist() == [0, 1, 2, 3, 4, 5]
    # the order of the input does not matter, the result is by score
    perm = torch.tensor([5, 3, 1, 0, 4, 2])
    assert perm[mask_nms(masks[perm], scores[perm], labels[perm], 0.5)].tolist() == [0, 2, 3, 5]
    with pytest.raises(ValueError, match="iou_threshold"):
        mask_nms(masks, scores, labels, 1.5)
    with pytest.raises(ValueError, match="expected masks"):
        mask_nms(masks[0], scores, labels, 0.5)


def test_instance_inference_nms_drops_duplicate_queries():
    mask_cls = torch.tensor([[4.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])  # 2 classes + no-object
    mask_pred = torch.full((3, 20, 30), -10.0)
    mask_pred[0, 2:10, 3:9] = 10.0
    mask_pred[1, 2:10, 3:10] = 10.0  # query 1 repeats query 0 (IoU 48/56)
    mask_pred[2, 2:10, 3:9] = 10.0  # query 2: the same mask, but another class
    every = instance_inference(mask_cls, mask_pred, topk=6)
    assert len(every) == 6  # 3 queries x 2 classes
    kept = instance_inference(mask_cls, mask_pred, topk=6, nms_threshold=0.5)
    # one detection per (class, object) is left: the best-scoring query of each class
    assert sorted(kept.pred_classes.tolist()) == [0, 1]
    best = {c: every.scores[every.pred_classes == c].max() for c in (0, 1)}
    assert all(s == best[c] for s, c in zip(kept.scores, kept.pred_classes.tolist()))


def test_masks_to_boxes():
    masks = torch.zeros(3, 8, 10, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 7, 9] = True
    boxes = masks_to_boxes(masks).tensor
    assert boxes.tolist() == [[2, 1, 7, 4], [9, 7, 10, 8], [0, 0, 0, 0]]


def _batch(n=2, size=(64, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        h, w = size
        image = torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)
        inst = Instances((h, w))
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, : h // 2] = True
        masks[1, h // 2:, w // 3:] = True
        image[:, masks[1]] = 200
        inst.gt_masks = masks
        inst.gt_classes = torch.tensor([1, 3])
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


def test_resize_to_output_is_sem_seg_postprocess_without_the_identity_copy():
    torch.manual_seed(0)
    padded = torch.randn(4, 32, 40) * 30
    # a real crop and resize: detectron2's function
    assert torch.equal(resize_to_output(padded, (30, 37), 60, 74), sem_seg_postprocess(padded, (30, 37), 60, 74))
    # already the unpadded image at the output size: the tensor itself, equal to what the resize would copy
    assert resize_to_output(padded, (32, 40), 32, 40) is padded
    assert torch.equal(sem_seg_postprocess(padded, (32, 40), 32, 40), padded)
    # a crop alone (padding, no resize) still happens
    assert resize_to_output(padded, (30, 37), 30, 37).shape == (4, 30, 37)


def test_training_step_losses_and_gradients():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    losses = model(_batch())
    # 3 aux predictions (DEC_LAYERS 4) + the final one, 3 losses each.
    assert len(losses) == 12 and all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_ce"].item() > 0
    sum(losses.values()).backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > 0.9 * len(grads)


def test_training_reduces_loss_and_amp_bf16_runs():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = _batch()
    first = None
    for _ in range(25):
        loss = sum(model(copy.deepcopy(batch)).values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(copy.deepcopy(batch))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_base_pixel_decoder_trains_and_infers():
    """The plain FPN pixel decoder (BasePixelDecoder) as a drop-in replacement for the deformable one."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder"}))
    decoder = model.sem_seg_head.pixel_decoder
    assert type(decoder).__name__ == "BasePixelDecoder"
    assert not any(k.startswith("sem_seg_head.pixel_decoder.transformer") for k in model.state_dict())
    losses = model.train()(_batch())
    assert len(losses) == 12 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    image = torch.randint(0, 255, (3, 50, 70), dtype=torch.uint8)
    with torch.no_grad():
        features = model.backbone(((image.float() - model.pixel_mean) / model.pixel_std)[None, :, :48, :64])
        mask_features, encoder_features, multi_scale = decoder.forward_features(features)
        out = model.eval()([{"image": image}])[0]
    assert encoder_features is None
    assert mask_features.shape == (1, 32, 12, 16)
    assert [tuple(f.shape[-2:]) for f in multi_scale] == [(2, 2), (3, 4), (6, 8)]  # coarsest first
    assert out["sem_seg"].shape == (5, 50, 70)


def test_aux_sem_seg_head_trains_and_leaves_inference_and_checkpoints_alone(model, tmp_path, caplog):
    """MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT > 0 adds one 1x1 classifier on the mask features, used in training."""
    assert model.sem_seg_head.aux_sem_seg_predictor is None  # off: the official parameters only
    assert not any("aux_sem_seg" in k for k in model.state_dict())
    torch.manual_seed(0)
    aux = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT": 2.0})).train()
    assert tuple(aux.sem_seg_head.aux_sem_seg_predictor.weight.shape) == (5, 32, 1, 1)  # K classes x MASK_DIM
    losses = aux(_batch())
    assert len(losses) == 13 and torch.isfinite(losses["loss_aux_sem_seg"])
    assert losses["loss_aux_sem_seg"] > 0
    sum(losses.values()).backward()
    assert aux.sem_seg_head.aux_sem_seg_predictor.weight.grad.abs().sum() > 0
    # The auxiliary loss alone reaches the backbone: it gives the pixel features a dense class signal.
    aux.zero_grad()
    aux(_batch())["loss_aux_sem_seg"].backward()
    assert aux.backbone.stem.conv1.weight.grad.abs().sum() > 0

    # Inference does not compute it, and a checkpoint with the classifier loads into a model without it.
    aux.eval()
    with torch.no_grad():
        out = aux.sem_seg_head(aux.backbone(torch.zeros(1, 3, 64, 64)))
    assert "aux_sem_seg" not in out
    path = tmp_path / "aux.pth"
    torch.save({"model": aux.state_dict()}, path)
    plain = build_model(tiny_cfg()).eval()
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(plain).load(str(path))
    assert torch.equal(plain.state_dict()["sem_seg_head.predictor.query_feat.weight"],
                       aux.state_dict()["sem_seg_head.predictor.query_feat.weight"])


@pytest.mark.parametrize("batch", [1, 3])
def test_memory_levels_are_views_with_the_reshape_values(batch):
    """The pixel decoder's (N, C, h, w) views of its token memory hold exactly the reshaped tokens; with one
    image they get canonical channels-last strides (the fast upsampling path) and share the memory."""
    from mask2former.modeling.pixel_decoder.msdeform_pixel_decoder import _channels_last_view

    shapes = [(3, 5), (6, 10), (12, 20)]
    memory = torch.randn(batch, sum(h * w for h, w in shapes), 8)
    for z, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes):
        tokens = z.transpose(1, 2)
        view = _channels_last_view(tokens, h, w)
        assert torch.equal(view, tokens.reshape(batch, 8, h, w))
        assert view.data_ptr() == tokens.data_ptr()
        if batch == 1:
            assert view.stride() == (h * w * 8, 1, w * 8, 8)
        up = torch.nn.functional.interpolate(view, scale_factor=2.0, mode="bilinear", align_corners=False)
        ref = torch.nn.functional.interpolate(tokens.reshape(batch, 8, h, w).contiguous(
            memory_format=torch.channels_last), scale_factor=2.0, mode="bilinear", align_corners=False)
        assert torch.equal(up, ref)
