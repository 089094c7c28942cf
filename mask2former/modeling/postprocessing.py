"""Turn one image's query predictions into semantic, panoptic and instance results (Mask2Former, Sec. 4.4).

The ``*_inference`` functions take ``mask_cls`` (Q, K+1) class logits (the last class is "no object") and
``mask_pred`` (Q, H, W) mask logits of one image, either at the resolution of the result or, with ``upsample``
(a :class:`MaskUpsampler`), at the decoder's: then a task upsamples only the queries it keeps.
"""
import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances


def resize_to_output(x, image_size, height, width):
    """(C, H', W') at the padded input size -> (C, height, width): detectron2's ``sem_seg_postprocess`` (crop to
    the unpadded ``image_size``, bilinear resize), or ``x`` itself when it already is the unpadded image at the
    output size (the resize would copy it unchanged; test-time augmentation passes such tensors)."""
    if tuple(x.shape[-2:]) == tuple(image_size) == (height, width):
        return x
    return sem_seg_postprocess(x, image_size, height, width)


class MaskUpsampler:
    """(n, h, w) mask logits of any subset of queries -> (n, H, W) at the resolution results are wanted at.

    Bilinear resizing treats each query on its own, so upsampling only the queries a task keeps gives exactly
    those rows of the upsampled set (and skips the work for the others).

    Args:
        padded_size: (H', W') the padded input size the decoder's masks are first upsampled to (as the
            official code does); None if they already are at it.
        image_size, output_size: then crop to the unpadded ``image_size`` and resize to ``output_size``
            (:func:`resize_to_output`); None to stop at the padded size.
    """

    def __init__(self, padded_size=None, image_size=None, output_size=None):
        self.padded_size = tuple(padded_size) if padded_size is not None else None
        self.image_size = tuple(image_size) if image_size is not None else None
        self.output_size = tuple(output_size) if output_size is not None else None

    def __call__(self, x):
        out_size = self.output_size or self.padded_size or tuple(x.shape[-2:])
        if x.shape[0] == 0:  # F.interpolate rejects an empty batch
            return x.new_zeros((0, *out_size))
        if self.padded_size is not None and tuple(x.shape[-2:]) != self.padded_size:
            x = F.interpolate(x[None], size=self.padded_size, mode="bilinear", align_corners=False)[0]
        if self.output_size is not None:
            x = resize_to_output(x, self.image_size, *self.output_size)
        return x


def semantic_inference(mask_cls, mask_pred):
    """-> (K, H, W): per-class score, sum over queries of class probability x mask probability."""
    mask_cls = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", mask_cls, mask_pred.sigmoid())


def panoptic_inference(mask_cls, mask_pred, *, thing_ids, object_mask_threshold, overlap_threshold,
                       upsample=None):
    """Assign each pixel to the query with the highest score x mask probability.

    Queries predicting "no object" or scoring <= ``object_mask_threshold`` are dropped; a segment whose
    visible part is smaller than ``overlap_threshold`` of its own mask (prob >= 0.5) is dropped; segments of
    the same stuff class are merged.

    Args:
        thing_ids: the contiguous ids of thing classes.
        upsample: if given, applied to the kept queries' mask logits only (see the module docstring).
    Returns:
        panoptic_seg (H, W) int32 with 0 = void, segments_info list of {"id", "isthing", "category_id"}.
    """
    thing_ids = set(int(i) for i in thing_ids)
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
    if upsample is not None:
        cur_masks = upsample(cur_masks)
    cur_masks = cur_masks.sigmoid()
    h, w = cur_masks.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=cur_masks.device)
    segments_info = []
    num_kept = cur_masks.shape[0]
    if num_kept == 0:
        return panoptic_seg, segments_info

    cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    # A pixel belongs to segment k if k wins it and k's own mask covers it; segments are disjoint, so one
    # lookup paints them all. The per-segment areas cross to the host in one transfer.
    covered = cur_masks.gather(0, cur_mask_ids[None])[0] >= 0.5
    mask_area = torch.bincount(cur_mask_ids.flatten(), minlength=num_kept)
    original_area = (cur_masks >= 0.5).flatten(1).sum(1)
    visible_area = torch.bincount(cur_mask_ids[covered], minlength=num_kept)
    stats = torch.stack([cur_classes, mask_area, original_area, visible_area], 1).tolist()
    segment_of_query = [0] * num_kept  # 0 = dropped
    stuff_segment_ids = {}
    current_segment_id = 0
    for k, (pred_class, mask_area_k, original_area_k, visible_area_k) in enumerate(stats):
        isthing = pred_class in thing_ids
        if mask_area_k == 0 or original_area_k == 0 or visible_area_k == 0:
            continue
        if mask_area_k / original_area_k < overlap_threshold:
            continue
        if not isthing:
            if pred_class in stuff_segment_ids:  # merge regions of the same stuff class
                segment_of_query[k] = stuff_segment_ids[pred_class]
                continue
            stuff_segment_ids[pred_class] = current_segment_id + 1
        current_segment_id += 1
        segment_of_query[k] = current_segment_id
        segments_info.append({"id": current_segment_id, "isthing": bool(isthing), "category_id": pred_class})
    segment_of_query = torch.tensor(segment_of_query, dtype=torch.int32, device=panoptic_seg.device)
    panoptic_seg = torch.where(covered, segment_of_query[cur_mask_ids], panoptic_seg)
    return panoptic_seg, segments_info


def masks_to_boxes(masks):
    """(N, H, W) bool -> Boxes (N, 4) XYXY enclosing each mask (pixel edges); all zeros for an empty mask."""
    n, h, w = masks.shape
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    if n == 0:
        return Boxes(boxes)
    # max over bytes is much faster than any() over bools on the CPU
    as_bytes = masks.to(torch.bool).view(torch.uint8)
    x_any, y_any = as_bytes.amax(1).bool(), as_bytes.amax(2).bool()  # (N, W), (N, H)
    nonempty = x_any.any(1)
    # argmax on int returns the first maximal index: the first True from either side.
    x0 = x_any.int().argmax(1)
    x1 = w - x_any.flip(1).int().argmax(1)
    y0 = y_any.int().argmax(1)
    y1 = h - y_any.flip(1).int().argmax(1)
    boxes[nonempty] = torch.stack([x0, y0, x1, y1], 1)[nonempty].float()
    return Boxes(boxes)


def instance_inference(mask_cls, mask_pred, *, topk, thing_ids=None, score_threshold=0.0, nms_threshold=1.0,
                       upsample=None):
    """Every (query, class) pair is a candidate; keep the ``topk`` highest class probabilities.

    Args:
        topk: number of detections to keep (clamped to queries x classes).
        thing_ids: if given, candidates of other (stuff) classes are dropped after the top-k.
        score_threshold: drop detections whose final score is below this.
        nms_threshold: ours; drop a detection whose mask IoU with a higher-scoring one of the same class
            exceeds this (:func:`mask_nms`); 1.0 (the default) keeps all, as official.
        upsample: if given, applied to the selected queries' mask logits only (see the module docstring).
    Returns:
        Instances with pred_masks (N, H, W) bool, pred_boxes (boxes of the masks), scores (class probability
        x mean mask probability inside the mask), pred_classes.
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    k = min(topk, scores.numel())
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(k, sorted=False)
    labels_per_image = labels[topk_indices]
    query_per_image = torch.div(topk_indices, num_classes, rounding_mode="floor")
    if thing_ids is not None:
        thing_ids = torch.as_tensor(sorted(int(i) for i in thing_ids), device=labels.device)
        keep = torch.isin(labels_per_image, thing_ids)
        scores_per_image, labels_per_image, query_per_image = (
            scores_per_image[keep], labels_per_image[keep], query_per_image[keep])

    # A query picked with several classes has one mask: compute it, its score and its box once.
    queries, candidate_mask = torch.unique(query_per_image, return_inverse=True)
    logits = mask_pred if len(queries) == len(mask_pred) else mask_pred[queries]  # all of them: no copy
    if upsample is not None:
        logits = upsample(logits)
    masks = logits > 0
    # The probabilities inside each mask (sigmoid(-inf) = 0 outside), summed; then, in place, its area (ceil
    # maps (0, 1] to 1): the same float sums as over a 0/1 mask, in fewer passes over the full-size masks.
    probs = F.threshold(logits, 0.0, float("-inf")).sigmoid_().flatten(1)
    prob_sum = probs.sum(1)
    mask_scores = prob_sum / (probs.ceil_().sum(1) + 1e-6)
    final_scores = scores_per_image * mask_scores[candidate_mask]
    if score_threshold > 0:
        keep = final_scores >= score_threshold
        candidate_mask, final_scores, labels_per_image = (
            candidate_mask[keep], final_scores[keep], labels_per_image[keep])
    if nms_threshold < 1.0:
        keep = mask_nms(masks[candidate_mask], final_scores, labels_per_image, nms_threshold)
        candidate_mask, final_scores, labels_per_image = (
            candidate_mask[keep], final_scores[keep], labels_per_image[keep])

    result = Instances(tuple(masks.shape[-2:]))
    result.pred_masks = masks[candidate_mask]
    result.pred_boxes = Boxes(masks_to_boxes(masks).tensor[candidate_mask])
    result.scores = final_scores
    result.pred_classes = labels_per_image
    return result


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression by mask IoU, within each class.

    In score order, a detection is dropped if its mask overlaps a kept detection of the same class with an IoU
    above ``iou_threshold``. Empty masks overlap nothing and are kept.

    Args:
        masks: (N, H, W) binary masks (bool or 0/1).
        scores: (N,) detection scores.
        labels: (N,) class indices.
        iou_threshold: in [0, 1].

    Returns:
        (M,) int64 indices of the kept detections, highest score first.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"mask_nms: iou_threshold must lie in [0, 1], got {iou_threshold}")
    if masks.dim() != 3 or scores.shape != masks.shape[:1] or labels.shape != masks.shape[:1]:
        raise ValueError(
            f"mask_nms: expected masks (N, H, W) with (N,) scores and labels, got {tuple(masks.shape)}, "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    order = scores.argsort(descending=True)
    keep = torch.zeros(masks.shape[0], dtype=torch.bool, device=masks.device)
    for label in labels.unique():
        idx = order[labels[order] == label]  # this class, highest score first
        flat = masks[idx].flatten(1).float()
        inter = flat @ flat.T
        area = flat.sum(1)
        iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)
        suppressed = torch.zeros(len(idx), dtype=torch.bool, device=masks.device)
        for i in range(len(idx)):
            if suppressed[i]:
                continue
            keep[idx[i]] = True
            suppressed |= iou[i] > iou_threshold
    return order[keep[order]]
