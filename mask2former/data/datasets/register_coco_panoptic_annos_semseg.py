"""
COCO panoptic segmentation with semantic label maps: ``coco_2017_{train,val}_panoptic_with_sem_seg``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md)::

    coco/{train,val}2017/                       images
    coco/panoptic_{train,val}2017/              panoptic PNGs      } from COCO's panoptic annotations
    coco/annotations/panoptic_{train,val}2017.json                 }
    coco/annotations/instances_{train,val}2017.json                  for instance evaluation
    coco/panoptic_semseg_{train,val}2017/       semantic PNGs, made by
                                                datasets/prepare_coco_semantic_annos_from_panoptic_annos.py

The dicts are the panoptic ones plus "sem_seg_file_name". Classes are detectron2's 133 COCO panoptic
categories (80 things, then 53 stuff); contiguous ids index that list, in semantic maps too.
"""
import os
from functools import partial

from detectron2.data import DatasetCatalog, MetadataCatalog

from .loading import datasets_root, load_panoptic_json, panoptic_metadata, shipped_categories

__all__ = ["coco_panoptic_metadata", "register_coco_panoptic_annos_sem_seg"]

_SPLITS = {
    "coco_2017_train_panoptic_with_sem_seg": ("train2017", "panoptic_train2017", "panoptic_semseg_train2017"),
    "coco_2017_val_panoptic_with_sem_seg": ("val2017", "panoptic_val2017", "panoptic_semseg_val2017"),
}

_DOWNLOAD = "download it from cocodataset.org (2017 images / panoptic annotations) and unpack it into coco/."
_HINTS = {
    "json": _DOWNLOAD,
    "images": _DOWNLOAD,
    "panoptic": _DOWNLOAD + " The panoptic PNGs come zipped inside the panoptic annotations archive.",
    "sem_seg": "run `python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py`.",
}


def coco_panoptic_metadata() -> dict:
    """Class names, colours and id maps of COCO panoptic (``metadata/coco_panoptic_133.json``, things first)."""
    return panoptic_metadata(shipped_categories("coco_panoptic_133.json"))


def register_coco_panoptic_annos_sem_seg(
    name: str, image_root: str, panoptic_root: str, panoptic_json: str, sem_seg_root: str, instances_json: str
) -> None:
    """Register one split; nothing is read until ``DatasetCatalog.get(name)``."""
    meta = coco_panoptic_metadata()
    DatasetCatalog.register(
        name, partial(load_panoptic_json, panoptic_json, image_root, panoptic_root, meta, sem_seg_root, hints=_HINTS)
    )
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **meta,
    )


def register_all_coco_panoptic_annos_sem_seg(root: str) -> None:
    for name, (images, panoptic, semseg) in _SPLITS.items():
        register_coco_panoptic_annos_sem_seg(
            name,
            image_root=os.path.join(root, "coco", images),
            panoptic_root=os.path.join(root, "coco", panoptic),
            panoptic_json=os.path.join(root, "coco", "annotations", panoptic + ".json"),
            sem_seg_root=os.path.join(root, "coco", semseg),
            instances_json=os.path.join(root, "coco", "annotations", "instances_" + images + ".json"),
        )


register_all_coco_panoptic_annos_sem_seg(datasets_root())
