"""
Mapillary Vistas panoptic segmentation (v1.2, 65 classes): ``mapillary_vistas_panoptic_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md), as unpacked from the v1.2 release::

    mapillary_vistas/config.json
    mapillary_vistas/{training,validation}/images/*.jpg
    mapillary_vistas/{training,validation}/labels/*.png                    semantic maps, 65 = unlabeled
    mapillary_vistas/{training,validation}/panoptic/*.png                  COCO-format panoptic PNGs
    mapillary_vistas/{training,validation}/panoptic/panoptic_2018.json     COCO-format panoptic JSON

Categories come from the panoptic JSON, read on first use; their contiguous ids follow the category ids.
The semantic maps number classes by ``config.json``: loading checks that both list the same number of
classes (and warns where names differ), since a mismatch would mislabel every pixel.
"""
import logging
import os
from functools import partial

from detectron2.data import DatasetCatalog

from .loading import (
    PANOPTIC_LAZY_KEYS,
    datasets_root,
    load_panoptic_json,
    panoptic_json_metadata,
    read_json,
    register_lazy_metadata,
)
from .register_mapillary_vistas import DOWNLOAD_HINT, IGNORE_LABEL, mapillary_vistas_labels

__all__ = ["register_mapillary_vistas_panoptic"]

logger = logging.getLogger(__name__)

_HINTS = {"json": DOWNLOAD_HINT, "images": DOWNLOAD_HINT, "panoptic": DOWNLOAD_HINT, "sem_seg": DOWNLOAD_HINT}


def _check_class_order(categories: list, panoptic_json: str, config_json: str) -> None:
    categories = sorted(categories, key=lambda c: c["id"])
    labels = mapillary_vistas_labels(config_json)
    if len(categories) != len(labels):
        raise ValueError(f"'{panoptic_json}' has {len(categories)} categories but '{config_json}' has {len(labels)} "
                         "classes: the panoptic and the semantic annotations number classes differently")
    for i, (c, l) in enumerate(zip(categories, labels)):
        if not {c.get("name"), c.get("supercategory")} & {l.get("name"), l.get("readable")}:
            logger.warning(f"Mapillary Vistas class {i}: '{panoptic_json}' says {c.get('name')!r}, "
                           f"'{config_json}' says {l.get('readable')!r}")


def _load(panoptic_json, image_root, panoptic_root, sem_seg_root, config_json):
    data = read_json(panoptic_json, DOWNLOAD_HINT)
    _check_class_order(data["categories"], panoptic_json, config_json)
    return load_panoptic_json(panoptic_json, image_root, panoptic_root, None, sem_seg_root, hints=_HINTS, data=data)


def register_mapillary_vistas_panoptic(
    name: str, image_root: str, panoptic_root: str, panoptic_json: str, sem_seg_root: str, config_json: str
) -> None:
    """Register one split; nothing is read until the dataset or its class names are used."""
    DatasetCatalog.register(name, partial(_load, panoptic_json, image_root, panoptic_root, sem_seg_root, config_json))
    register_lazy_metadata(
        name,
        partial(panoptic_json_metadata, panoptic_json, DOWNLOAD_HINT),
        PANOPTIC_LAZY_KEYS,
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        evaluator_type="mapillary_vistas_panoptic_seg",
        ignore_label=IGNORE_LABEL,
        label_divisor=1000,
    )


def register_all_mapillary_vistas_panoptic(root: str) -> None:
    root = os.path.join(root, "mapillary_vistas")
    for split, dirname in [("train", "training"), ("val", "validation")]:
        register_mapillary_vistas_panoptic(
            f"mapillary_vistas_panoptic_{split}",
            image_root=os.path.join(root, dirname, "images"),
            panoptic_root=os.path.join(root, dirname, "panoptic"),
            panoptic_json=os.path.join(root, dirname, "panoptic", "panoptic_2018.json"),
            sem_seg_root=os.path.join(root, dirname, "labels"),
            config_json=os.path.join(root, "config.json"),
        )


register_all_mapillary_vistas_panoptic(datasets_root())
