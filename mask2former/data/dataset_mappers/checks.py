"""
Validation of dataset items, and what happens to an item that fails it.

Every problem with one dataset item that would otherwise crash a data-loader worker deep inside PIL,
pycocotools or numpy (missing or corrupt image, label map of the wrong size or kind, invalid polygon or RLE,
category id outside ``[0, MODEL.SEM_SEG_HEAD.NUM_CLASSES)``, image size different from the one the dataset
or the annotation states) raises :class:`BadDatasetItemError`, naming the item's image file and the problem.

With ``DATALOADER.SKIP_BAD_ITEMS: True`` (default ``False``; read with a fallback, so configs without the
key work) a mapper instead logs a warning naming the file, counts the item in a counter shared with
DataLoader worker processes forked from the trainer, and returns ``None``: detectron2's ``MapDataset`` then
maps another, randomly chosen index. :func:`skipped_items_summary` is the line to log at the end of a run.
"""
import logging
import multiprocessing
import numbers
from typing import List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import detection_utils as utils
from PIL import Image, ImageOps

__all__ = [
    "BadDatasetItemError",
    "read_image",
    "read_label_map",
    "read_panoptic_rgb",
    "check_annotation_list",
    "check_is_crowd",
    "check_category_id",
    "check_label_values",
    "decode_segmentation",
    "record_skipped_item",
    "num_skipped_items",
    "skipped_items_summary",
    "reset_skipped_items",
    "last_skip_reason",
]

logger = logging.getLogger(__name__)

# Shared memory: DataLoader workers forked from the process that imported this module add to the same
# counter. (Workers started with the "spawn" method count in their own copy.)
_NUM_SKIPPED = multiprocessing.Value("q", 0)
_LAST_REASON = [None]  # the problem of the item this process skipped last (read by the resumable loader)


class BadDatasetItemError(ValueError):
    """A dataset item that cannot be used. The message names the image file and the problem."""

    def __init__(self, problem: str, file_name: Optional[str] = None):
        # `problem` comes first so that ``BadDatasetItemError(message)`` also works: PyTorch re-raises
        # exceptions of DataLoader workers in the main process by calling the class with one string.
        self.problem = problem
        self.file_name = file_name
        super().__init__(problem if file_name is None else f"dataset item '{file_name}': {problem}")

    def __reduce__(self):
        return type(self), (self.problem, self.file_name)


def read_image(file_name: str, image_format: str, expected_hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """
    Read an image as uint8 (H, W, C) in ``image_format`` (detectron2's ``read_image``, EXIF orientation
    applied). ``expected_hw`` is the (height, width) the dataset states, when it states one.
    """
    try:
        with Image.open(file_name) as probe:
            mode = probe.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
            image = _read_16_bit(file_name, image_format)
        elif mode in ("I", "F"):
            raise BadDatasetItemError(
                f"the image has 32-bit {'float' if mode == 'F' else 'integer'} pixels (PIL mode {mode}); expected "
                "8- or 16-bit images (convert it, e.g. scaled to 0-255)",
                file_name,
            )
        else:
            image = utils.read_image(file_name, format=image_format)
    except FileNotFoundError:
        raise BadDatasetItemError("the image file does not exist", file_name) from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL: unidentified, truncated or corrupt file
        raise BadDatasetItemError(f"the image cannot be decoded ({type(e).__name__}: {e})", file_name) from e
    if expected_hw is not None and tuple(image.shape[:2]) != tuple(expected_hw):
        raise BadDatasetItemError(
            f"the image is {image.shape[1]}x{image.shape[0]} (width x height) but the dataset says "
            f"{expected_hw[1]}x{expected_hw[0]}",
            file_name,
        )
    return image


def _read_16_bit(file_name: str, image_format: str) -> np.ndarray:
    """A 16-bit grayscale image scaled to 8 bits (detectron2's reader would clip every value above 255)."""
    with Image.open(file_name) as image:
        image = ImageOps.exif_transpose(image)
        array = np.asarray(image, dtype=np.uint16)
    gray = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image_format == "L":
        return gray[:, :, None]
    return np.repeat(gray[:, :, None], 3, axis=2)


def _read_annotation_image(path: str, what: str, file_name: str, image_format=None) -> np.ndarray:
    try:
        return utils.read_image(path, format=image_format)
    except FileNotFoundError:
        raise BadDatasetItemError(f"the {what} file '{path}' does not exist", file_name) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadDatasetItemError(
            f"the {what} file '{path}' cannot be decoded ({type(e).__name__}: {e})", file_name
        ) from e


def _check_same_size(array: np.ndarray, image_hw, what: str, path: str, file_name: str) -> None:
    if tuple(array.shape[:2]) != tuple(image_hw):
        raise BadDatasetItemError(
            f"the {what} file '{path}' is {array.shape[1]}x{array.shape[0]} (width x height) but the image is "
            f"{image_hw[1]}x{image_hw[0]}",
            file_name,
        )


def read_label_map(path: str, image_hw: Tuple[int, int], file_name: str) -> np.ndarray:
    """
    Read a single-channel semantic label map (PNG, or 16-bit TIFF for datasets with more than 255 classes)
    that must be as large as the image. Returns (H, W): uint8 as stored, other integer types as float32
    (exact for labels below 2^24; detectron2's resize of non-uint8 arrays needs a float type).
    """
    label = _read_annotation_image(path, "semantic label", file_name)
    if label.ndim == 3 and label.shape[2] == 1:
        label = label[:, :, 0]
    if label.ndim != 2:
        raise BadDatasetItemError(
            f"the semantic label file '{path}' has {label.shape[2]} channels; expected a single-channel "
            "label map (one class id per pixel)",
            file_name,
        )
    _check_same_size(label, image_hw, "semantic label", path, file_name)
    if label.dtype == bool:  # a 1-bit map (PIL mode "1") holds the ids 0 and 1
        return label.astype(np.uint8)
    if label.dtype == np.uint8:
        return label
    if not np.issubdtype(label.dtype, np.integer):
        raise BadDatasetItemError(f"the semantic label file '{path}' holds {label.dtype} values, not integers",
                                  file_name)
    return label.astype(np.float32)


def read_panoptic_rgb(path: str, image_hw: Tuple[int, int], file_name: str) -> np.ndarray:
    """Read a COCO-format panoptic PNG as uint8 RGB (H, W, 3); segment id = R + 256 G + 256^2 B."""
    pan = _read_annotation_image(path, "panoptic", file_name, image_format="RGB")
    _check_same_size(pan, image_hw, "panoptic", path, file_name)
    return pan


def check_annotation_list(annotations, what: str, file_name: str) -> list:
    """Return ``annotations`` if it is a list of dicts (one image's or one frame's annotations)."""
    if not isinstance(annotations, list):
        raise BadDatasetItemError(f"{what} is a {type(annotations).__name__}; expected a list of annotations",
                                  file_name)
    for i, obj in enumerate(annotations):
        if not isinstance(obj, dict):
            raise BadDatasetItemError(f"{what}: annotation {i} is a {type(obj).__name__}; expected a dict", file_name)
    return annotations


def check_is_crowd(obj: dict, where: str, file_name: str) -> bool:
    """The annotation's "iscrowd" (absent: 0) as a bool; a value other than 0 / 1 is refused, since a truthy
    string such as "0" would otherwise drop the instance as a crowd region."""
    value = obj.get("iscrowd", 0)
    if not (isinstance(value, numbers.Integral) and value in (0, 1)):  # True / False are 1 / 0
        raise BadDatasetItemError(f"{where} has iscrowd {value!r}; expected 0 or 1", file_name)
    return bool(value)


def check_category_id(category_id, num_classes: int, where: str, file_name: str) -> int:
    """Return ``category_id`` as int if it is a contiguous id in ``[0, num_classes)``."""
    if isinstance(category_id, bool) or not isinstance(category_id, numbers.Integral):
        raise BadDatasetItemError(f"{where} has category_id {category_id!r}; expected an integer", file_name)
    if not 0 <= category_id < num_classes:
        raise BadDatasetItemError(
            f"{where} has category_id {category_id}; expected a contiguous id in [0, {num_classes}) "
            "(MODEL.SEM_SEG_HEAD.NUM_CLASSES)",
            file_name,
        )
    return int(category_id)


def check_label_values(values: np.ndarray, num_classes: int, ignore_label: int, path: str, file_name: str):
    """Check that the distinct values of a label map are class ids in ``[0, num_classes)`` or the ignore label."""
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_label)]
    if bad:
        raise BadDatasetItemError(
            f"the semantic label file '{path}' contains label(s) {bad[:10]}; expected class ids in "
            f"[0, {num_classes}) (MODEL.SEM_SEG_HEAD.NUM_CLASSES) or the ignore label {ignore_label}",
            file_name,
        )


def _polygons(segm: list, where: str, file_name: str) -> List[np.ndarray]:
    if len(segm) == 0:
        raise BadDatasetItemError(f"{where} has an empty polygon list", file_name)
    polygons = []
    for k, poly in enumerate(segm):
        try:
            p = np.asarray(poly, dtype=np.float64)
        except (TypeError, ValueError):
            raise BadDatasetItemError(f"{where}: polygon {k} is not a flat list of numbers", file_name) from None
        if p.ndim != 1 or len(p) < 6 or len(p) % 2 != 0:
            raise BadDatasetItemError(
                f"{where}: polygon {k} has {p.size} coordinates; expected a flat list [x1, y1, x2, y2, ...] "
                "of at least 3 points",
                file_name,
            )
        if not np.isfinite(p).all():
            raise BadDatasetItemError(f"{where}: polygon {k} has non-finite coordinates", file_name)
        polygons.append(p)
    return polygons


def _counts_from_string(counts: bytes) -> Optional[List[int]]:
    """Run lengths of COCO's compressed RLE string (the format of pycocotools' ``rleToString``); None if malformed."""
    runs, p = [], 0
    while p < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(counts):
                return None
            c = counts[p] - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _rle(segm: dict, image_hw, where: str, file_name: str) -> dict:
    if "size" not in segm or "counts" not in segm:
        raise BadDatasetItemError(f"{where}: RLE needs 'size' and 'counts', got keys {sorted(segm)}", file_name)
    size = segm["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, numbers.Integral) for s in size)):
        raise BadDatasetItemError(f"{where}: RLE 'size' is {size!r}; expected [height, width]", file_name)
    if tuple(size) != tuple(image_hw):
        raise BadDatasetItemError(
            f"{where}: RLE size is {list(size)} (height, width) but the image is {list(image_hw)}", file_name
        )
    h, w = image_hw
    counts = segm["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        if not all(isinstance(c, numbers.Integral) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise BadDatasetItemError(
                f"{where}: uncompressed RLE counts must be non-negative integers summing to height*width={h * w}",
                file_name,
            )
        return mask_util.frPyObjects(segm, h, w)
    if isinstance(counts, str):
        if not counts.isascii():
            raise BadDatasetItemError(f"{where}: compressed RLE 'counts' has non-ASCII characters", file_name)
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise BadDatasetItemError(f"{where}: RLE 'counts' is a {type(counts).__name__}; expected str or list",
                                  file_name)
    runs = _counts_from_string(counts)
    if runs is None or any(r < 0 for r in runs) or sum(runs) != h * w:
        raise BadDatasetItemError(
            f"{where}: compressed RLE 'counts' is malformed (its runs do not cover height*width={h * w} pixels)",
            file_name,
        )
    return {"size": [h, w], "counts": counts}


def decode_segmentation(segm, image_hw: Tuple[int, int], where: str, file_name: str):
    """
    Validate an instance annotation's "segmentation" against the image size (H, W).

    Returns ``("polygons", list of flat float arrays)`` for polygons, or ``("mask", uint8 (H, W))`` for an RLE
    (compressed or not) or a binary mask array.
    """
    if isinstance(segm, list):
        return "polygons", _polygons(segm, where, file_name)
    if isinstance(segm, dict):
        return "mask", mask_util.decode(_rle(segm, image_hw, where, file_name)).astype(np.uint8)
    if isinstance(segm, np.ndarray):
        if segm.ndim != 2 or tuple(segm.shape) != tuple(image_hw):
            raise BadDatasetItemError(
                f"{where}: mask array has shape {segm.shape} but the image is {tuple(image_hw)}", file_name
            )
        return "mask", (segm != 0).astype(np.uint8)
    raise BadDatasetItemError(
        f"{where}: 'segmentation' is a {type(segm).__name__}; expected polygons (list), RLE (dict) or a mask",
        file_name,
    )


def record_skipped_item(error: BadDatasetItemError) -> None:
    """Count one skipped item and log a warning naming it."""
    with _NUM_SKIPPED.get_lock():
        _NUM_SKIPPED.value += 1
        n = _NUM_SKIPPED.value
    _LAST_REASON[0] = error.problem
    logger.warning("Skipped bad dataset item #%d (DATALOADER.SKIP_BAD_ITEMS is on): %s", n, error)


def last_skip_reason() -> Optional[str]:
    """The problem of the item this process skipped last (None if none)."""
    return _LAST_REASON[0]


def num_skipped_items() -> int:
    """How many items the mappers skipped so far (this process and the workers forked from it)."""
    return int(_NUM_SKIPPED.value)


def skipped_items_summary() -> str:
    """One line for the end of a run."""
    n = num_skipped_items()
    if n == 0:
        return "No bad dataset items were skipped."
    return f"{n} bad dataset item(s) were skipped (DATALOADER.SKIP_BAD_ITEMS); their files are named in the warnings."


def reset_skipped_items() -> None:
    with _NUM_SKIPPED.get_lock():
        _NUM_SKIPPED.value = 0
