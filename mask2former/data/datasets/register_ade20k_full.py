"""
ADE20K-full semantic segmentation (847 classes): ``ade20k_full_sem_seg_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md), all but the first line made by
``datasets/prepare_ade20k_full_sem_seg.py`` from the full ADE20K release (``index_ade20k.pkl`` and the
``*_seg.png`` masks)::

    ADE20K_2021_17_01/                                          the full ADE20K release
    ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg
    ADE20K_2021_17_01/annotations_detectron2/{training,validation}/*.tif   uint16 class ids, 65535 = ignore
    ADE20K_2021_17_01/ade20k_full_categories.json               [{"trainId", "id" (ADE20K object index), "name"}]

The registered ``ade20k_full_sem_seg_{train,val}`` take their 847 class names from the package
(``mask2former/data/metadata/ade20k_full_847.json``, the official checkpoints' class order), so a model and the
demo need no dataset; loading the dataset checks that the preparation script's ``ade20k_full_categories.json``
lists the same classes in the same order. Other folders registered with :func:`register_ade20k_full` read their
names from their own categories file.
"""
import os
from functools import partial

from detectron2.data import DatasetCatalog, MetadataCatalog

from .loading import datasets_root, load_sem_seg_files, read_json, register_lazy_metadata, shipped_categories

__all__ = ["ade20k_full_classes", "register_ade20k_full"]

IGNORE_LABEL = 65535
SHIPPED_CATEGORIES = "ade20k_full_847.json"
_PREPARE_HINT = "run `python datasets/prepare_ade20k_full_sem_seg.py` on the full ADE20K release (ADE20K_2021_17_01)."


def ade20k_full_classes(categories_json: str) -> dict:
    """{"stuff_classes": names in trainId order} from the categories file of the preparation script."""
    categories = read_json(categories_json, _PREPARE_HINT)
    categories = sorted(categories, key=lambda c: c["trainId"])
    if [c["trainId"] for c in categories] != list(range(len(categories))):
        raise ValueError(f"'{categories_json}': trainIds must be 0..N-1. {_PREPARE_HINT}")
    return {"stuff_classes": [c["name"] for c in categories]}


def _check_against_shipped(categories_json: str, shipped: list) -> None:
    found = [(c["trainId"], c["id"]) for c in sorted(read_json(categories_json, _PREPARE_HINT),
                                                      key=lambda c: c["trainId"])]
    expected = [(c["trainId"], c["id"]) for c in shipped]
    if found != expected:
        first = next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), min(len(found), len(expected)))
        raise ValueError(
            f"'{categories_json}' lists {len(found)} classes, but the official ADE20K-full checkpoints use the "
            f"{len(expected)} of mask2former/data/metadata/{SHIPPED_CATEGORIES}; they differ first at trainId {first}. "
            "Prepare the ADE20K_2021_17_01 release with datasets/prepare_ade20k_full_sem_seg.py, or register your "
            "folder under another name with register_ade20k_full()."
        )


def _load_checked(categories_json, shipped, sem_seg_root, image_root):
    _check_against_shipped(categories_json, shipped)
    return load_sem_seg_files(sem_seg_root, image_root, "tif", "jpg", gt_hint=_PREPARE_HINT, image_hint=_PREPARE_HINT)


def register_ade20k_full(name: str, image_root: str, sem_seg_root: str, categories_json: str,
                         shipped: bool = False) -> None:
    """Register one split; nothing is read until the dataset (or, unless ``shipped``, its class names) is used.

    ``shipped``: take the class names from the package's official 847-class list, and check the folder's
    categories file against it when the dataset is loaded.
    """
    if shipped:
        categories = shipped_categories(SHIPPED_CATEGORIES)
        DatasetCatalog.register(name, partial(_load_checked, categories_json, categories, sem_seg_root, image_root))
        MetadataCatalog.get(name).set(
            stuff_classes=[c["name"] for c in categories], image_root=image_root, sem_seg_root=sem_seg_root,
            categories_json=categories_json, evaluator_type="sem_seg", ignore_label=IGNORE_LABEL,
        )
        return
    DatasetCatalog.register(
        name, partial(load_sem_seg_files, sem_seg_root, image_root, "tif", "jpg", gt_hint=_PREPARE_HINT,
                      image_hint=_PREPARE_HINT)
    )
    register_lazy_metadata(
        name,
        partial(ade20k_full_classes, categories_json),
        ["stuff_classes"],
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        categories_json=categories_json,
        evaluator_type="sem_seg",
        ignore_label=IGNORE_LABEL,
    )


def register_all_ade20k_full(root: str) -> None:
    root = os.path.join(root, "ADE20K_2021_17_01")
    for split, dirname in [("train", "training"), ("val", "validation")]:
        register_ade20k_full(
            f"ade20k_full_sem_seg_{split}",
            image_root=os.path.join(root, "images_detectron2", dirname),
            sem_seg_root=os.path.join(root, "annotations_detectron2", dirname),
            categories_json=os.path.join(root, "ade20k_full_categories.json"),
            shipped=True,
        )


register_all_ade20k_full(datasets_root())
