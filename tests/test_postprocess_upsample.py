"""Post-processing from the decoder's low-resolution masks (each task upsamples only what it keeps) gives
exactly the results of upsampling every query first, as the official code does."""
import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess

from mask2former.modeling.postprocessing import (MaskUpsampler, instance_inference, panoptic_inference,
                                                 semantic_inference)

PADDED, IMAGE, OUTPUT = (64, 96), (50, 70), (101, 139)  # odd output size: vector tails differ from the body


def full_resolution(mask_pred):
    """The official order: every query to the padded size, then crop and resize to the output size."""
    padded = F.interpolate(mask_pred[None], size=PADDED, mode="bilinear", align_corners=False)[0]
    return sem_seg_postprocess(padded, IMAGE, *OUTPUT)


def predictions(num_queries=12, num_classes=7, seed=0, sharp=4.0):
    g = torch.Generator().manual_seed(seed)
    mask_cls = torch.randn(num_queries, num_classes + 1, generator=g) * sharp
    mask_pred = torch.randn(num_queries, PADDED[0] // 4, PADDED[1] // 4, generator=g) * 3
    return mask_cls, mask_pred


def test_upsampling_a_subset_gives_those_rows_of_the_upsampled_set():
    _, mask_pred = predictions()
    upsample = MaskUpsampler(PADDED, IMAGE, OUTPUT)
    full = full_resolution(mask_pred)
    for index in (torch.tensor([3]), torch.tensor([7, 0, 5]), torch.arange(12)):
        assert torch.equal(upsample(mask_pred[index]), full[index])
    assert upsample(mask_pred[:0]).shape == (0, *OUTPUT)
    assert MaskUpsampler(PADDED)(mask_pred).shape == (12, *PADDED)


def test_panoptic_from_low_resolution_is_identical():
    thing_ids = [0, 2, 3]
    for seed in range(4):
        mask_cls, mask_pred = predictions(seed=seed)
        full = full_resolution(mask_pred)
        for threshold in (0.0, 0.5, 0.999):  # many, some and (for the last) no kept queries
            kwargs = dict(thing_ids=thing_ids, object_mask_threshold=threshold, overlap_threshold=0.3)
            ref_seg, ref_info = panoptic_inference(mask_cls, full, **kwargs)
            seg, info = panoptic_inference(mask_cls, mask_pred, upsample=MaskUpsampler(PADDED, IMAGE, OUTPUT),
                                           **kwargs)
            assert seg.dtype == torch.int32 and seg.shape == OUTPUT
            assert torch.equal(seg, ref_seg) and info == ref_info


def test_panoptic_merges_stuff_and_drops_occluded_segments():
    # three queries: two of stuff class 1 (merged into one segment), one thing of class 0 hidden under them
    mask_cls = torch.full((3, 3), -10.0)
    mask_cls[0, 1] = mask_cls[1, 1] = mask_cls[2, 0] = 10.0
    mask_pred = torch.full((3, 4, 4), -10.0)
    mask_pred[0, :2] = mask_pred[1, 2:] = 10.0
    mask_pred[2, :1, :1] = 5.0  # inside query 0's mask, which scores higher there
    seg, info = panoptic_inference(mask_cls, mask_pred, thing_ids=[0], object_mask_threshold=0.5,
                                   overlap_threshold=0.8)
    assert info == [{"id": 1, "isthing": False, "category_id": 1}]
    assert torch.equal(seg, torch.ones(4, 4, dtype=torch.int32))


def test_instance_from_low_resolution_is_identical():
    for seed in range(3):
        mask_cls, mask_pred = predictions(seed=seed, sharp=1.0)
        full = full_resolution(mask_pred)
        for kwargs in ({"topk": 20}, {"topk": 20, "thing_ids": [1, 4]}, {"topk": 5, "score_threshold": 0.05},
                       {"topk": 30, "nms_threshold": 0.5}, {"topk": 100}):
            ref = instance_inference(mask_cls, full, **kwargs)
            ours = instance_inference(mask_cls, mask_pred, upsample=MaskUpsampler(PADDED, IMAGE, OUTPUT), **kwargs)
            assert ours.image_size == ref.image_size == OUTPUT
            assert torch.equal(ours.scores, ref.scores) and torch.equal(ours.pred_classes, ref.pred_classes)
            assert torch.equal(ours.pred_masks, ref.pred_masks) and ours.pred_masks.dtype == torch.bool
            assert torch.equal(ours.pred_boxes.tensor, ref.pred_boxes.tensor)


def test_instance_scores_are_mean_mask_probability_inside_the_mask():
    mask_cls, mask_pred = predictions(sharp=1.0)
    inst = instance_inference(mask_cls, mask_pred, topk=10)
    probs = F.softmax(mask_cls, -1)[:, :-1]
    for score, cls, mask in zip(inst.scores, inst.pred_classes, inst.pred_masks):
        # the detection's query: the one whose thresholded mask is this one and that predicts this class
        candidates = [q for q in range(len(mask_pred)) if torch.equal(mask_pred[q] > 0, mask)]
        expected = [probs[q, cls] * mask_pred[q].sigmoid()[mask].sum() / (mask.sum() + 1e-6) for q in candidates]
        assert any(torch.allclose(score, e, rtol=1e-5, atol=0) for e in expected)


def test_semantic_keeps_the_official_order():
    mask_cls, mask_pred = predictions()
    full = full_resolution(mask_pred)
    assert torch.equal(semantic_inference(mask_cls, full),
                       torch.einsum("qc,qhw->chw", F.softmax(mask_cls, -1)[:, :-1], full.sigmoid()))
