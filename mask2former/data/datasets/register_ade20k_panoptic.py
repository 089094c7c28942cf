"""
ADE20K panoptic segmentation (150 classes: 100 things, 50 stuff): ``ade20k_panoptic_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png   datasets/prepare_ade20k_sem_seg.py
    ADEChallengeData2016/ade20k_panoptic_{train,val}.json                      } datasets/prepare_ade20k_pan_seg.py
    ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png                     }
    ADEChallengeData2016/ade20k_instance_{train,val}.json                      datasets/prepare_ade20k_ins_seg.py
                                                                               (for instance evaluation)

Categories (names, which are things, dataset ids) come from the panoptic JSON, read on first use; their
contiguous ids follow the category ids (the 150 SceneParsing classes), matching the semantic maps.
"""
import os
from functools import partial

from detectron2.data import DatasetCatalog

from .loading import (
    PANOPTIC_LAZY_KEYS,
    datasets_root,
    load_panoptic_json,
    panoptic_json_metadata,
    register_lazy_metadata,
)

__all__ = ["register_ade20k_panoptic"]

_HINTS = {
    "json": "run `python datasets/prepare_ade20k_pan_seg.py`.",
    "images": "download ADEChallengeData2016.zip (MIT SceneParsing benchmark) and unpack it.",
    "panoptic": "run `python datasets/prepare_ade20k_pan_seg.py`.",
    "sem_seg": "run `python datasets/prepare_ade20k_sem_seg.py`.",
}


def register_ade20k_panoptic(
    name: str, image_root: str, panoptic_root: str, panoptic_json: str, sem_seg_root: str, instances_json: str
) -> None:
    """Register one split; nothing is read until the dataset or its class names are used."""
    DatasetCatalog.register(
        name, partial(load_panoptic_json, panoptic_json, image_root, panoptic_root, None, sem_seg_root, hints=_HINTS)
    )
    register_lazy_metadata(
        name,
        partial(panoptic_json_metadata, panoptic_json, _HINTS["json"]),
        PANOPTIC_LAZY_KEYS,
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="ade20k_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
    )


def register_all_ade20k_panoptic(root: str) -> None:
    root = os.path.join(root, "ADEChallengeData2016")
    for split, dirname in [("train", "training"), ("val", "validation")]:
        register_ade20k_panoptic(
            f"ade20k_panoptic_{split}",
            image_root=os.path.join(root, "images", dirname),
            panoptic_root=os.path.join(root, f"ade20k_panoptic_{split}"),
            panoptic_json=os.path.join(root, f"ade20k_panoptic_{split}.json"),
            sem_seg_root=os.path.join(root, "annotations_detectron2", dirname),
            instances_json=os.path.join(root, f"ade20k_instance_{split}.json"),
        )


register_all_ade20k_panoptic(datasets_root())
