#!/usr/bin/env python
"""
Build ADE20K panoptic annotations (COCO panoptic format) for ``ade20k_panoptic_{train,val}`` from the
semantic and the instance annotations:

    ADEChallengeData2016/annotations/{training,validation}/NAME.png           150 classes, 1-based, 0 = other
    ADEChallengeData2016/annotations_instance/{training,validation}/NAME.png  R = instance class, G = instance index
    categoryMapping.txt (instance challenge toolkit)                          instance class -> 150-class id
      -> ADEChallengeData2016/ade20k_panoptic_{train,val}/NAME.png   segment id = class id * 1000 + instance index
      -> ADEChallengeData2016/ade20k_panoptic_{train,val}.json       images, annotations, categories

Categories are the 150 classes (ids 1..150, detectron2's names); the ones the instance classes map to are
things (100 in the official release), the rest stuff. Each instance is a thing segment; each stuff class
present is one segment; pixels of thing classes outside any instance, and "other", are void.

    python datasets/prepare_ade20k_pan_seg.py [--root DIR] [--workers N] [--category-mapping FILE]
"""
import functools
import json
import os
import sys

import numpy as np
from PIL import Image

from mask2former.data.datasets.loading import id2rgb, require_path
from mask2former.data.preparation import (
    ade20k_categories,
    ade20k_image_id,
    ade20k_instance_arguments,
    ade20k_instances,
    parallel_map,
    read_ade20k_instance_mapping,
    report_mixed_instances,
)

SPLITS = [("train", "training"), ("val", "validation")]
_HINT = ("download ADEChallengeData2016.zip and the instance annotations (annotations_instance.tar) of the MIT "
         "SceneParsing benchmark and unpack them into ADEChallengeData2016/.")


def _bbox(mask: np.ndarray) -> list:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _panoptic_one(stem: str, dataset_dir: str, dirname: str, out_dir: str, mapping: dict, thing_ids: frozenset):
    semantic = np.asarray(Image.open(os.path.join(dataset_dir, "annotations", dirname, stem + ".png")))
    instances, mixed, _ = ade20k_instances(
        require_path(os.path.join(dataset_dir, "annotations_instance", dirname, stem + ".png"), _HINT), mapping
    )
    pan = np.zeros(semantic.shape, dtype=np.int64)
    for c in np.unique(semantic):
        if c != 0 and c not in thing_ids:
            pan[semantic == c] = int(c) * 1000
    for k, (c, mask) in enumerate(instances, 1):
        if mask.shape != semantic.shape:
            raise ValueError(f"'{stem}': the instance and semantic annotations differ in size")
        pan[mask] = c * 1000 + k
    segments = []
    for seg_id in np.unique(pan):
        if seg_id == 0:
            continue
        mask = pan == seg_id
        segments.append({"id": int(seg_id), "category_id": int(seg_id // 1000), "iscrowd": 0,
                         "area": int(mask.sum()), "bbox": _bbox(mask)})
    Image.fromarray(id2rgb(pan)).save(os.path.join(out_dir, stem + ".png"))
    image_id = ade20k_image_id(stem)
    h, w = semantic.shape
    return (
        {"id": image_id, "file_name": stem + ".jpg", "width": w, "height": h},
        {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments},
        mixed,
    )


def convert_ade20k_panoptic(dataset_dir: str, mapping_file: str, workers: int = 1) -> dict:
    """Write both splits under ``dataset_dir`` (ADEChallengeData2016); returns {split: number of images}."""
    mapping = read_ade20k_instance_mapping(mapping_file)
    categories = ade20k_categories(mapping)
    thing_ids = frozenset(c["id"] for c in categories if c["isthing"])
    counts = {}
    for split, dirname in SPLITS:
        semantic_dir = require_path(os.path.join(dataset_dir, "annotations", dirname), _HINT, "folder")
        out_dir = os.path.join(dataset_dir, f"ade20k_panoptic_{split}")
        os.makedirs(out_dir, exist_ok=True)
        stems = sorted(os.path.splitext(f)[0] for f in os.listdir(semantic_dir) if f.endswith(".png"))
        fn = functools.partial(_panoptic_one, dataset_dir=dataset_dir, dirname=dirname, out_dir=out_dir,
                               mapping=mapping, thing_ids=thing_ids)
        results = parallel_map(fn, stems, workers, desc=f"ade20k_panoptic_{split}")
        report_mixed_instances(split, sum(r[2] for r in results))
        with open(os.path.join(dataset_dir, f"ade20k_panoptic_{split}.json"), "w") as f:
            json.dump({"images": [r[0] for r in results], "annotations": [r[1] for r in results],
                       "categories": categories}, f)
        counts[split] = len(results)
    return counts


def main(argv=None):
    dataset_dir, mapping_file, workers = ade20k_instance_arguments(__doc__.strip().splitlines()[0], argv)
    for split, n in convert_ade20k_panoptic(dataset_dir, mapping_file, workers).items():
        print(f"{split}: wrote {n} panoptic annotations")


if __name__ == "__main__":
    sys.exit(main())
