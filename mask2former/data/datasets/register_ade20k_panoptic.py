"""
ADE20K panoptic segmentation (150 classes: 100 things, 50 stuff): ``ade20k_panoptic_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png   datasets/prepare_ade20k_sem_seg.py
    ADEChallengeData2016/ade20k_panoptic_{train,val}.json                      } datasets/prepare_ade20k_pan_seg.py
    ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png                     }
    ADEChallengeData2016/ade20k_instance_{train,val}.json                      datasets/prepare_ade20k_ins_seg.py
                                                                               (for instance evaluation)

The official splits use the classes shipped in ``metadata/ade20k_150.json`` (names, colours, which are
things; contiguous ids = the 150 SceneParsing classes, as in the semantic maps), so that a model is built
without the dataset; loading checks the panoptic JSON's categories against them. ``register_ade20k_panoptic``
without ``categories`` reads them from the panoptic JSON on first use instead (ids sorted).
"""
import os
from functools import partial
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .loading import (
    PANOPTIC_LAZY_KEYS,
    check_categories,
    datasets_root,
    load_panoptic_json,
    panoptic_json_metadata,
    panoptic_metadata,
    read_json,
    register_lazy_metadata,
    shipped_categories,
)

__all__ = ["ADE20K_PANOPTIC_SPLITS", "register_ade20k_panoptic"]

# name -> (images, panoptic PNGs, panoptic JSON, semantic maps, instance JSON), under ADEChallengeData2016/
ADE20K_PANOPTIC_SPLITS = {
    "ade20k_panoptic_train": ("images/training", "ade20k_panoptic_train", "ade20k_panoptic_train.json",
                              "annotations_detectron2/training", "ade20k_instance_train.json"),
    "ade20k_panoptic_val": ("images/validation", "ade20k_panoptic_val", "ade20k_panoptic_val.json",
                            "annotations_detectron2/validation", "ade20k_instance_val.json"),
}

_HINTS = {
    "json": "run `python datasets/prepare_ade20k_pan_seg.py`.",
    "images": "download ADEChallengeData2016.zip (MIT SceneParsing benchmark) and unpack it.",
    "panoptic": "run `python datasets/prepare_ade20k_pan_seg.py`.",
    "sem_seg": "run `python datasets/prepare_ade20k_sem_seg.py`.",
}


def _load_checked(panoptic_json, image_root, panoptic_root, sem_seg_root, categories, meta):
    data = read_json(panoptic_json, _HINTS["json"])
    check_categories(panoptic_json, data["categories"], categories,
                     "Make it with `python datasets/prepare_ade20k_pan_seg.py` (category ids 1..150, the raw label values).")
    return load_panoptic_json(panoptic_json, image_root, panoptic_root, meta, sem_seg_root, hints=_HINTS, data=data)


def register_ade20k_panoptic(
    name: str, image_root: str, panoptic_root: str, panoptic_json: str, sem_seg_root: str, instances_json: str,
    categories: Optional[List[dict]] = None,
) -> None:
    """Register one split; nothing is read until the dataset (or, without ``categories``, its class names) is used.

    Args:
        categories: the classes ({"id", "name", "isthing", "color"}) in contiguous-id order; the panoptic JSON
            must have the same. Default: read from the panoptic JSON on first use.
    """
    values = dict(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="ade20k_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
    )
    if categories is None:
        DatasetCatalog.register(
            name, partial(load_panoptic_json, panoptic_json, image_root, panoptic_root, None, sem_seg_root, hints=_HINTS)
        )
        register_lazy_metadata(name, partial(panoptic_json_metadata, panoptic_json, _HINTS["json"]), PANOPTIC_LAZY_KEYS,
                               **values)
        return
    meta = panoptic_metadata(categories)
    DatasetCatalog.register(
        name, partial(_load_checked, panoptic_json, image_root, panoptic_root, sem_seg_root, categories, meta))
    MetadataCatalog.get(name).set(**values, **meta)


def register_all_ade20k_panoptic(root: str) -> None:
    root = os.path.join(root, "ADEChallengeData2016")
    categories = shipped_categories("ade20k_150.json")
    for name, paths in ADE20K_PANOPTIC_SPLITS.items():
        register_ade20k_panoptic(name, *(os.path.join(root, p) for p in paths), categories=categories)


register_all_ade20k_panoptic(datasets_root())
