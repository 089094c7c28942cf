"""
ADE20K semantic segmentation (SceneParsing, 150 classes): ``ade20k_sem_seg_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md)::

    ADEChallengeData2016/images/{training,validation}/*.jpg
    ADEChallengeData2016/annotations/{training,validation}/*.png               0 = other, 1..150 = classes
    ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png    0..149, 255 = ignore:
                                                                               datasets/prepare_ade20k_sem_seg.py

detectron2 already registers these two names with the same layout and class names (its
``ADE20K_SEM_SEG_CATEGORIES``); we add the colours of ``metadata/ade20k_150.json`` and replace the loader, so that a missing folder names the step that
makes it and label maps without an image reach the mapper as bad items.
"""
import os
from functools import partial

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from .loading import datasets_root, load_sem_seg_files, shipped_categories

__all__ = ["ADE20K_SEMANTIC_SPLITS", "register_ade20k_semantic"]

# name -> (images, label maps), under ADEChallengeData2016/
ADE20K_SEMANTIC_SPLITS = {
    "ade20k_sem_seg_train": ("images/training", "annotations_detectron2/training"),
    "ade20k_sem_seg_val": ("images/validation", "annotations_detectron2/validation"),
}

_IMAGE_HINT = "download ADEChallengeData2016.zip (MIT SceneParsing benchmark) and unpack it."
_GT_HINT = "run `python datasets/prepare_ade20k_sem_seg.py`."


def register_ade20k_semantic(name: str, image_root: str, sem_seg_root: str) -> None:
    """Register (or re-register) one split; nothing is read until ``DatasetCatalog.get(name)``."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(
        name, partial(load_sem_seg_files, sem_seg_root, image_root, "png", "jpg", gt_hint=_GT_HINT,
                      image_hint=_IMAGE_HINT)
    )
    MetadataCatalog.get(name).set(
        stuff_classes=ADE20K_SEM_SEG_CATEGORIES[:],
        stuff_colors=[c["color"] for c in shipped_categories("ade20k_150.json")],
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        ignore_label=255,
    )


def register_all_ade20k_semantic(root: str) -> None:
    root = os.path.join(root, "ADEChallengeData2016")
    for name, (images, labels) in ADE20K_SEMANTIC_SPLITS.items():
        register_ade20k_semantic(name, image_root=os.path.join(root, images), sem_seg_root=os.path.join(root, labels))


register_all_ade20k_semantic(datasets_root())
