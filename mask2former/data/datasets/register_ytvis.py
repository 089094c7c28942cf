"""
Registers the video instance segmentation datasets (YouTube-VIS format) on ``import mask2former``, under
``$DETECTRON2_DATASETS`` (default ``datasets``), with the official names and layouts:

    ytvis_2019_{train,val,test}   ytvis_2019/{train,valid,test}/JPEGImages, ytvis_2019/{train,valid,test}.json
    ytvis_2021_{train,val,test}   ytvis_2021/{train,valid,test}/JPEGImages, ytvis_2021/{train,valid,test}.json
    ovis_{train,val,test}         ovis/{train,valid,test}, ovis/annotations/annotations_{train,valid,test}.json
    shapes_world_video_{train,val}  generated on first use (shapes_world_video.py) in shapes_world_video/

All have ``evaluator_type`` "ytvis" (mask2former.evaluation.YTVISEvaluator) and are read by the "ytvis"
dataset mapper (INPUT.DATASET_MAPPER_NAME). Class lists (names, colours): ``metadata/ytvis_2019.json``,
``metadata/ytvis_2021.json``, ``metadata/ovis.json``, checked against the dataset's JSON when it is loaded,
so that a model is built without the dataset. ``register_ytvis_instances`` without a class list reads it
from the dataset JSON's "categories" on first access of the metadata (registering reads nothing).
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..dataset_mappers import ytvis_dataset_mapper  # noqa: F401  (registers the "ytvis" mapper these datasets use)
from .loading import datasets_root, register_lazy_metadata
from ..synthetic.shapes_world import shapes_world_categories
from ..synthetic.shapes_world_video import DEFAULT_PARAMS, SPLITS, ensure_shapes_world_video, shapes_world_video_paths
from .ytvis import load_ytvis_json, read_ytvis_json, ytvis_categories_metadata

__all__ = ["register_ytvis_instances", "register_all_ytvis", "register_shapes_world_video", "YTVIS_SPLITS"]

METADATA_DIR = Path(__file__).resolve().parents[1] / "metadata"

# name -> (frame root, annotation json), relative to the datasets root; class-list file or None
YTVIS_SPLITS: Dict[str, Tuple[str, str]] = {
    "ytvis_2019_train": ("ytvis_2019/train/JPEGImages", "ytvis_2019/train.json"),
    "ytvis_2019_val": ("ytvis_2019/valid/JPEGImages", "ytvis_2019/valid.json"),
    "ytvis_2019_test": ("ytvis_2019/test/JPEGImages", "ytvis_2019/test.json"),
    "ytvis_2021_train": ("ytvis_2021/train/JPEGImages", "ytvis_2021/train.json"),
    "ytvis_2021_val": ("ytvis_2021/valid/JPEGImages", "ytvis_2021/valid.json"),
    "ytvis_2021_test": ("ytvis_2021/test/JPEGImages", "ytvis_2021/test.json"),
    "ovis_train": ("ovis/train", "ovis/annotations/annotations_train.json"),
    "ovis_val": ("ovis/valid", "ovis/annotations/annotations_valid.json"),
    "ovis_test": ("ovis/test", "ovis/annotations/annotations_test.json"),
}
CLASS_LISTS = {"ytvis_2019": "ytvis_2019.json", "ytvis_2021": "ytvis_2021.json", "ovis": "ovis.json"}


def _class_list_metadata(file_name: str) -> dict:
    with open(METADATA_DIR / file_name) as f:
        categories = json.load(f)["categories"]
    return dict(ytvis_categories_metadata(categories), thing_colors=[c["color"] for c in categories])


def register_ytvis_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Register a YouTube-VIS format dataset ``name``. ``metadata`` may hold the class list; without one, it is
    read from ``json_file``'s categories on first access (lazily: registering reads nothing)."""
    DatasetCatalog.register(name, lambda: load_ytvis_json(json_file, image_root, name))
    values = dict(metadata, json_file=json_file, image_root=image_root, evaluator_type="ytvis")
    if "thing_classes" in metadata:
        MetadataCatalog.get(name).set(**values)
    else:
        hint = f"It holds the categories of dataset '{name}'."
        register_lazy_metadata(name, lambda: ytvis_categories_metadata(read_ytvis_json(json_file, hint)["categories"]),
                               ("thing_classes", "thing_dataset_id_to_contiguous_id"), **values)


def register_all_ytvis(root: str) -> List[str]:
    for name, (image_root, json_file) in YTVIS_SPLITS.items():
        family = name.rsplit("_", 1)[0]
        meta = _class_list_metadata(CLASS_LISTS[family]) if family in CLASS_LISTS else {}
        register_ytvis_instances(name, meta, os.path.join(root, json_file), os.path.join(root, image_root))
    return list(YTVIS_SPLITS)


def register_shapes_world_video(root: str, *, prefix: str = "shapes_world_video", dirname: str = "shapes_world_video",
                                **params) -> List[str]:
    """Register ``{prefix}_{train,val}`` for the videos in ``root/dirname``, generated with ``params`` (see
    :func:`ensure_shapes_world_video`; defaults ``DEFAULT_PARAMS``) on first use. Returns the names."""
    params = dict(DEFAULT_PARAMS, **params)
    folder = os.path.join(root, dirname)
    things = [c for c in shapes_world_categories() if c["isthing"]]
    meta = dict(ytvis_categories_metadata(things), thing_colors=[c["color"] for c in things])
    names = []
    for split in SPLITS:
        name, paths = f"{prefix}_{split}", shapes_world_video_paths(folder, split)

        def load(paths=paths, name=name):
            ensure_shapes_world_video(folder, **params)
            return load_ytvis_json(paths["json_file"], paths["image_root"], name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(json_file=paths["json_file"], image_root=paths["image_root"],
                                      evaluator_type="ytvis", **meta)
        names.append(name)
    return names


_root = datasets_root()
register_all_ytvis(_root)
register_shapes_world_video(_root)
