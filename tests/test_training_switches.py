"""The training switches MODEL.MASK_FORMER.QUERY_SELECTION, DN.* and ONE_TO_MANY.*: off they change nothing, on
they train, and the training-only query groups never reach inference or the matching queries."""
import copy

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from mask2former import add_maskformer2_config
from mask2former.modeling.matcher import HungarianMatcher
from mask2former.modeling.transformer_decoder.mask2former_transformer_decoder import attention_mask_from_masks
from mask2former.modeling.transformer_decoder.query_groups import (
    denoising_queries,
    mask_boxes,
    noised_masks,
    self_attention_mask,
)
from test_model import _batch, tiny_cfg
from test_training_e2e import data_root, tiny_cfg as e2e_cfg, train  # noqa: F401  (data_root is a fixture)

QS = {"MODEL.MASK_FORMER.QUERY_SELECTION": True}
DN = {"MODEL.MASK_FORMER.DN.NUM_GROUPS": 3}
O2M = {"MODEL.MASK_FORMER.ONE_TO_MANY.NUM_QUERIES": 10, "MODEL.MASK_FORMER.ONE_TO_MANY.K": 3}
ALL = {**QS, **DN, **O2M}
NEW_PARAMS = ("query_select_proj", "dn_label_embed", "o2m_query")


def _model(**overrides):
    torch.manual_seed(0)
    return build_model(tiny_cfg(**overrides))


def test_defaults_are_off_and_add_nothing():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    mf = cfg.MODEL.MASK_FORMER
    assert not mf.QUERY_SELECTION and mf.DN.NUM_GROUPS == 0 and mf.ONE_TO_MANY.NUM_QUERIES == 0
    model = _model()
    assert not any(p in k for k in model.state_dict() for p in NEW_PARAMS)
    assert not any(k.endswith(("_dn", "_o2m")) or "_dn_" in k or "_o2m_" in k for k in model.criterion.weight_dict)
    losses = model.train()(_batch())
    assert sorted(losses) == sorted(model.criterion.weight_dict)  # the 12 official losses, nothing else
    outputs = model.sem_seg_head(model.backbone(torch.zeros(2, 3, 64, 64)))
    assert set(outputs) == {"pred_logits", "pred_masks", "aux_outputs"}


@pytest.mark.parametrize("switch", [DN, O2M, {**DN, **O2M}], ids=["dn", "o2m", "dn+o2m"])
def test_extra_groups_leave_the_matching_queries_unchanged(switch):
    """The self-attention mask hides the denoising and one-to-many queries from the matching queries: in
    training their predictions equal those of the model without the groups (same weights), and in inference
    the outputs are exactly the plain model's (the groups do not exist there)."""
    on, off = _model(**switch), _model()
    missing, unexpected = off.load_state_dict(on.state_dict(), strict=False)
    assert not missing and unexpected and all(any(p in k for p in NEW_PARAMS) for k in unexpected)
    on.train(), off.train()
    images = torch.randn(2, 3, 64, 64)
    targets = on.prepare_targets([x["instances"] for x in _batch()], on.preprocess_image(_batch()))
    out_on = on.sem_seg_head(on.backbone(images), targets=targets)
    out_off = off.sem_seg_head(off.backbone(images), targets=targets)
    q = on.num_queries
    assert out_on["pred_logits"].shape[1] == q and out_on["pred_masks"].shape[1] == q
    for a, b in zip([out_on] + out_on["aux_outputs"], [out_off] + out_off["aux_outputs"]):
        torch.testing.assert_close(a["pred_logits"], b["pred_logits"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a["pred_masks"], b["pred_masks"], atol=1e-4, rtol=1e-5)
    if "DN" in str(switch):
        dn = out_on["dn_outputs"]
        assert dn["pred_logits"].shape[1] == 3 * 2  # 3 groups of the 2 targets of each image
        assert dn["aux_outputs"][0] is None and len(dn["aux_outputs"]) == len(out_on["aux_outputs"])
    if "ONE_TO_MANY" in str(switch):
        assert out_on["o2m_outputs"]["pred_logits"].shape[1] == 10

    on.eval(), off.eval()
    batch = [{"image": x["image"]} for x in _batch()]
    with torch.no_grad():
        raw_on = on.sem_seg_head(on.backbone(images))
        raw_off = off.sem_seg_head(off.backbone(images))
        res_on, res_off = on(batch), off(batch)
    assert set(raw_on) == {"pred_logits", "pred_masks", "aux_outputs"}
    assert torch.equal(raw_on["pred_logits"], raw_off["pred_logits"])
    assert torch.equal(raw_on["pred_masks"], raw_off["pred_masks"])
    for r_on, r_off in zip(res_on, res_off):
        assert torch.equal(r_on["sem_seg"], r_off["sem_seg"])
        assert len(r_on["instances"]) == len(r_off["instances"])
        assert torch.equal(r_on["instances"].scores, r_off["instances"].scores)


@pytest.mark.parametrize("switch", [QS, DN, O2M, ALL], ids=["query_selection", "dn", "o2m", "all"])
def test_each_switch_trains(switch):
    model = _model(**switch).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = _batch()
    first = None
    for step in range(12):
        losses = model(copy.deepcopy(batch))
        assert all(torch.isfinite(v) for v in losses.values())
        loss = sum(losses.values())
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        if step == 0:
            new = {n: p.grad for n, p in model.named_parameters() if any(k in n for k in NEW_PARAMS)}
            assert new and all(g is not None and g.abs().sum() > 0 for g in new.values()), sorted(new)
        opt.step()
    assert loss.item() < 0.8 * first
    expected = set(model.criterion.weight_dict)
    assert set(losses) == expected
    if "DN" in str(switch):
        assert {"loss_ce_dn", "loss_mask_dn_2"} <= expected and "loss_ce_dn_0" not in expected
    if "ONE_TO_MANY" in str(switch):
        assert {"loss_dice_o2m", "loss_dice_o2m_0"} <= expected
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])[0]
    assert out["sem_seg"].shape == (5, 64, 64) and len(out["instances"]) <= model.num_queries * 5


def test_one_to_many_weight_scales_its_losses():
    model = _model(**O2M, **{"MODEL.MASK_FORMER.ONE_TO_MANY.WEIGHT": 0.5})
    w = model.criterion.weight_dict
    assert w["loss_mask_o2m"] == 0.5 * w["loss_mask"] and w["loss_ce_o2m_1"] == 0.5 * w["loss_ce_1"]
    assert model.criterion.o2m_repeats == 3


def test_query_selection_takes_the_top_scoring_tokens():
    model = _model(**QS).eval()
    dec = model.sem_seg_head.predictor
    assert not hasattr(dec, "query_feat") and not hasattr(dec, "query_embed")
    c = 32
    src = [torch.randn(4, 1, c), torch.randn(9, 1, c)]
    pos = [torch.randn(4, 1, c), torch.randn(9, 1, c)]
    selected, query_pos = dec.select_queries(src, pos, 6)
    assert selected.shape == (6, 1, c) and query_pos.shape == (6, 1, c)
    feats = dec.query_select_proj(torch.cat(src))
    scores = dec.class_embed(dec.decoder_norm(feats)).softmax(-1)[..., :-1].amax(-1)[:, 0]
    top = scores.topk(6).indices
    torch.testing.assert_close(selected[:, 0], feats[top, 0])
    torch.testing.assert_close(query_pos[:, 0], torch.cat(pos)[top, 0])
    with pytest.raises(ValueError, match="QUERY_SELECTION"):
        dec.select_queries(src, pos, 14)
    with pytest.raises(ValueError, match="DEEP_SUPERVISION"):
        build_model(tiny_cfg(**QS, **{"MODEL.MASK_FORMER.DEEP_SUPERVISION": False}))


def test_self_attention_mask_keeps_groups_apart():
    m, groups, q, o2m = 2, 3, 4, 5
    mask = self_attention_mask(groups * m, groups, q, o2m, "cpu")
    assert mask.shape == (groups * m + q + o2m,) * 2 and mask.dtype == torch.bool
    dn, o2o, many = slice(0, 6), slice(6, 10), slice(10, 15)
    assert mask[o2o, dn].all() and mask[o2o, many].all() and not mask[o2o, o2o].any()
    assert mask[many, dn].all() and mask[many, o2o].all() and not mask[many, many].any()
    assert not mask[dn, o2o].any() and mask[dn, many].all()
    for g in range(groups):
        own = slice(g * m, (g + 1) * m)
        assert not mask[own, own].any()
        assert mask[own, dn].sum() == (groups - 1) * m * m  # every other group is hidden
    assert not self_attention_mask(0, 0, q, o2m, "cpu")[:q, :q].any()


def test_denoising_queries_start_from_their_noised_targets():
    """Without noise a denoising query's first attention mask is its target's mask; padding slots (an image
    with fewer targets) attend everywhere and carry no loss."""
    model = _model(**DN, **{"MODEL.MASK_FORMER.DN.MASK_NOISE": 0.0, "MODEL.MASK_FORMER.DN.LABEL_NOISE": 0.0})
    batch = _batch()
    batch[1]["instances"] = batch[1]["instances"][:1]  # image 1: one target, one padding slot per group
    captured = {}
    layer = model.sem_seg_head.predictor.transformer_cross_attention_layers[0]
    layer.register_forward_pre_hook(lambda mod, args, kw: captured.update(kw), with_kwargs=True)
    model.train()
    images = model.preprocess_image(batch)
    targets = model.prepare_targets([x["instances"] for x in batch], images)
    features = model.backbone(images.tensor)
    out = model.sem_seg_head(features, targets=targets)
    heads, groups, q = 4, 3, model.num_queries
    memory_mask = captured["memory_mask"]
    mask_size = out["pred_masks"].shape[-2:]
    hw_size = model.sem_seg_head.pixel_decoder.forward_features(features)[2][0].shape[-2:]
    assert memory_mask.shape == (2 * heads, groups * 2 + q, hw_size.numel())
    dn_mask = memory_mask.view(2, heads, groups * 2 + q, -1)[:, :, :groups * 2]
    for b, t in enumerate(targets):
        gt = torch.nn.functional.interpolate(t["masks"][:, None].float(), size=mask_size, mode="bilinear",
                                             align_corners=False)[:, 0]
        expected = attention_mask_from_masks(gt[None] * 2 - 1, hw_size, heads).view(heads, len(gt), -1)
        for g in range(groups):
            assert torch.equal(dn_mask[b, :, g * 2:g * 2 + len(gt)], expected)
    assert not dn_mask[1, :, 1::2].any()  # padding slots of image 1
    valid = out["dn_outputs"]["query_valid"]
    assert valid[0].all() and valid[1].tolist() == [True, False] * groups
    assert [idx[1].tolist() for idx in out["dn_outputs"]["indices"]] == [[0, 1] * groups, [0] * groups]
    assert [idx[0].tolist() for idx in out["dn_outputs"]["indices"]] == [[0, 1, 2, 3, 4, 5], [0, 2, 4]]
    # Without label noise the denoising labels are the targets' labels (padding: the extra index K).
    labels = denoising_queries(targets, groups, 5, 0.0, 0.0, mask_size)[0]
    assert labels[0].tolist() == [1, 3] * groups and labels[1].tolist() == [1, 5] * groups
    with pytest.raises(ValueError, match="DN.NUM_GROUPS"):
        model.sem_seg_head(features)
    # A batch without any target has nothing to denoise (and no empty loss).
    empty = [{"labels": t["labels"][:0], "masks": t["masks"][:0]} for t in targets]
    assert "dn_outputs" not in model.sem_seg_head(features, targets=empty)


def test_noised_masks_move_and_rescale_within_the_noise():
    masks = torch.zeros(50, 64, 64)
    masks[:, 20:40, 10:30] = 1  # box 20 x 20, centre (20, 30)
    assert torch.equal(noised_masks(masks, 0.0), masks)
    torch.manual_seed(0)
    noised = noised_masks(masks, 0.4) > 0.5
    boxes = mask_boxes(noised)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    assert (w >= 20 * 0.6 - 2).all() and (w <= 20 * 1.4 + 2).all() and (h >= 12 - 2).all() and (h <= 28 + 2).all()
    assert ((cx - 20).abs() <= 0.4 * 10 + 1).all() and ((cy - 30).abs() <= 0.4 * 10 + 1).all()
    assert w.std() > 1 and cx.std() > 1  # it does vary
    assert torch.equal(mask_boxes(torch.zeros(1, 8, 8, dtype=torch.bool)), torch.zeros(1, 4))


def test_one_to_many_matching_repeats_the_targets():
    matcher = HungarianMatcher(cost_class=1, cost_mask=1, cost_dice=1, num_points=64)
    torch.manual_seed(0)
    outputs = {"pred_logits": torch.randn(1, 10, 4), "pred_masks": torch.randn(1, 10, 8, 8)}
    targets = [{"labels": torch.tensor([0, 2]), "masks": (torch.rand(2, 8, 8) > 0.5).float()}]
    rows, cols = matcher(outputs, targets, repeats=3)[0]
    assert len(rows) == 6 and len(set(rows.tolist())) == 6
    assert sorted(cols.tolist()) == [0, 0, 0, 1, 1, 1]
    rows, cols = matcher(outputs, targets, repeats=8)[0]  # more repeats than queries: every query matched
    assert len(rows) == 10 and set(cols.tolist()) == {0, 1}


def test_video_decoder_refuses_the_switches():
    for key, value in [("MODEL.MASK_FORMER.QUERY_SELECTION", True), ("MODEL.MASK_FORMER.DN.NUM_GROUPS", 2),
                       ("MODEL.MASK_FORMER.ONE_TO_MANY.NUM_QUERIES", 4)]:
        cfg = tiny_cfg(**{"MODEL.META_ARCHITECTURE": "VideoMaskFormer",
                          "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "VideoMultiScaleMaskedTransformerDecoder",
                          key: value})
        with pytest.raises(ValueError, match=key.replace("MODEL.MASK_FORMER.", "").replace(".", r"\.")):
            build_model(cfg)


def test_all_switches_train_and_evaluate_with_the_trainer(data_root, tmp_path):  # noqa: F811
    """The real trainer, mapper and evaluators on generated shapes-world data, all three switches on."""
    cfg = e2e_cfg(tmp_path, **{"SOLVER.MAX_ITER": 12, "TEST.AUG.ENABLED": False,
                               "MODEL.MASK_FORMER.QUERY_SELECTION": True, "MODEL.MASK_FORMER.DN.NUM_GROUPS": 2,
                               "MODEL.MASK_FORMER.ONE_TO_MANY.NUM_QUERIES": 24})
    results = train(cfg)
    assert {"panoptic_seg", "segm", "sem_seg"} <= set(results)
