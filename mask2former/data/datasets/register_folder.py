"""
Your own data in a standard format, registered in one call or from the config (no Python to write):

    register_coco_panoptic_folder(name, image_root, panoptic_json, panoptic_root, sem_seg_root=None, instances_json=None)
    register_coco_instance_folder(name, image_root, instances_json)
    register_sem_seg_folder(name, image_root, sem_seg_root, classes, ignore_label=255)

Categories come from the JSON: for panoptic data, things first, then stuff (each group by category id), with
contiguous ids 0..K-1 in that order, in the semantic label maps too (``sem_seg_root``, optional: PNGs named as
the panoptic PNGs, holding contiguous ids, ``ignore_label`` 255 for void); the instance JSON (optional) gives
mask AP. For instance data, contiguous ids follow the category ids. Names and colours (when the JSON has
"color") go to the metadata at registration, so that models are built and the demo draws names at once.

The config key ``DATASETS.REGISTER`` (see :func:`register_from_config`; train_net.py and demo/demo.py call it)
lists such registrations as strings, ``KIND NAME key=value ...`` (shell-style quoting for paths with spaces)::

    DATASETS:
      REGISTER: ["coco_panoptic my_train image_root=data/images/train panoptic_json=data/panoptic_train.json
                  panoptic_root=data/panoptic/train sem_seg_root=data/semantic/train instances_json=data/instances_train.json"]
      TRAIN: ("my_train",)

with KIND one of ``coco_panoptic``, ``coco_instance``, ``sem_seg`` and the keys of the matching function. See
docs/CUSTOM_DATA.md for a walk-through.
"""
import inspect
import os
import shlex
from functools import partial
from typing import Dict, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_instances import load_coco_instance_json
from .loading import instance_metadata, load_panoptic_json, load_sem_seg_files, panoptic_metadata, read_json, require_path

__all__ = [
    "register_coco_panoptic_folder",
    "register_coco_instance_folder",
    "register_sem_seg_folder",
    "register_from_config",
    "parse_registration",
    "FOLDER_KINDS",
]

_HINT = "It is named in a dataset registration (DATASETS.REGISTER or register_*_folder); see docs/CUSTOM_DATA.md."


def _replace(name: str) -> None:
    """Forget an earlier registration of ``name`` (registering the same config twice in one process is fine)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def _categories(json_file: str, needs_isthing: bool) -> List[dict]:
    data = read_json(json_file, _HINT)
    categories = data.get("categories") if isinstance(data, dict) else None
    if not categories:
        raise ValueError(f"'{json_file}': expected a COCO-format object with a non-empty list 'categories'")
    for i, c in enumerate(categories):
        missing = [k for k in ("id", "name") + (("isthing",) if needs_isthing else ()) if k not in c]
        if missing:
            raise ValueError(f"'{json_file}': categories[{i}] has no {', '.join(missing)} (got {c!r})")
    return categories


def _things_first(categories: List[dict]) -> List[dict]:
    return sorted(categories, key=lambda c: (not c["isthing"], c["id"]))


def register_coco_panoptic_folder(
    name: str,
    image_root: str,
    panoptic_json: str,
    panoptic_root: str,
    sem_seg_root: Optional[str] = None,
    instances_json: Optional[str] = None,
    *,
    label_divisor: int = 1000,
) -> dict:
    """Register a COCO-panoptic folder as dataset ``name`` (evaluated as PQ, plus mIoU with ``sem_seg_root``
    and mask AP with ``instances_json``). Reads the categories of ``panoptic_json`` now, the rest when the
    dataset is loaded. Returns the metadata."""
    meta = panoptic_metadata(_things_first(_categories(panoptic_json, needs_isthing=True)))
    hints = {"json": _HINT, "images": _HINT, "panoptic": _HINT, "sem_seg": _HINT}
    _replace(name)
    DatasetCatalog.register(
        name, partial(load_panoptic_json, panoptic_json, image_root, panoptic_root, meta, sem_seg_root, hints=hints))
    values = dict(image_root=image_root, panoptic_root=panoptic_root, panoptic_json=panoptic_json,
                  evaluator_type="coco_panoptic_seg", ignore_label=255, label_divisor=label_divisor)
    if sem_seg_root is not None:
        values["sem_seg_root"] = sem_seg_root
    if instances_json is not None:
        require_path(instances_json, _HINT)
        values["json_file"] = instances_json
    MetadataCatalog.get(name).set(**values, **meta)
    return dict(values, **meta)


def _load_instances(json_file: str, image_root: str, name: str):
    require_path(image_root, _HINT, "folder")
    return load_coco_instance_json(json_file, image_root, dataset_name=name, hint=_HINT)


def register_coco_instance_folder(name: str, image_root: str, instances_json: str) -> dict:
    """Register a COCO-instance folder as dataset ``name`` (evaluated as mask AP); contiguous ids follow the
    category ids, as detectron2's ``load_coco_json`` numbers them (the file is read by
    :func:`~.coco_instances.load_coco_instance_json`, which checks its structure). Returns the metadata."""
    categories = sorted(_categories(instances_json, needs_isthing=False), key=lambda c: c["id"])
    meta = instance_metadata([dict(c, isthing=1) for c in categories])
    _replace(name)
    DatasetCatalog.register(name, partial(_load_instances, instances_json, image_root, name))
    values = dict(image_root=image_root, json_file=instances_json, evaluator_type="coco")
    MetadataCatalog.get(name).set(**values, **meta)
    return dict(values, **meta)


def _class_names(classes: Union[str, Sequence[str]]) -> List[dict]:
    """Class list from names, a JSON file (a list of names, or {"categories": [{"name", "color"?}, ...]}), or a
    text file with one name per line; in label-id order."""
    if not isinstance(classes, str):
        return [{"name": str(c)} for c in classes]
    require_path(classes, _HINT)
    if classes.endswith(".json"):
        data = read_json(classes, _HINT)
        items = data.get("categories") if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise ValueError(f"'{classes}': expected a list of class names or {{\"categories\": [{{\"name\"}}, ...]}}")
        return [c if isinstance(c, dict) else {"name": str(c)} for c in items]
    with open(classes) as f:
        return [{"name": line.strip()} for line in f if line.strip()]


def register_sem_seg_folder(
    name: str,
    image_root: str,
    sem_seg_root: str,
    classes: Union[str, Sequence[str]],
    ignore_label: int = 255,
    image_ext: str = "jpg",
    gt_ext: str = "png",
) -> dict:
    """Register a folder of images and label maps (``sem_seg_root/NAME.gt_ext`` holding class ids, with image
    ``image_root/NAME.image_ext``) as dataset ``name`` (evaluated as mIoU). ``classes``: names in label-id
    order, or a file of them (see :func:`_class_names`). Returns the metadata."""
    categories = _class_names(classes)
    names = [c["name"] for c in categories]
    _replace(name)
    DatasetCatalog.register(
        name, partial(load_sem_seg_files, sem_seg_root, image_root, gt_ext, image_ext, gt_hint=_HINT, image_hint=_HINT))
    values = dict(image_root=image_root, sem_seg_root=sem_seg_root, evaluator_type="sem_seg",
                  ignore_label=int(ignore_label), stuff_classes=names)
    if all("color" in c for c in categories):
        values["stuff_colors"] = [list(c["color"]) for c in categories]
    MetadataCatalog.get(name).set(**values)
    return values


FOLDER_KINDS = {
    "coco_panoptic": register_coco_panoptic_folder,
    "coco_instance": register_coco_instance_folder,
    "sem_seg": register_sem_seg_folder,
}
_INT_KEYS = {"ignore_label", "label_divisor"}


def parse_registration(entry: str) -> tuple:
    """``"KIND NAME key=value ..."`` -> (register function, name, keyword arguments); errors name the entry."""
    where = f"DATASETS.REGISTER entry {entry!r}"
    try:
        words = shlex.split(entry)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    if len(words) < 2 or words[0] not in FOLDER_KINDS:
        raise ValueError(f"{where}: expected 'KIND NAME key=value ...' with KIND one of {sorted(FOLDER_KINDS)}")
    kind, name, pairs = words[0], words[1], words[2:]
    kwargs: Dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{where}: '{pair}' is not key=value")
        kwargs[key] = int(value) if key in _INT_KEYS else value
    if kind == "sem_seg" and "classes" in kwargs and not os.path.isfile(str(kwargs["classes"])):
        kwargs["classes"] = [c for c in str(kwargs["classes"]).split(",") if c]  # classes=a,b,c
    func = FOLDER_KINDS[kind]
    params = inspect.signature(func).parameters
    unknown = sorted(set(kwargs) - set(params))
    missing = [p for p, v in params.items() if p != "name" and v.default is inspect.Parameter.empty
               and p not in kwargs]
    if unknown or missing:
        raise ValueError(f"{where}: {kind} takes {', '.join(p for p in params if p != 'name')}"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                         + (f"; missing: {', '.join(missing)}" if missing else ""))
    return func, name, kwargs


def register_from_config(cfg) -> List[str]:
    """Register every ``cfg.DATASETS.REGISTER`` entry; returns the names. All entries are checked first."""
    parsed = [parse_registration(entry) for entry in cfg.DATASETS.REGISTER]
    for func, name, kwargs in parsed:
        func(name, **kwargs)
    return [name for _, name, _ in parsed]
