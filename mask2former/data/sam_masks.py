"""Read class-agnostic masks as Segment Anything (SAM) gives them.

Two layouts are read:

- the automatic mask generator's output (``SamAutomaticMaskGenerator.generate``), a list of dicts, saved as
  JSON or passed in memory: ``segmentation`` is a binary (H, W) array (nested lists in JSON) or a COCO RLE
  ``{"size": [H, W], "counts": str or list}``, with ``area``, ``bbox`` (XYWH), ``predicted_iou``,
  ``stability_score``, ``point_coords`` and ``crop_box`` kept as given;
- SA-1B annotation files: ``{"image": {...}, "annotations": [{"id", "segmentation": RLE, ...}, ...]}``.

A mask's id is its ``id`` field when it has one, else its index in the file. Every problem (a mask of
another size than its image, an empty mask, an invalid RLE, a file in neither layout) raises
:class:`MaskInputError` naming the file and the mask's index, or, with ``skip_bad=True``, is recorded in
:attr:`GivenMasks.skipped` (index, id, reason) and counted: no mask is dropped silently.
"""
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["MaskInputError", "GivenMasks", "load_sam_json", "read_given_masks", "decode_segmentation"]

# The per-mask fields of SAM's output that are carried through to the outputs unchanged.
SAM_FIELDS = ("area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box")


class MaskInputError(ValueError):
    """A given mask (or mask file) that cannot be used; the message names the file and the mask index."""

    def __init__(self, problem: str, source: str, index: Optional[int] = None):
        self.problem, self.source, self.index = problem, source, index
        where = f"'{source}'" + ("" if index is None else f", mask {index}")
        super().__init__(f"{where}: {problem}")


@dataclass
class GivenMasks:
    """The usable masks of one image, in input order.

    masks: (P, H, W) bool; ids: (P,) the masks' ids; indices: their positions in the input; records: their
    input dicts without "segmentation"; skipped: (index, id, reason) of the masks left out with skip_bad.
    """

    masks: np.ndarray
    ids: List[Any]
    indices: List[int]
    records: List[Dict[str, Any]]
    skipped: List[Tuple[int, Any, str]] = field(default_factory=list)
    source: str = ""
    image_info: Optional[dict] = None


def _compressed_runs(text: str) -> List[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools decodes invalid strings without complaint:
    checking that the runs cover the image exactly is what catches a truncated or corrupted one)."""
    runs, p = [], 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("the 'counts' string ends inside a number")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {text[p]!r} cannot occur in a 'counts' string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def decode_segmentation(seg, image_hw: Tuple[int, int], source: str, index: int) -> np.ndarray:
    """One mask's ``segmentation`` (binary array / nested lists, or COCO RLE) as (H, W) bool; checks its size
    against the image's and that it is not empty."""
    h, w = image_hw
    if isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise MaskInputError(f"an RLE segmentation needs 'size' and 'counts', got keys {sorted(seg)}", source, index)
        size = seg["size"]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size)):
            raise MaskInputError(f"invalid RLE: 'size' must be [height, width], got {size!r}", source, index)
        counts = seg["counts"]
        try:
            if isinstance(counts, list):  # uncompressed RLE
                if sum(counts) != size[0] * size[1] or any(c < 0 for c in counts):
                    raise ValueError(f"its run lengths sum to {sum(counts)}, not height x width = {size[0] * size[1]}")
                rle = mask_util.frPyObjects({"size": list(size), "counts": counts}, size[0], size[1])
            elif isinstance(counts, (str, bytes)):
                text = counts.decode() if isinstance(counts, bytes) else counts
                runs = _compressed_runs(text)
                if any(c < 0 for c in runs) or sum(runs) != size[0] * size[1]:
                    raise ValueError(f"its run lengths sum to {sum(runs)}, not height x width = {size[0] * size[1]}")
                rle = {"size": list(size), "counts": text.encode()}
            else:
                raise ValueError(f"'counts' must be a string or a list of run lengths, got {type(counts).__name__}")
            mask = mask_util.decode(rle)
        except (ValueError, TypeError, OverflowError) as e:
            raise MaskInputError(f"invalid RLE ({e})", source, index) from None
        mask = mask.astype(bool)
    else:
        try:
            mask = np.asarray(seg)
        except Exception as e:  # ragged nested lists
            raise MaskInputError(f"segmentation is not a binary (H, W) array ({e})", source, index) from None
        if mask.ndim != 2 or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
            raise MaskInputError(f"segmentation must be a binary (H, W) array or a COCO RLE dict, got "
                                 f"{mask.dtype} of shape {mask.shape}", source, index)
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise MaskInputError("segmentation array has values other than 0 and 1", source, index)
        mask = mask.astype(bool)
    if mask.shape != (h, w):
        raise MaskInputError(f"the mask is {mask.shape[1]}x{mask.shape[0]} (width x height) but the image is "
                             f"{w}x{h}", source, index)
    if not mask.any():
        raise MaskInputError("the mask is empty", source, index)
    return mask


def load_sam_json(path: str) -> Tuple[List[dict], Optional[dict]]:
    """The mask records of a SAM JSON file and, for SA-1B files, its "image" dict (else None)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise MaskInputError(f"not a JSON file ({e})", path) from None
    return sam_records(data, path)


def sam_records(data, source: str) -> Tuple[List[dict], Optional[dict]]:
    """Check the layout of loaded SAM output; returns (records, image_info)."""
    image_info = None
    if isinstance(data, dict):
        if not isinstance(data.get("annotations"), list):
            raise MaskInputError("not SAM's format: expected a list of mask dicts (the automatic mask generator's "
                                 "output) or an SA-1B dict with 'image' and 'annotations', got a dict with keys "
                                 f"{sorted(data)[:8]}", source)
        image_info, records = data.get("image"), data["annotations"]
    elif isinstance(data, list):
        records = data
    else:
        raise MaskInputError(f"not SAM's format: expected a list of mask dicts or an SA-1B dict, got "
                             f"{type(data).__name__}", source)
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "segmentation" not in r:
            what = f"keys {sorted(r)[:8]}" if isinstance(r, dict) else type(r).__name__
            raise MaskInputError(f"not SAM's format: every mask needs a 'segmentation', got {what}", source, i)
    return records, image_info


def read_given_masks(records: Union[str, Sequence[dict], dict], image_hw: Tuple[int, int], source: str = "",
                     skip_bad: bool = False) -> GivenMasks:
    """Decode and check the masks of one image.

    Args:
        records: a SAM JSON path, the generator's list of dicts, or an SA-1B dict.
        image_hw: the image's (height, width).
        source: the name used in errors (default: the path, or "<masks>").
        skip_bad: record bad masks in ``skipped`` instead of raising.
    """
    if isinstance(records, (str, os.PathLike)):
        source = source or str(records)
        recs, image_info = load_sam_json(str(records))
    else:
        source = source or "<masks>"
        recs, image_info = sam_records(records, source)
    if image_info is not None and {"height", "width"} <= set(image_info):
        stated = (image_info["height"], image_info["width"])
        if tuple(stated) != tuple(image_hw):
            raise MaskInputError(f"the file's 'image' says {stated[1]}x{stated[0]} (width x height) but the image "
                                 f"is {image_hw[1]}x{image_hw[0]}", source)
    masks, ids, indices, kept, skipped = [], [], [], [], []
    for i, r in enumerate(recs):
        mask_id = r.get("id", i)
        try:
            masks.append(decode_segmentation(r["segmentation"], image_hw, source, i))
        except MaskInputError as e:
            if not skip_bad:
                raise
            skipped.append((i, mask_id, e.problem))
            continue
        ids.append(mask_id)
        indices.append(i)
        kept.append({k: v for k, v in r.items() if k != "segmentation"})
    stack = np.stack(masks) if masks else np.zeros((0,) + tuple(image_hw), dtype=bool)
    return GivenMasks(stack, ids, indices, kept, skipped, source, image_info)
