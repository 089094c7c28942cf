"""Turn one image's query predictions into semantic, panoptic and instance results (Mask2Former, Sec. 4.4).

The ``*_inference`` functions take ``mask_cls`` (Q, K+1) class logits (the last class is "no object") and
``mask_pred`` (Q, H, W) mask logits of one image.
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


def semantic_inference(mask_cls, mask_pred):
    """-> (K, H, W): per-class score, sum over queries of class probability x mask probability."""
    mask_cls = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", mask_cls, mask_pred.sigmoid())


def panoptic_inference(mask_cls, mask_pred, *, thing_ids, object_mask_threshold, overlap_threshold):
    """Assign each pixel to the query with the highest score x mask probability.

    Queries predicting "no object" or scoring <= ``object_mask_threshold`` are dropped; a segment whose
    visible part is smaller than ``overlap_threshold`` of its own mask (prob >= 0.5) is dropped; segments of
    the same stuff class are merged.

    Args:
        thing_ids: the contiguous ids of thing classes.
    Returns:
        panoptic_seg (H, W) int32 with 0 = void, segments_info list of {"id", "isthing", "category_id"}.
    """
    thing_ids = set(int(i) for i in thing_ids)
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    mask_pred = mask_pred.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
    h, w = cur_masks.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=cur_masks.device)
    segments_info = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    stuff_segment_ids = {}
    current_segment_id = 0
    for k in range(cur_classes.shape[0]):
        pred_class = int(cur_classes[k].item())
        isthing = pred_class in thing_ids
        mask_area = (cur_mask_ids == k).sum().item()
        original_area = (cur_masks[k] >= 0.5).sum().item()
        mask = (cur_mask_ids == k) & (cur_masks[k] >= 0.5)
        if mask_area == 0 or original_area == 0 or mask.sum().item() == 0:
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not isthing:
            if pred_class in stuff_segment_ids:  # merge regions of the same stuff class
                panoptic_seg[mask] = stuff_segment_ids[pred_class]
                continue
            stuff_segment_ids[pred_class] = current_segment_id + 1
        current_segment_id += 1
        panoptic_seg[mask] = current_segment_id
        segments_info.append({"id": current_segment_id, "isthing": bool(isthing), "category_id": pred_class})
    return panoptic_seg, segments_info


def masks_to_boxes(masks):
    """(N, H, W) bool -> Boxes (N, 4) XYXY enclosing each mask (pixel edges); all zeros for an empty mask."""
    n, h, w = masks.shape
    boxes = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    if n == 0:
        return Boxes(boxes)
    x_any, y_any = masks.any(1), masks.any(2)  # (N, W), (N, H)
    nonempty = x_any.any(1)
    # argmax on int returns the first maximal index: the first True from either side.
    x0 = x_any.int().argmax(1)
    x1 = w - x_any.flip(1).int().argmax(1)
    y0 = y_any.int().argmax(1)
    y1 = h - y_any.flip(1).int().argmax(1)
    boxes[nonempty] = torch.stack([x0, y0, x1, y1], 1)[nonempty].float()
    return Boxes(boxes)


def instance_inference(mask_cls, mask_pred, *, topk, thing_ids=None, score_threshold=0.0, nms_threshold=1.0):
    """Every (query, class) pair is a candidate; keep the ``topk`` highest class probabilities.

    Args:
        topk: number of detections to keep (clamped to queries x classes).
        thing_ids: if given, candidates of other (stuff) classes are dropped after the top-k.
        score_threshold: drop detections whose final score is below this.
        nms_threshold: ours; drop a detection whose mask IoU with a higher-scoring one of the same class
            exceeds this (:func:`mask_nms`); 1.0 (the default) keeps all, as official.
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
    mask_pred = mask_pred[torch.div(topk_indices, num_classes, rounding_mode="floor")]
    if thing_ids is not None:
        thing_ids = torch.as_tensor(sorted(int(i) for i in thing_ids), device=labels.device)
        keep = torch.isin(labels_per_image, thing_ids)
        scores_per_image, labels_per_image, mask_pred = scores_per_image[keep], labels_per_image[keep], mask_pred[keep]

    masks = (mask_pred > 0).float()
    mask_scores = (mask_pred.sigmoid().flatten(1) * masks.flatten(1)).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    final_scores = scores_per_image * mask_scores
    if score_threshold > 0:
        keep = final_scores >= score_threshold
        masks, final_scores, labels_per_image = masks[keep], final_scores[keep], labels_per_image[keep]
    if nms_threshold < 1.0:
        keep = mask_nms(masks, final_scores, labels_per_image, nms_threshold)
        masks, final_scores, labels_per_image = masks[keep], final_scores[keep], labels_per_image[keep]

    result = Instances(tuple(mask_pred.shape[-2:]))
    result.pred_masks = masks.bool()
    result.pred_boxes = masks_to_boxes(result.pred_masks)
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
