"""
Mapillary Vistas semantic segmentation (v1.2, 65 classes): ``mapillary_vistas_sem_seg_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md), as unpacked from the v1.2 release; no
preparation needed::

    mapillary_vistas/config.json                               labels: name, readable name, colour (66 with "unlabeled")
    mapillary_vistas/{training,validation}/images/*.jpg
    mapillary_vistas/{training,validation}/labels/*.png        class ids 0..64, 65 = unlabeled (ignored)

Class names and colours are read from ``config.json`` on first use (the "readable" names, without the
final "unlabeled" label, whose id is the ignore label).
"""
import os
from functools import partial

from detectron2.data import DatasetCatalog

from .loading import datasets_root, load_sem_seg_files, read_json, register_lazy_metadata

__all__ = ["IGNORE_LABEL", "mapillary_vistas_labels", "register_mapillary_vistas"]

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


def register_mapillary_vistas(name: str, image_root: str, sem_seg_root: str, config_json: str) -> None:
    """Register one split; nothing is read until the dataset or its class names are used."""
    DatasetCatalog.register(
        name, partial(load_sem_seg_files, sem_seg_root, image_root, "png", "jpg", gt_hint=DOWNLOAD_HINT,
                      image_hint=DOWNLOAD_HINT)
    )
    register_lazy_metadata(
        name,
        partial(_metadata, config_json),
        ["stuff_classes", "stuff_colors"],
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        ignore_label=IGNORE_LABEL,
    )


def register_all_mapillary_vistas(root: str) -> None:
    root = os.path.join(root, "mapillary_vistas")
    for split, dirname in [("train", "training"), ("val", "validation")]:
        register_mapillary_vistas(
            f"mapillary_vistas_sem_seg_{split}",
            image_root=os.path.join(root, dirname, "images"),
            sem_seg_root=os.path.join(root, dirname, "labels"),
            config_json=os.path.join(root, "config.json"),
        )


register_all_mapillary_vistas(datasets_root())
