"""
ADE20K instance segmentation (100 thing classes): ``ade20k_instance_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/ade20k_instance_{train,val}.json     COCO format: datasets/prepare_ade20k_ins_seg.py

Categories come from the JSON, read on first use; contiguous ids follow the category ids.
"""
import os
from functools import partial

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import load_coco_json

from .loading import datasets_root, read_json, register_lazy_metadata, require_path

__all__ = ["register_ade20k_instance"]

_JSON_HINT = "run `python datasets/prepare_ade20k_ins_seg.py`."
_IMAGE_HINT = "download ADEChallengeData2016.zip (MIT SceneParsing benchmark) and unpack it."


def _instance_metadata(json_file: str) -> dict:
    """The metadata ``load_coco_json`` derives from the JSON's categories (sorted by id)."""
    categories = sorted(read_json(json_file, _JSON_HINT)["categories"], key=lambda c: c["id"])
    return {
        "thing_classes": [c["name"] for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def _load(json_file: str, image_root: str, name: str):
    require_path(json_file, _JSON_HINT)
    require_path(image_root, _IMAGE_HINT, "folder")
    return load_coco_json(json_file, image_root, dataset_name=name)


def register_ade20k_instance(name: str, image_root: str, json_file: str) -> None:
    """Register one split; nothing is read until the dataset or its class names are used."""
    DatasetCatalog.register(name, partial(_load, json_file, image_root, name))
    register_lazy_metadata(
        name,
        partial(_instance_metadata, json_file),
        ["thing_classes", "thing_dataset_id_to_contiguous_id"],
        image_root=image_root,
        json_file=json_file,
        evaluator_type="coco",
    )


def register_all_ade20k_instance(root: str) -> None:
    root = os.path.join(root, "ADEChallengeData2016")
    for split, dirname in [("train", "training"), ("val", "validation")]:
        register_ade20k_instance(
            f"ade20k_instance_{split}",
            image_root=os.path.join(root, "images", dirname),
            json_file=os.path.join(root, f"ade20k_instance_{split}.json"),
        )


register_all_ade20k_instance(datasets_root())
