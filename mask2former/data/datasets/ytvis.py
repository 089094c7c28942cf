"""
Loading video instance segmentation annotations in the YouTube-VIS format (YouTube-VIS 2019/2021, OVIS and
the generated shapes world videos).

The JSON holds::

    "videos":      [{"id", "file_names": [frame paths relative to the image root], "height", "width",
                     "length" (optional, = len(file_names))}, ...]
    "annotations": [{"id", "video_id", "category_id", "iscrowd", "segmentations": [per frame an RLE
                     (compressed or not), polygons, or null where the instance is not visible],
                     "bboxes": [per frame [x, y, w, h] or null], "areas": [per frame or null]}, ...]
                   (absent or empty for splits without public ground truth)
    "categories":  [{"id", "name"}, ...]

:func:`load_ytvis_json` turns it into one detectron2 dataset dict per video::

    "file_names": list of frame paths, "height", "width", "length", "video_id",
    "annotations": per frame a list of {"id", "category_id" (contiguous), "iscrowd", "segmentation",
                   "bbox", "bbox_mode"} for the instances visible in that frame.
"""
import json
import logging
import numbers
import os
from typing import Dict, List, Optional, Sequence

import pycocotools.mask as mask_util
from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

__all__ = ["load_ytvis_json", "ytvis_categories_metadata", "read_ytvis_json"]

logger = logging.getLogger(__name__)


def read_ytvis_json(json_file: str, hint: str = "") -> dict:
    """Read and check the top level of a YouTube-VIS format JSON. Errors name the file and field."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"The YouTube-VIS annotation file '{json_file}' does not exist. {hint}".strip())
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{json_file}' is not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise ValueError(f"'{json_file}': expected an object with a list 'videos' (YouTube-VIS format)")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise ValueError(f"'{json_file}': expected a non-empty list 'categories' of {{'id', 'name'}}")
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"'{json_file}': categories[{i}] must have 'id' and 'name', got {c!r}")
    annotations = data.get("annotations")
    if annotations is not None and not (isinstance(annotations, list) and all(isinstance(a, dict) for a in annotations)):
        raise ValueError(f"'{json_file}': 'annotations' must be a list of objects, got {type(annotations).__name__}")
    if not all(isinstance(v, dict) for v in data["videos"]):
        raise ValueError(f"'{json_file}': 'videos' must be a list of objects")
    return data


def ytvis_categories_metadata(categories: Sequence[dict]) -> dict:
    """thing_classes and thing_dataset_id_to_contiguous_id of categories (dicts with id and name), by id."""
    cats = sorted(categories, key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }


def _check_categories(json_file: str, categories: Sequence[dict], dataset_name: Optional[str]) -> Dict[int, int]:
    """The dataset id -> contiguous id map; checks (or sets) the registered metadata of ``dataset_name``."""
    from_json = ytvis_categories_metadata(categories)
    if not dataset_name:
        return from_json["thing_dataset_id_to_contiguous_id"]
    meta = MetadataCatalog.get(dataset_name)
    known = meta.get("thing_classes", None)
    if known is None:
        meta.set(**from_json)
        return from_json["thing_dataset_id_to_contiguous_id"]
    id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
    json_names = {c["id"]: c["name"] for c in categories}
    registered = {d: known[c] for d, c in id_map.items()} if id_map else None
    if registered != json_names:
        raise ValueError(
            f"The categories of '{json_file}' {sorted(json_names.items())[:5]}... do not match the classes "
            f"registered for dataset '{dataset_name}' {sorted((registered or {}).items())[:5]}...: is it the "
            "right annotation file for this dataset?")
    return id_map


def _where(json_file: str, what: str) -> str:
    return f"'{json_file}': {what}"


def _check_video(json_file: str, i: int, video: dict) -> None:
    where = _where(json_file, f"videos[{i}] (id {video.get('id')!r})")
    for key in ("id", "file_names", "height", "width"):
        if key not in video:
            raise ValueError(f"{where} has no '{key}'")
    names = video["file_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: 'file_names' must be a list of frame paths")
    if not names:
        raise ValueError(f"{where} is an empty video: 'file_names' lists no frames")
    if "length" in video and video["length"] != len(names):
        raise ValueError(f"{where}: 'length' is {video['length']} but 'file_names' lists {len(names)} frames")
    for key in ("height", "width"):
        if not isinstance(video[key], numbers.Integral) or video[key] < 1:
            raise ValueError(f"{where}: '{key}' must be a positive integer, got {video[key]!r}")


def _frame_segmentation(segm, height: int, width: int, where: str):
    """One frame's segmentation as stored in the dataset dict, or None where the instance is not visible."""
    if segm is None or (isinstance(segm, list) and not segm):
        return None
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(f"{where}: an RLE needs 'size' and 'counts', got keys {sorted(segm)}")
        if list(segm["size"]) != [height, width]:
            raise ValueError(f"{where}: RLE size {segm['size']} differs from the video's [height, width] "
                             f"[{height}, {width}]")
        if isinstance(segm["counts"], list):  # uncompressed RLE -> compressed
            segm = mask_util.frPyObjects(segm, height, width)
            segm["counts"] = segm["counts"].decode("ascii")
        return segm
    if isinstance(segm, list):
        polygons = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        return polygons or None
    raise ValueError(f"{where}: a segmentation must be an RLE dict, a list of polygons or null, "
                     f"got {type(segm).__name__}")


def load_ytvis_json(json_file: str, image_root: str, dataset_name: Optional[str] = None,
                    extra_annotation_keys: Sequence[str] = ()) -> List[dict]:
    """
    Load a YouTube-VIS format JSON (see the module docstring) into one dict per video.

    Args:
        json_file: the annotation JSON.
        image_root: folder the videos' "file_names" are relative to.
        dataset_name: if given, its metadata gets (or is checked against) the JSON's categories.
        extra_annotation_keys: annotation fields copied into every frame's objects besides the usual ones.
    Raises:
        FileNotFoundError for a missing JSON or image root, ValueError (naming the file, the video or
        annotation and the field) for malformed content, e.g. a video without frames.
    """
    data = read_ytvis_json(json_file)
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"The frame folder '{image_root}' of '{json_file}' does not exist")
    id_map = _check_categories(json_file, data["categories"], dataset_name)

    videos = {}
    for i, video in enumerate(data["videos"]):
        _check_video(json_file, i, video)
        if video["id"] in videos:
            raise ValueError(_where(json_file, f"video id {video['id']!r} appears twice"))
        videos[video["id"]] = video

    anns_per_video: Dict[object, List[dict]] = {vid: [] for vid in videos}
    for j, ann in enumerate(data.get("annotations") or []):
        where = _where(json_file, f"annotations[{j}] (id {ann.get('id')!r})")
        for key in ("id", "video_id", "category_id", "segmentations"):
            if key not in ann:
                raise ValueError(f"{where} has no '{key}'")
        if ann["video_id"] not in videos:
            raise ValueError(f"{where}: video_id {ann['video_id']!r} is not in 'videos'")
        if ann["category_id"] not in id_map:
            raise ValueError(f"{where}: category_id {ann['category_id']!r} is not in 'categories' "
                             f"{sorted(id_map)}")
        length = len(videos[ann["video_id"]]["file_names"])
        for key in ("segmentations", "bboxes", "areas"):
            if ann.get(key) is not None and (not isinstance(ann[key], list) or len(ann[key]) != length):
                raise ValueError(f"{where}: '{key}' must list one entry per frame ({length}), got "
                                 f"{len(ann[key]) if isinstance(ann[key], list) else type(ann[key]).__name__}")
        anns_per_video[ann["video_id"]].append(ann)

    has_annotations = bool(data.get("annotations"))
    dicts = []
    for vid, video in videos.items():
        length = len(video["file_names"])
        record = {
            "file_names": [os.path.join(image_root, name) for name in video["file_names"]],
            "height": video["height"],
            "width": video["width"],
            "length": length,
            "video_id": vid,
        }
        if has_annotations:
            frames = [[] for _ in range(length)]
            for ann in anns_per_video[vid]:
                where = _where(json_file, f"annotation id {ann['id']!r}")
                bboxes = ann.get("bboxes") or [None] * length
                for t in range(length):
                    segm = _frame_segmentation(ann["segmentations"][t], video["height"], video["width"],
                                               f"{where}, frame {t}")
                    if segm is None:
                        continue
                    obj = {key: ann[key] for key in extra_annotation_keys if key in ann}
                    obj.update(id=ann["id"], category_id=id_map[ann["category_id"]],
                               iscrowd=int(ann.get("iscrowd", 0)), segmentation=segm)
                    if bboxes[t] is not None:
                        obj["bbox"], obj["bbox_mode"] = list(bboxes[t]), BoxMode.XYWH_ABS
                    frames[t].append(obj)
            record["annotations"] = frames
        dicts.append(record)
    num_frames = sum(d["length"] for d in dicts)
    logger.info(f"Loaded {len(dicts)} videos ({num_frames} frames) in YouTube-VIS format from {json_file}")
    return dicts
