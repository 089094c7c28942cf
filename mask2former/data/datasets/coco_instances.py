"""
COCO-format instance annotations (``instances_*.json``) read into detectron2 dataset dicts, with the JSON's
structure checked first.

:func:`load_coco_instance_json` gives the same dicts and metadata as detectron2's ``load_coco_json`` for a
well-formed file, but a malformed one is a ``ValueError`` naming the file and the field (e.g.
"'instances.json': annotations[12] (id 40): category_id 99 is not in 'categories' [1, 2, 3]") instead of a
``KeyError`` / ``TypeError`` / ``AssertionError`` from inside pycocotools or detectron2, and it refuses what
detectron2 would silently get wrong: annotations of image ids that are not in "images" (dropped there),
repeated image or category ids (the later one wins there), "iscrowd" other than 0 / 1. As there, polygons of
fewer than 3 points are dropped (an instance left with none is dropped, with a warning), uncompressed RLE is
compressed, keypoint coordinates get +0.5, and with ``dataset_name`` category ids become contiguous (sorted by
id) and the metadata gets "thing_classes" and "thing_dataset_id_to_contiguous_id" (or is checked against them).
Values inside the geometry (coordinates, RLE runs against the image size) are checked by the dataset mappers,
item by item, where ``DATALOADER.SKIP_BAD_ITEMS`` applies.

The JSON::

    "images":      [{"id", "file_name", "height", "width", ...}, ...]
    "annotations": [{"id", "image_id", "category_id", "segmentation" (polygons or RLE), "bbox" [x, y, w, h],
                     "iscrowd", "keypoints"?, ...}, ...]   (absent for test splits)
    "categories":  [{"id", "name", ...}, ...]
"""
import logging
import numbers
import os
from typing import Dict, List, Optional, Sequence

import pycocotools.mask as mask_util
from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

from .loading import read_json

__all__ = ["check_coco_instance_json", "load_coco_instance_json"]

logger = logging.getLogger(__name__)

_ANNOTATION_KEYS = ("iscrowd", "bbox", "keypoints", "category_id")  # copied into the dicts, as detectron2 does


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


class _Checker:
    """Raises ValueError("'FILE': WHERE ...")."""

    def __init__(self, json_file: str):
        self.json_file = json_file

    def fail(self, where: str, problem: str):
        raise ValueError(f"'{self.json_file}': {where} {problem}")

    def field(self, obj: dict, key: str, where: str, ok, expected: str):
        if key not in obj:
            self.fail(where, f"has no '{key}' ({expected})")
        if not ok(obj[key]):
            self.fail(where, f"'{key}' is {_short(obj[key])}; expected {expected}")
        return obj[key]

    def object_list(self, data: dict, key: str, where: str) -> List[dict]:
        items = self.field(data, key, where, lambda v: isinstance(v, list), "a list")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                self.fail(f"{key}[{i}]", f"is {_short(item)}; expected an object")
        return items


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_segmentation(c: _Checker, segm, where: str) -> None:
    if isinstance(segm, list):
        for k, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                c.fail(where, f"'segmentation' polygon {k} is {_short(poly)}; expected a flat list of numbers "
                              "[x1, y1, x2, y2, ...]")
        return
    if isinstance(segm, dict):
        if not segm:
            return  # empty: no segmentation (as detectron2 reads it)
        size = segm.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
            c.fail(where, f"RLE 'size' is {_short(size)}; expected [height, width]")
        counts = segm.get("counts")
        if isinstance(counts, list):
            if not all(_is_int(n) and n >= 0 for n in counts):
                c.fail(where, "uncompressed RLE 'counts' must be non-negative integers")
        elif not isinstance(counts, str):
            c.fail(where, f"RLE 'counts' is {_short(counts)}; expected a string (compressed) or a list of run "
                          "lengths")
        return
    if segm is not None:
        c.fail(where, f"'segmentation' is {_short(segm)}; expected polygons (a list of lists) or an RLE object")


def check_coco_instance_json(json_file: str, data, require_categories: bool = True) -> None:
    """
    Check the structure of COCO-format instance annotations (the fields :func:`load_coco_instance_json` reads),
    so that a malformed file is a ValueError naming the file and the field.
    """
    c = _Checker(json_file)
    if not isinstance(data, dict):
        c.fail("the file", "is not a JSON object with 'images', 'annotations' and 'categories'")
    images = c.object_list(data, "images", "the file")
    image_ids = set()
    kinds = set()
    for i, img in enumerate(images):
        where = f"images[{i}]"
        image_id = c.field(img, "id", where, lambda v: (_is_int(v) and v >= 0) or isinstance(v, str),
                           "a non-negative integer (or string) id")
        c.field(img, "file_name", where, lambda v: isinstance(v, str) and v, "the image's file name")
        for key in ("height", "width"):
            c.field(img, key, where, lambda v: _is_int(v) and v > 0, "a positive integer")
        if image_id in image_ids:
            c.fail(where, f"repeats image id {image_id!r}: each id must name one image")
        image_ids.add(image_id)
        kinds.add(type(image_id) is str)
    if len(kinds) > 1:
        c.fail("'images'", "mixes integer and string ids")

    annotations = c.object_list(data, "annotations", "the file") if "annotations" in data else []
    category_ids = set()
    if require_categories or annotations or "categories" in data:
        categories = c.object_list(data, "categories", "the file")
        if not categories:
            c.fail("'categories'", "is empty; expected at least one {'id', 'name'}")
        for i, cat in enumerate(categories):
            where = f"categories[{i}]"
            cid = c.field(cat, "id", where, _is_int, "an integer id")
            c.field(cat, "name", where, lambda v: isinstance(v, str), "a class name")
            if cid in category_ids:
                c.fail(where, f"repeats category id {cid}: each id must name one class")
            category_ids.add(cid)

    ann_ids = set()
    unique_ids = "minival" not in json_file  # COCO 2014's (val)minival files repeat ids; detectron2 allows them
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]" + (f" (id {_short(ann['id'])})" if "id" in ann else "")
        ann_id = c.field(ann, "id", where, lambda v: _is_int(v) or isinstance(v, str), "an annotation id")
        if unique_ids and ann_id in ann_ids:
            c.fail(where, f"repeats annotation id {ann_id!r}")
        ann_ids.add(ann_id)
        image_id = c.field(ann, "image_id", where, lambda v: _is_int(v) or isinstance(v, str), "an image id")
        if image_id not in image_ids:
            c.fail(where, f"image_id {_short(image_id)} is not in 'images'")
        cid = c.field(ann, "category_id", where, _is_int, "an integer category id")
        if cid not in category_ids:
            c.fail(where, f"category_id {cid} is not in 'categories' {sorted(category_ids)[:20]}")
        crowd = ann.get("iscrowd", 0)
        if not isinstance(crowd, numbers.Integral) or crowd not in (0, 1):  # (JSON true / false are 1 / 0)
            c.fail(where, f"'iscrowd' is {_short(crowd)}; expected 0 or 1")
        if ann.get("ignore", 0) != 0:
            c.fail(where, "has 'ignore' set, which detectron2's COCO format does not support")
        if "bbox" in ann and not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4
                                  and all(_is_number(v) for v in ann["bbox"])):
            c.fail(where, f"'bbox' is {_short(ann['bbox'])}; expected [x, y, width, height]")
        if "segmentation" in ann:
            _check_segmentation(c, ann["segmentation"], where)
        keypoints = ann.get("keypoints")
        if keypoints is not None and not (isinstance(keypoints, list) and len(keypoints) % 3 == 0
                                          and all(_is_number(v) for v in keypoints)):
            c.fail(where, f"'keypoints' is {_short(keypoints)}; expected [x1, y1, v1, x2, y2, v2, ...]")


def _set_metadata(json_file: str, dataset_name: str, categories: Sequence[dict]) -> Dict[int, int]:
    """The dataset id -> contiguous id map (ids sorted); sets, or checks, the metadata of ``dataset_name``."""
    cats = sorted(categories, key=lambda cat: cat["id"])
    values = {"thing_classes": [cat["name"] for cat in cats],
              "thing_dataset_id_to_contiguous_id": {cat["id"]: i for i, cat in enumerate(cats)}}
    meta = MetadataCatalog.get(dataset_name)
    for key, value in values.items():
        registered = meta.get(key, None)
        if registered is not None and registered != value:
            raise ValueError(
                f"'{json_file}': its categories give {key} {_short(value)}, but dataset '{dataset_name}' is "
                f"registered with {_short(registered)}: is it the right annotation file for this dataset?")
    meta.set(**values)
    return values["thing_dataset_id_to_contiguous_id"]


def load_coco_instance_json(json_file: str, image_root: str, dataset_name: Optional[str] = None,
                            extra_annotation_keys: Optional[Sequence[str]] = None, *, hint: str = "") -> List[dict]:
    """
    detectron2 dicts of a COCO-format instance JSON (see the module docstring): per image, sorted by id,
    "file_name" (under ``image_root``), "height", "width", "image_id" and "annotations" (the annotation keys
    "iscrowd", "bbox", "keypoints", "category_id", "segmentation" and ``extra_annotation_keys``, with
    "bbox_mode" XYWH_ABS).

    Args:
        dataset_name: if given, category ids become contiguous and the metadata gets the class names.
        hint: how to obtain the file, for the error when it does not exist.
    Raises:
        FileNotFoundError for a missing file, ValueError naming the file and the field for malformed content.
    """
    data = read_json(json_file, hint)
    check_coco_instance_json(json_file, data, require_categories=dataset_name is not None)
    id_map = _set_metadata(json_file, dataset_name, data["categories"]) if dataset_name is not None else None

    per_image: Dict[object, List[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data.get("annotations", []):
        per_image[ann["image_id"]].append(ann)
    keys = list(_ANNOTATION_KEYS) + list(extra_annotation_keys or [])
    dicts, dropped = [], 0
    for img in sorted(data["images"], key=lambda img: img["id"]):
        objs = []
        for ann in per_image[img["id"]]:
            obj = {key: ann[key] for key in keys if key in ann}
            segm = ann.get("segmentation")
            if segm:
                if isinstance(segm, dict):
                    if isinstance(segm["counts"], list):  # uncompressed -> compressed, as detectron2 does
                        segm = mask_util.frPyObjects(segm, *segm["size"])
                else:
                    segm = [poly for poly in segm if len(poly) % 2 == 0 and len(poly) >= 6]
                    if not segm:
                        dropped += 1
                        continue
                obj["segmentation"] = segm
            if ann.get("keypoints"):  # pixel indices -> coordinates of pixel centres
                obj["keypoints"] = [v + 0.5 if k % 3 != 2 else v for k, v in enumerate(ann["keypoints"])]
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            if id_map is not None:
                obj["category_id"] = id_map[obj["category_id"]]
            objs.append(obj)
        dicts.append({"file_name": os.path.join(image_root, img["file_name"]), "height": img["height"],
                      "width": img["width"], "image_id": img["id"], "annotations": objs})
    if dropped:
        logger.warning(f"'{json_file}': dropped {dropped} instance(s) whose polygons all have fewer than 3 points")
    logger.info(f"Loaded {len(dicts)} images in COCO format from {json_file}")
    return dicts
