"""
ADE20K instance segmentation (100 thing classes): ``ade20k_instance_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/ade20k_instance_{train,val}.json     COCO format: datasets/prepare_ade20k_ins_seg.py

The official splits use the 100 things of ``metadata/ade20k_150.json`` (contiguous ids in that order), so
that a model is built without the dataset; loading checks the JSON's categories against them.
``register_ade20k_instance`` without ``categories`` reads them from the JSON on first use instead (ids sorted).
"""
import os
from functools import partial
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_instances import load_coco_instance_json
from .loading import (
    check_categories,
    datasets_root,
    instance_metadata,
    read_json,
    register_lazy_metadata,
    require_path,
    shipped_categories,
)

__all__ = ["ADE20K_INSTANCE_SPLITS", "register_ade20k_instance"]

# name -> (images, instance JSON), under ADEChallengeData2016/
ADE20K_INSTANCE_SPLITS = {
    "ade20k_instance_train": ("images/training", "ade20k_instance_train.json"),
    "ade20k_instance_val": ("images/validation", "ade20k_instance_val.json"),
}

_JSON_HINT = "run `python datasets/prepare_ade20k_ins_seg.py`."
_IMAGE_HINT = "download ADEChallengeData2016.zip (MIT SceneParsing benchmark) and unpack it."


def _instance_metadata(json_file: str) -> dict:
    """The metadata ``load_coco_json`` derives from the JSON's categories (sorted by id)."""
    categories = sorted(read_json(json_file, _JSON_HINT)["categories"], key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def _load(json_file: str, image_root: str, name: str, categories: Optional[List[dict]] = None):
    require_path(json_file, _JSON_HINT)
    require_path(image_root, _IMAGE_HINT, "folder")
    if categories is not None:
        check_categories(json_file, read_json(json_file, _JSON_HINT)["categories"], categories,
                         "Make it with `python datasets/prepare_ade20k_ins_seg.py`.")
    return load_coco_instance_json(json_file, image_root, dataset_name=name, hint=_JSON_HINT)


def register_ade20k_instance(name: str, image_root: str, json_file: str,
                             categories: Optional[List[dict]] = None) -> None:
    """Register one split; nothing is read until the dataset (or, without ``categories``, its class names) is used.

    Args:
        categories: the ADE20K classes ({"id", "name", "isthing", "color"}); the things among them, in this
            order, are the instance classes, and the JSON must have the same. Default: read from the JSON.
    """
    values = dict(image_root=image_root, json_file=json_file, evaluator_type="coco")
    if categories is None:
        DatasetCatalog.register(name, partial(_load, json_file, image_root, name))
        register_lazy_metadata(name, partial(_instance_metadata, json_file),
                               ["thing_classes", "thing_dataset_id_to_contiguous_id"], **values)
        return
    things = [c for c in categories if c.get("isthing", 1)]
    DatasetCatalog.register(name, partial(_load, json_file, image_root, name, things))
    MetadataCatalog.get(name).set(**values, **instance_metadata(things))


def register_all_ade20k_instance(root: str) -> None:
    root = os.path.join(root, "ADEChallengeData2016")
    categories = shipped_categories("ade20k_150.json")
    for name, (images, json_file) in ADE20K_INSTANCE_SPLITS.items():
        register_ade20k_instance(name, os.path.join(root, images), os.path.join(root, json_file), categories)


register_all_ade20k_instance(datasets_root())
