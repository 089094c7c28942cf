"""
Mapillary Vistas panoptic segmentation (v1.2, 65 classes): ``mapillary_vistas_panoptic_{train,val}``.

Layout under ``$DETECTRON2_DATASETS`` (see datasets/README.md), as unpacked from the v1.2 release::

    mapillary_vistas/config.json
    mapillary_vistas/{training,validation}/images/*.jpg
    mapillary_vistas/{training,validation}/labels/*.png                    semantic maps, 65 = unlabeled
    mapillary_vistas/{training,validation}/panoptic/*.png                  COCO-format panoptic PNGs
    mapillary_vistas/{training,validation}/panoptic/panoptic_2018.json     COCO-format panoptic JSON

The official splits use the classes shipped in ``metadata/mapillary_vistas_65.json``, so that a model is
built without the dataset; loading checks the panoptic JSON's categories against them. Without
``categories``, ``register_mapillary_vistas_panoptic`` reads them from the panoptic JSON on first use (their
contiguous ids follow the category ids). The semantic maps number classes by ``config.json``: loading checks that both list the same number of
classes (and warns where names differ), since a mismatch would mislabel every pixel.
"""
import logging
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
from .register_mapillary_vistas import DOWNLOAD_HINT, IGNORE_LABEL, check_config_labels, mapillary_vistas_labels

__all__ = ["MAPILLARY_VISTAS_PANOPTIC_SPLITS", "register_mapillary_vistas_panoptic"]

# name -> (images, panoptic PNGs, panoptic JSON, semantic maps), under mapillary_vistas/
MAPILLARY_VISTAS_PANOPTIC_SPLITS = {
    "mapillary_vistas_panoptic_train": ("training/images", "training/panoptic", "training/panoptic/panoptic_2018.json",
                                        "training/labels"),
    "mapillary_vistas_panoptic_val": ("validation/images", "validation/panoptic",
                                      "validation/panoptic/panoptic_2018.json", "validation/labels"),
}

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


def _load(panoptic_json, image_root, panoptic_root, sem_seg_root, config_json, categories=None):
    data = read_json(panoptic_json, DOWNLOAD_HINT)
    meta = None
    if categories is None:
        _check_class_order(data["categories"], panoptic_json, config_json)
    else:
        check_categories(panoptic_json, data["categories"], categories, "Is it the panoptic_2018.json of v1.2?")
        check_config_labels(config_json, categories)
        meta = panoptic_metadata(categories)
    return load_panoptic_json(panoptic_json, image_root, panoptic_root, meta, sem_seg_root, hints=_HINTS, data=data)


def register_mapillary_vistas_panoptic(
    name: str, image_root: str, panoptic_root: str, panoptic_json: str, sem_seg_root: str, config_json: str,
    categories: Optional[List[dict]] = None,
) -> None:
    """Register one split; nothing is read until the dataset (or, without ``categories``, its class names) is used.

    Args:
        categories: the 65 classes ({"id", "name", "isthing", "color"}) in contiguous-id order; the panoptic
            JSON and ``config.json`` must have the same. Default: read from the panoptic JSON on first use.
    """
    values = dict(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        evaluator_type="mapillary_vistas_panoptic_seg",
        ignore_label=IGNORE_LABEL,
        label_divisor=1000,
    )
    DatasetCatalog.register(
        name, partial(_load, panoptic_json, image_root, panoptic_root, sem_seg_root, config_json, categories))
    if categories is None:
        register_lazy_metadata(name, partial(panoptic_json_metadata, panoptic_json, DOWNLOAD_HINT), PANOPTIC_LAZY_KEYS,
                               **values)
    else:
        MetadataCatalog.get(name).set(**values, **panoptic_metadata(categories))


def register_all_mapillary_vistas_panoptic(root: str) -> None:
    root = os.path.join(root, "mapillary_vistas")
    categories = shipped_categories("mapillary_vistas_65.json")
    for name, paths in MAPILLARY_VISTAS_PANOPTIC_SPLITS.items():
        register_mapillary_vistas_panoptic(name, *(os.path.join(root, p) for p in paths),
                                           os.path.join(root, "config.json"), categories)


register_all_mapillary_vistas_panoptic(datasets_root())
