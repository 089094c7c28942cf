"""
COCO instance splits (``coco_2017_train``, ``coco_2017_val``, ..., ``keypoints_coco_*``): detectron2 registers
them; this module keeps their names, paths and metadata and reads their JSON with
:func:`~.coco_instances.load_coco_instance_json`, so that a malformed file is an error naming the file and the
field. The dicts are the ones detectron2's ``load_coco_json`` gives.
"""
from functools import partial

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_instances import load_coco_instance_json

__all__ = ["use_checked_coco_instance_loader"]

_HINT = "Download it from cocodataset.org and unpack it under $DETECTRON2_DATASETS/coco (see datasets/README.md)."
_PREFIXES = ("coco_20", "keypoints_coco_20")  # the names of detectron2's builtin COCO instance splits


def use_checked_coco_instance_loader(name: str) -> None:
    """Load the registered COCO instance dataset ``name`` (metadata "json_file", "image_root") with the checking
    reader; its metadata is left as it is."""
    meta = MetadataCatalog.get(name)
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, partial(load_coco_instance_json, meta.json_file, meta.image_root, name, hint=_HINT))


def _builtin_coco_instance_splits():
    for name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (name.startswith(_PREFIXES) and meta.get("evaluator_type", None) == "coco"
                and meta.get("json_file", None) and meta.get("image_root", None)):
            yield name


for _name in list(_builtin_coco_instance_splits()):
    use_checked_coco_instance_loader(_name)
