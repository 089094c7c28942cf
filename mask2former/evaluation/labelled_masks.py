"""Write classified masks: COCO instance results (one entry per given mask, in input order, with its id) and
COCO panoptic segmentations (overlaps resolved by score).

Class ids: ``class_probs`` columns are the model's contiguous ids (K classes + "no object" last); the files
carry the dataset's ids, from the metadata's ``thing/stuff_dataset_id_to_contiguous_id``.
"""
from typing import Any, Dict, List, Sequence

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["contiguous_to_dataset_ids", "coco_instance_records", "panoptic_segmentation"]


def contiguous_to_dataset_ids(metadata, num_classes: int) -> Dict[int, int]:
    """contiguous id -> dataset id (identity + 1 where the metadata has no maps, as COCO's 1-based ids)."""
    mapping = {}
    for key in ("stuff_dataset_id_to_contiguous_id", "thing_dataset_id_to_contiguous_id"):
        for dataset_id, contiguous in (metadata.get(key, None) or {}).items():
            mapping[int(contiguous)] = int(dataset_id)
    return {c: mapping.get(c, c + 1) for c in range(num_classes)}


def coco_instance_records(image_id, ids: Sequence[Any], masks: np.ndarray, class_probs: np.ndarray,
                          dataset_ids: Dict[int, int], extra: Sequence[dict] = ()) -> List[dict]:
    """COCO results entries, one per given mask in order.

    Args:
        masks: (P, H, W) bool; class_probs: (P, K+1) probabilities; extra: per mask, fields to carry over
            (e.g. SAM's predicted_iou), written under "sam".
    Each entry has "id" (the given mask's id), "image_id", "category_id" (the best of the K classes), "score"
    (its probability), "no_object_score", "segmentation" (RLE), "area", "bbox" (XYWH).
    """
    records = []
    for i, (mask_id, mask, probs) in enumerate(zip(ids, masks, class_probs)):
        c = int(np.argmax(probs[:-1]))
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        rec = {
            "id": mask_id,
            "image_id": image_id,
            "category_id": dataset_ids[c],
            "score": float(probs[c]),
            "no_object_score": float(probs[-1]),
            "segmentation": rle,
            "area": int(mask.sum()),
            "bbox": [float(v) for v in mask_util.toBbox(rle)],
        }
        if i < len(extra) and extra[i]:
            rec["sam"] = extra[i]
        records.append(rec)
    return records


def panoptic_segmentation(masks: np.ndarray, class_probs: np.ndarray, thing_classes: Sequence[int],
                          dataset_ids: Dict[int, int], ids: Sequence[Any] = (), min_score: float = 0.0,
                          min_visible: float = 0.0):
    """A panoptic segmentation from classified masks.

    A mask whose most probable class is "no object", or whose score is below ``min_score``, is left out. The
    rest are painted from the lowest score to the highest, so a pixel covered by several masks goes to the
    highest-scoring one; a mask left with less than ``min_visible`` of its area is dropped; the masks of one
    stuff class form one segment.

    Returns:
        (H, W) int32 segment ids (0 = none) and segments_info (COCO panoptic: "id", "category_id", "isthing",
        "area", "score", plus "mask_ids", the ids of the given masks that make up the segment).
    """
    ids = list(ids) if len(ids) else list(range(len(masks)))
    h, w = masks.shape[1:] if len(masks) else (0, 0)
    owner = np.full((h, w), -1, dtype=np.int64)
    labels = class_probs.argmax(1) if len(class_probs) else np.zeros(0, dtype=np.int64)
    num_classes = class_probs.shape[1] - 1
    scores = class_probs[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    keep = [i for i in range(len(masks)) if labels[i] < num_classes and scores[i] >= min_score]
    for i in sorted(keep, key=lambda i: scores[i]):
        owner[masks[i]] = i
    things = set(int(t) for t in thing_classes)
    seg = np.zeros((h, w), dtype=np.int32)
    segments, stuff_segment = [], {}
    for i in sorted(keep, key=lambda i: -scores[i]):
        visible = owner == i
        area = int(visible.sum())
        if area == 0 or area < min_visible * masks[i].sum():
            continue
        c = int(labels[i])
        if c not in things and c in stuff_segment:
            s = stuff_segment[c]
            seg[visible] = s["id"]
            s["area"] += area
            s["mask_ids"].append(ids[i])
            continue
        s = {"id": len(segments) + 1, "category_id": dataset_ids[c], "isthing": c in things, "area": area,
             "score": float(scores[i]), "mask_ids": [ids[i]]}
        seg[visible] = s["id"]
        segments.append(s)
        if c not in things:
            stuff_segment[c] = s
    return seg, segments
