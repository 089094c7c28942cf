"""
Mapillary Vistas semantic segmentation (v1.2, 65 classes): ``mapillary_vistas_sem_seg_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md), as unpacked from the v1.2 release; no
preparation needed::

    mapillary_vistas/config.json                               labels: name, readable name, colour (66 with "unlabeled")
    mapillary_vistas/{training,validation}/images/*.jpg
    mapillary_vistas/{training,validation}/labels/*.png        class ids 0..64, 65 = unlabeled (ignored)

The official splits use the classes shipped in ``metadata/mapillary_vistas_65.json`` (the "readable" names
and colours of ``config.json``, without the final "unlabeled" label, whose id is the ignore label), so that a
model is built without the dataset; loading checks ``config.json`` against them. ``register_mapillary_vistas``
without ``categories`` reads them from ``config.json`` on first use instead.
"""
import os
from functools import partial
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .loading import (
    check_categories,
    datasets_root,
    load_sem_seg_files,
    read_json,
    register_lazy_metadata,
    shipped_categories,
)

__all__ = ["IGNORE_LABEL", "MAPILLARY_VISTAS_SEMANTIC_SPLITS", "mapillary_vistas_labels", "register_mapillary_vistas"]

# name -> (images, label maps), under mapillary_vistas/
MAPILLARY_VISTAS_SEMANTIC_SPLITS = {
    "mapillary_vistas_sem_seg_train": ("training/images", "training/labels"),
    "mapillary_vistas_sem_seg_val": ("validation/images", "validation/labels"),
}

IGNORE_LABEL = 65
DOWNLOAD_HINT = "download Mapillary Vistas v1.2 (mapillary.com/dataset/vistas) and unpack it into mapillary_vistas/."


def mapillary_vistas_labels(config_json: str) -> list:
    """The labels of ``config.json`` without the final "unlabeled" one, whose index must be IGNORE_LABEL."""
    labels = read_json(config_json, DOWNLOAD_HINT).get("labels", [])
    last = labels[-1] if labels else {}
    unlabeled = "unlabeled" in (last.get("readable", "").lower(), last.get("name", "").lower().split("--")[-1])
    if len(labels) != IGNORE_LABEL + 1 or not unlabeled:
        raise ValueError(
            f"'{config_json}' has {len(labels)} labels; expected the {IGNORE_LABEL} classes of Mapillary Vistas v1.2 "
            "followed by 'unlabeled'"
        )
    return labels[:-1]


def _metadata(config_json: str) -> dict:
    labels = mapillary_vistas_labels(config_json)
    return {"stuff_classes": [l["readable"] for l in labels], "stuff_colors": [list(l["color"]) for l in labels]}


def check_config_labels(config_json: str, categories: List[dict]) -> None:
    """``config.json``'s labels (readable names, in class-id order) must be the shipped ``categories``."""
    labels = mapillary_vistas_labels(config_json)
    check_categories(config_json, [{"id": i, "name": l["readable"]} for i, l in enumerate(labels)],
                     [{"id": i, "name": c["name"]} for i, c in enumerate(categories)],
                     "Is it the config.json of Mapillary Vistas v1.2?")


def _load_checked(sem_seg_root: str, image_root: str, config_json: str, categories: List[dict]):
    check_config_labels(config_json, categories)
    return load_sem_seg_files(sem_seg_root, image_root, "png", "jpg", gt_hint=DOWNLOAD_HINT, image_hint=DOWNLOAD_HINT)


def register_mapillary_vistas(name: str, image_root: str, sem_seg_root: str, config_json: str,
                              categories: Optional[List[dict]] = None) -> None:
    """Register one split; nothing is read until the dataset (or, without ``categories``, its class names) is used.

    Args:
        categories: the 65 classes ({"name", "color"}) in class-id order; ``config.json`` must have the same.
            Default: read from ``config.json`` on first use.
    """
    values = dict(image_root=image_root, sem_seg_root=sem_seg_root, evaluator_type="sem_seg", ignore_label=IGNORE_LABEL)
    if categories is None:
        DatasetCatalog.register(
            name, partial(load_sem_seg_files, sem_seg_root, image_root, "png", "jpg", gt_hint=DOWNLOAD_HINT,
                          image_hint=DOWNLOAD_HINT)
        )
        register_lazy_metadata(name, partial(_metadata, config_json), ["stuff_classes", "stuff_colors"], **values)
        return
    DatasetCatalog.register(name, partial(_load_checked, sem_seg_root, image_root, config_json, categories))
    MetadataCatalog.get(name).set(stuff_classes=[c["name"] for c in categories],
                                  stuff_colors=[list(c["color"]) for c in categories], **values)


def register_all_mapillary_vistas(root: str) -> None:
    root = os.path.join(root, "mapillary_vistas")
    categories = shipped_categories("mapillary_vistas_65.json")
    for name, (images, labels) in MAPILLARY_VISTAS_SEMANTIC_SPLITS.items():
        register_mapillary_vistas(name, os.path.join(root, images), os.path.join(root, labels),
                                  os.path.join(root, "config.json"), categories)


register_all_mapillary_vistas(datasets_root())
