"""
Helpers shared by the dataset registrations (``register_*.py``) and the preparation scripts (``datasets/``).

- :class:`LazyMetadata`: metadata whose class lists come from the dataset's own files are read on first
  access, so registering reads nothing and works when the data is absent, yet evaluators, the model and
  visualisers find the class names without the dataset being loaded first.
- :func:`require_path`: a missing file or folder is a ``FileNotFoundError`` naming the path and the step
  that makes it (download or ``datasets/prepare_*.py``).
- :func:`load_sem_seg_files`, :func:`load_panoptic_json`: detectron2 dataset dicts for label-map folders and
  COCO-format panoptic annotations.
- :func:`rgb2id`, :func:`id2rgb`: the COCO panoptic PNG encoding, segment id = R + 256 G + 256^2 B.
- :func:`shipped_categories`: the class lists shipped in ``mask2former/data/metadata/*.json`` (each file says
  where its facts come from), so that a model of an official dataset is built and run without the dataset;
  :func:`check_categories` checks a dataset's own categories against them when the dataset is loaded.
"""
import json
import logging
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

__all__ = [
    "datasets_root",
    "LazyMetadata",
    "register_lazy_metadata",
    "require_path",
    "read_json",
    "panoptic_metadata",
    "panoptic_json_metadata",
    "PANOPTIC_LAZY_KEYS",
    "load_sem_seg_files",
    "load_panoptic_json",
    "check_panoptic_json",
    "rgb2id",
    "id2rgb",
    "METADATA_DIR",
    "shipped_categories",
    "instance_metadata",
    "check_categories",
]

logger = logging.getLogger(__name__)

README_HINT = "See datasets/README.md for the expected layout."
METADATA_DIR = Path(__file__).resolve().parents[1] / "metadata"


def datasets_root() -> str:
    """Where datasets live: ``$DETECTRON2_DATASETS``, default ``datasets`` (detectron2's convention)."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


class LazyMetadata(Metadata):
    """
    A detectron2 ``Metadata`` whose keys ``lazy_keys`` are computed by ``loader()`` (a dict of values) on the
    first access of any of them. Keys the loader does not return stay absent. Use
    :func:`register_lazy_metadata` to put one in the ``MetadataCatalog``.
    """

    def __init__(self, name: str = "N/A", loader: Optional[Callable[[], dict]] = None, lazy_keys: Iterable[str] = (),
                 **values):
        # (defaults: copy and pickle re-create the object without arguments, then restore its __dict__)
        super().__init__(name=name)
        if loader is not None:
            self.__dict__["_lazy"] = (loader, frozenset(lazy_keys))  # not through Metadata.__setattr__
        self.set(**values)

    def __getattr__(self, key):
        lazy = self.__dict__.get("_lazy")
        if lazy is not None and key in lazy[1]:
            values = lazy[0]()
            del self.__dict__["_lazy"]
            self.set(**values)
            return getattr(self, key)
        return super().__getattr__(key)

    def as_dict(self):
        ret = super().as_dict()
        ret.pop("_lazy", None)
        return ret


def register_lazy_metadata(name: str, loader: Callable[[], dict], lazy_keys: Iterable[str], **values) -> Metadata:
    """Put a :class:`LazyMetadata` for dataset ``name`` in the ``MetadataCatalog`` (replacing any there)."""
    meta = LazyMetadata(name, loader, lazy_keys, **values)
    MetadataCatalog[name] = meta
    return meta


def require_path(path: str, hint: str, kind: str = "file") -> str:
    """Return ``path`` if it exists (``kind`` "file" or "folder"), else raise FileNotFoundError with ``hint``."""
    ok = os.path.isfile(path) if kind == "file" else os.path.isdir(path)
    if not ok:
        raise FileNotFoundError(f"The {kind} '{path}' does not exist: {hint} {README_HINT}")
    return path


def read_json(path: str, hint: str):
    require_path(path, hint)
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{path}' is not valid JSON ({e}): {hint}") from e


def panoptic_metadata(categories: List[dict]) -> dict:
    """
    Metadata of a panoptic dataset from its categories (dicts with "id", "name", "isthing", optional "color"),
    in the order of contiguous ids, following Mask2Former's convention: ``stuff_classes`` names every class
    (so that semantic segmentation covers things too) and ``stuff_dataset_id_to_contiguous_id`` maps every
    category; ``thing_classes`` names only the things, ``thing_dataset_id_to_contiguous_id`` maps them to
    their position in the full list.
    """
    meta = {
        "thing_classes": [c["name"] for c in categories if c["isthing"]],
        "stuff_classes": [c["name"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }
    if all("color" in c for c in categories):
        meta["thing_colors"] = [list(c["color"]) for c in categories if c["isthing"]]
        meta["stuff_colors"] = [list(c["color"]) for c in categories]
    return meta


def panoptic_json_metadata(panoptic_json: str, hint: str) -> dict:
    """:func:`panoptic_metadata` of a COCO-format panoptic JSON's categories, sorted by id."""
    categories = read_json(panoptic_json, hint)["categories"]
    return panoptic_metadata(sorted(categories, key=lambda c: c["id"]))


# the metadata keys panoptic_metadata() gives
PANOPTIC_LAZY_KEYS = (
    "thing_classes",
    "stuff_classes",
    "thing_colors",
    "stuff_colors",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)


def _files_by_stem(folder: str, ext: str) -> Dict[str, str]:
    return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in os.listdir(folder) if f.endswith("." + ext)}


def load_sem_seg_files(
    gt_root: str, image_root: str, gt_ext: str = "png", image_ext: str = "jpg", *, gt_hint: str, image_hint: str
) -> List[dict]:
    """
    One dict {"file_name", "sem_seg_file_name"} per label map ``gt_root/NAME.gt_ext``, with image
    ``image_root/NAME.image_ext``. Reads no file. A label map without its image is kept (with a warning here),
    so that the mapper reports it, or skips it, as a bad item.
    """
    require_path(image_root, image_hint, "folder")
    require_path(gt_root, gt_hint, "folder")
    gts = _files_by_stem(gt_root, gt_ext)
    if not gts:
        raise FileNotFoundError(f"No '*.{gt_ext}' label maps in '{gt_root}': {gt_hint} {README_HINT}")
    images = _files_by_stem(image_root, image_ext)
    missing = sorted(set(gts) - set(images))
    if missing:
        logger.warning(f"{len(missing)} of {len(gts)} label maps in '{gt_root}' have no image in '{image_root}' "
                       f"(e.g. {missing[:3]}); these items will fail in the dataset mapper.")
    dicts = [
        {"file_name": images.get(stem, os.path.join(image_root, f"{stem}.{image_ext}")), "sem_seg_file_name": gt}
        for stem, gt in sorted(gts.items())
    ]
    logger.info(f"Loaded {len(dicts)} images with semantic segmentation from {image_root}")
    return dicts


def _require(json_file: str, where: str, obj, key: str, kinds, what: str):
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"'{json_file}': {where} has no '{key}' ({what})")
    value = obj[key]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ValueError(f"'{json_file}': {where} '{key}' is {value!r}; expected {what}")
    return value


def check_panoptic_json(json_file: str, data) -> None:
    """
    Check the structure of a COCO-format panoptic JSON (the fields :func:`load_panoptic_json` reads), so that a
    malformed file is a ValueError naming the file and the field, not a KeyError or TypeError.
    """
    if not isinstance(data, dict):
        raise ValueError(f"'{json_file}': expected a JSON object with 'annotations' and 'categories'")
    categories = _require(json_file, "the file", data, "categories", list, "a list of categories")
    ids = set()
    for i, c in enumerate(categories):
        where = f"categories[{i}]"
        cid = _require(json_file, where, c, "id", int, "an integer id")
        _require(json_file, where, c, "name", str, "a class name")
        if c.get("isthing") not in (0, 1):  # also True / False
            raise ValueError(f"'{json_file}': {where} 'isthing' is {c.get('isthing')!r}; expected 0 or 1")
        if cid in ids:
            raise ValueError(f"'{json_file}': {where} repeats category id {cid}: each id must name one class")
        ids.add(cid)
    for i, img in enumerate(_require(json_file, "the file", data, "images", list, "a list of images")
                            if "images" in data else []):
        _require(json_file, f"images[{i}]", img, "id", (int, str), "an image id")
        _require(json_file, f"images[{i}]", img, "file_name", str, "an image file name")
    for i, ann in enumerate(_require(json_file, "the file", data, "annotations", list, "a list of annotations")):
        where = f"annotations[{i}]"
        _require(json_file, where, ann, "file_name", str, "the panoptic PNG's file name")
        _require(json_file, where, ann, "image_id", (int, str), "an image id")
        for j, seg in enumerate(_require(json_file, where, ann, "segments_info", list, "a list of segments")):
            _require(json_file, f"{where} segments_info[{j}]", seg, "id", int, "the segment id (R + 256 G + 256^2 B)")
            _require(json_file, f"{where} segments_info[{j}]", seg, "category_id", int, "an integer category id")


def load_panoptic_json(
    json_file: str,
    image_root: str,
    panoptic_root: str,
    meta: Optional[dict] = None,
    sem_seg_root: Optional[str] = None,
    *,
    hints: Dict[str, str],
    data: Optional[dict] = None,
) -> List[dict]:
    """
    detectron2 dicts of a COCO-format panoptic dataset: "file_name" (from the JSON's "images"), "image_id",
    "height", "width", "pan_seg_file_name", "segments_info" (category ids made contiguous, "isthing" added),
    and "sem_seg_file_name" (``sem_seg_root``/NAME.png) when ``sem_seg_root`` is given.

    Args:
        meta: the id maps ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id");
            default: :func:`panoptic_metadata` of the JSON's categories sorted by id.
        hints: how to obtain each input, by key "json", "images", "panoptic" and "sem_seg".
        data: the content of ``json_file`` if the caller has already read it.
    """
    if data is None:
        data = read_json(json_file, hints["json"])
    check_panoptic_json(json_file, data)
    require_path(image_root, hints["images"], "folder")
    require_path(panoptic_root, hints["panoptic"], "folder")
    if sem_seg_root is not None:
        require_path(sem_seg_root, hints["sem_seg"], "folder")
    if meta is None:
        meta = panoptic_metadata(sorted(data["categories"], key=lambda c: c["id"]))  # = panoptic_json_metadata
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta["stuff_dataset_id_to_contiguous_id"]
    images = {img["id"]: img for img in data.get("images", [])}

    dicts = []
    for ann in data["annotations"]:
        stem = os.path.splitext(ann["file_name"])[0]
        img = images.get(ann["image_id"], {"file_name": stem + ".jpg"})
        segments = []
        for seg in ann["segments_info"]:
            dataset_id = seg["category_id"]
            if dataset_id not in stuff and dataset_id not in things:
                raise ValueError(
                    f"'{json_file}': segment {seg.get('id')} of '{ann['file_name']}' has category_id {dataset_id}, "
                    "which is not among the dataset's categories"
                )
            seg = dict(seg, category_id=things.get(dataset_id, stuff.get(dataset_id)), isthing=dataset_id in things)
            segments.append(seg)
        record = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": ann["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": segments,
        }
        if "height" in img and "width" in img:
            record["height"], record["width"] = img["height"], img["width"]
        if sem_seg_root is not None:
            record["sem_seg_file_name"] = os.path.join(sem_seg_root, stem + ".png")
        dicts.append(record)
    if not dicts:
        raise ValueError(f"'{json_file}' has no annotations. {hints['json']}")
    logger.info(f"Loaded {len(dicts)} images with panoptic segmentation from {json_file}")
    return dicts


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 COCO panoptic colours -> (H, W) int64 segment ids (R + 256 G + 256^2 B)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids (< 2^24) -> (H, W, 3) uint8 colours of a COCO panoptic PNG."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def shipped_categories(file_name: str) -> List[dict]:
    """The "categories" of ``mask2former/data/metadata/<file_name>``, in contiguous-id order."""
    return read_json(str(METADATA_DIR / file_name), "it is part of the mask2former package (reinstall it).")["categories"]


def instance_metadata(categories: List[dict]) -> dict:
    """thing_classes (+ thing_colors), thing_dataset_id_to_contiguous_id of the things among ``categories``, in
    their order (contiguous ids count things only, as instance datasets do)."""
    things = [c for c in categories if c.get("isthing", 1)]
    meta = {
        "thing_classes": [c["name"] for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
    }
    if all("color" in c for c in things):
        meta["thing_colors"] = [list(c["color"]) for c in things]
    return meta


def check_categories(source: str, categories: Iterable[dict], expected: Iterable[dict], hint: str) -> None:
    """Raise ValueError when the dataset's categories (id -> name, ``source`` names the file) differ from the
    ``expected`` ones (the shipped list the model's classes follow): a shifted id would mislabel every pixel."""
    got = {c["id"]: str(c["name"]).strip() for c in categories}
    want = {c["id"]: str(c["name"]).strip() for c in expected}
    if got == want:
        return
    diff = [f"id {i}: {got.get(i, '(absent)')!r} instead of {want.get(i, '(absent)')!r}"
            for i in sorted(set(got) | set(want), key=str) if got.get(i) != want.get(i)]
    raise ValueError(
        f"'{source}': its categories differ from the classes the model and evaluators use ({len(diff)} ids differ, "
        f"e.g. {'; '.join(diff[:3])}). {hint}"
    )
