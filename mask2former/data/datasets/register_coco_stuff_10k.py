"""
COCO-Stuff-10k semantic segmentation (171 classes): ``coco_2017_{train,test}_stuff_10k_sem_seg``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md)::

    coco/coco_stuff_10k/                                  cocostuff-10k-v1.1 (images/, annotations/*.mat, imageLists/)
    coco/coco_stuff_10k/images_detectron2/{train,test}/*.jpg       } datasets/prepare_coco_stuff_10k.py
    coco/coco_stuff_10k/annotations_detectron2/{train,test}/*.png  } 0..170, 255 = ignore

Class names: ``metadata/coco_stuff_171.json`` (80 COCO things and 91 stuff classes, ascending COCO-Stuff id),
read on first use.
"""
import os
from functools import partial

from detectron2.data import DatasetCatalog

from .loading import datasets_root, load_sem_seg_files, read_json, register_lazy_metadata

__all__ = ["COCO_STUFF_171_JSON", "coco_stuff_171_categories", "register_coco_stuff_10k"]

COCO_STUFF_171_JSON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "metadata", "coco_stuff_171.json")
_PREPARE_HINT = "run `python datasets/prepare_coco_stuff_10k.py` on the unpacked cocostuff-10k-v1.1.zip."


def coco_stuff_171_categories() -> list:
    """The 171 categories ({"id" (COCO-Stuff id), "name", "isthing"}) in contiguous-id order."""
    return read_json(COCO_STUFF_171_JSON, "it is part of the mask2former package.")["categories"]


def _metadata() -> dict:
    categories = coco_stuff_171_categories()
    return {
        "stuff_classes": [c["name"] for c in categories],
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def register_coco_stuff_10k(name: str, image_root: str, sem_seg_root: str) -> None:
    """Register one split; nothing is read until the dataset or its class names are used."""
    DatasetCatalog.register(
        name, partial(load_sem_seg_files, sem_seg_root, image_root, "png", "jpg", gt_hint=_PREPARE_HINT,
                      image_hint=_PREPARE_HINT)
    )
    register_lazy_metadata(
        name,
        _metadata,
        ["stuff_classes", "stuff_dataset_id_to_contiguous_id"],
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        ignore_label=255,
    )


def register_all_coco_stuff_10k(root: str) -> None:
    root = os.path.join(root, "coco", "coco_stuff_10k")
    for split in ["train", "test"]:
        register_coco_stuff_10k(
            f"coco_2017_{split}_stuff_10k_sem_seg",
            image_root=os.path.join(root, "images_detectron2", split),
            sem_seg_root=os.path.join(root, "annotations_detectron2", split),
        )


register_all_coco_stuff_10k(datasets_root())
