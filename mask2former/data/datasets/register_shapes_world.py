"""
Registers the generated "shapes world" dataset (see shapes_world.py) on ``import mask2former``:

    shapes_world_{train,val}_panoptic   detectron2 COCO panoptic dicts (file_name, image_id, pan_seg_file_name,
                                        segments_info with contiguous category_id and isthing) plus
                                        sem_seg_file_name; evaluator_type "coco_panoptic_seg"
    shapes_world_{train,val}_instance   COCO instance dicts (load_coco_instance_json); evaluator_type "coco"
    shapes_world_{train,val}_sem_seg    semantic dicts from load_sem_seg; evaluator_type "sem_seg"

and the same names with the prefix ``shapes_world_dense`` for a second world with other statistics, drawn by the
same generator with other parameters (``DENSE_PARAMS``): 8-24 shapes per image instead of 3-14, at most a quarter
of the shorter image side instead of a half (so more and smaller objects), and textures magnified twice, so that
bricks, waves and grains are about as large as the small shapes. It is there to check that a training recipe
chosen on the default world is not tuned to its statistics.

The data lives in ``$DETECTRON2_DATASETS/shapes_world`` (default ``datasets/shapes_world``; the second world in
``shapes_world_dense``). Registering
generates nothing: the first ``DatasetCatalog.get`` of any of these names generates the folder (the default
3000 + 50 images take about a minute on 2 cores, 250 MB), later calls reuse it. Evaluators that read
annotation files in their constructor (COCOEvaluator reads ``json_file``) need the data to exist: build the
dataset (e.g. the test loader) first, as detectron2's trainers do, or call
:func:`~mask2former.data.synthetic.shapes_world.ensure_shapes_world`.

Like Mask2Former's COCO panoptic registration, ``stuff_classes`` lists all classes (things, then stuff) so
that semantic segmentation covers every class; ``thing_classes`` lists the things only.
"""
import os
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

from ..synthetic.shapes_world import (
    DEFAULT_PARAMS,
    IGNORE_LABEL,
    LABEL_DIVISOR,
    SPLITS,
    ensure_shapes_world,
    shapes_world_categories,
    shapes_world_paths,
)
from .coco_instances import load_coco_instance_json

__all__ = ["DENSE_PARAMS", "register_shapes_world", "shapes_world_metadata"]

DENSE_PARAMS = {"min_shapes": 8, "max_shapes": 24, "largest_shape": 0.25, "texture_scale": 2.0}


def shapes_world_metadata() -> dict:
    """Class names, colours and dataset id -> contiguous id maps of shapes world (things first)."""
    cats = shapes_world_categories()
    return {
        "thing_classes": [c["name"] for c in cats if c["isthing"]],
        "thing_colors": [c["color"] for c in cats if c["isthing"]],
        "stuff_classes": [c["name"] for c in cats],
        "stuff_colors": [c["color"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats) if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }


def _load_panoptic(folder: str, split: str, params: dict, meta: dict) -> List[dict]:
    ensure_shapes_world(folder, **params)
    paths = shapes_world_paths(folder, split)
    dicts = load_coco_panoptic_json(paths["panoptic_json"], paths["image_root"], paths["panoptic_root"], meta)
    for d in dicts:
        stem = os.path.splitext(os.path.basename(d["pan_seg_file_name"]))[0]
        d["sem_seg_file_name"] = os.path.join(paths["sem_seg_root"], stem + ".png")
    return dicts


def _load_instance(folder: str, split: str, params: dict, name: str) -> List[dict]:
    ensure_shapes_world(folder, **params)
    paths = shapes_world_paths(folder, split)
    return load_coco_instance_json(paths["instances_json"], paths["image_root"], dataset_name=name)


def _load_sem_seg(folder: str, split: str, params: dict) -> List[dict]:
    ensure_shapes_world(folder, **params)
    paths = shapes_world_paths(folder, split)
    return load_sem_seg(paths["sem_seg_root"], paths["image_root"], gt_ext="png", image_ext="jpg")


def register_shapes_world(
    root: str,
    *,
    prefix: str = "shapes_world",
    dirname: str = "shapes_world",
    num_train: int = DEFAULT_PARAMS["num_train"],
    num_val: int = DEFAULT_PARAMS["num_val"],
    seed: int = DEFAULT_PARAMS["seed"],
    min_size: int = DEFAULT_PARAMS["min_size"],
    max_size: int = DEFAULT_PARAMS["max_size"],
    min_shapes: int = DEFAULT_PARAMS["min_shapes"],
    max_shapes: int = DEFAULT_PARAMS["max_shapes"],
    largest_shape: float = DEFAULT_PARAMS["largest_shape"],
    texture_scale: float = DEFAULT_PARAMS["texture_scale"],
) -> List[str]:
    """
    Register ``{prefix}_{train,val}_{panoptic,instance,sem_seg}`` for the data in ``root/dirname``, generated
    with the given parameters on first use (:func:`ensure_shapes_world`). Nothing is generated or read here.
    Returns the registered names.
    """
    folder = os.path.join(root, dirname)
    params = dict(
        num_train=num_train, num_val=num_val, seed=seed, min_size=min_size, max_size=max_size,
        min_shapes=min_shapes, max_shapes=max_shapes, largest_shape=largest_shape, texture_scale=texture_scale,
    )
    meta = shapes_world_metadata()
    names = []
    for split in SPLITS:
        paths = shapes_world_paths(folder, split)

        name = f"{prefix}_{split}_panoptic"
        DatasetCatalog.register(name, lambda s=split: _load_panoptic(folder, s, params, meta))
        MetadataCatalog.get(name).set(
            image_root=paths["image_root"],
            panoptic_root=paths["panoptic_root"],
            panoptic_json=paths["panoptic_json"],
            json_file=paths["instances_json"],
            sem_seg_root=paths["sem_seg_root"],
            evaluator_type="coco_panoptic_seg",
            ignore_label=IGNORE_LABEL,
            label_divisor=LABEL_DIVISOR,
            **meta,
        )
        names.append(name)

        name = f"{prefix}_{split}_instance"
        DatasetCatalog.register(name, lambda s=split, n=name: _load_instance(folder, s, params, n))
        MetadataCatalog.get(name).set(
            image_root=paths["image_root"],
            json_file=paths["instances_json"],
            evaluator_type="coco",
            thing_classes=meta["thing_classes"],
            thing_colors=meta["thing_colors"],
            thing_dataset_id_to_contiguous_id=meta["thing_dataset_id_to_contiguous_id"],
        )
        names.append(name)

        name = f"{prefix}_{split}_sem_seg"
        DatasetCatalog.register(name, lambda s=split: _load_sem_seg(folder, s, params))
        MetadataCatalog.get(name).set(
            image_root=paths["image_root"],
            sem_seg_root=paths["sem_seg_root"],
            evaluator_type="sem_seg",
            ignore_label=IGNORE_LABEL,
            stuff_classes=meta["stuff_classes"],
            stuff_colors=meta["stuff_colors"],
            stuff_dataset_id_to_contiguous_id=meta["stuff_dataset_id_to_contiguous_id"],
        )
        names.append(name)
    return names


_root = os.getenv("DETECTRON2_DATASETS", "datasets")
register_shapes_world(_root)
register_shapes_world(_root, prefix="shapes_world_dense", dirname="shapes_world_dense", **DENSE_PARAMS)
