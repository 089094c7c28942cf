#!/usr/bin/env python
"""
Build ADE20K instance annotations (COCO format, RLE masks) for ``ade20k_instance_{train,val}`` (and the
instance evaluation of ``ade20k_panoptic_{train,val}``):

    ADEChallengeData2016/annotations_instance/{training,validation}/NAME.png  R = instance class, G = instance index
    categoryMapping.txt (instance challenge toolkit)                          instance class -> 150-class id
      -> ADEChallengeData2016/ade20k_instance_{train,val}.json

Category ids are the 150-class ids of the thing classes (the same ids as in the panoptic annotations of
``prepare_ade20k_pan_seg.py``), named as in detectron2's ``ADE20K_SEM_SEG_CATEGORIES``.

    python datasets/prepare_ade20k_ins_seg.py [--root DIR] [--workers N] [--category-mapping FILE]
"""
import functools
import json
import os
import sys

import numpy as np
import pycocotools.mask as mask_util

from mask2former.data.datasets.loading import require_path
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
_HINT = ("download the instance annotations (annotations_instance.tar) of the MIT SceneParsing benchmark and "
         "unpack them into ADEChallengeData2016/.")


def _instances_one(stem: str, instance_dir: str, mapping: dict):
    instances, mixed, (h, w) = ade20k_instances(os.path.join(instance_dir, stem + ".png"), mapping)
    image_id = ade20k_image_id(stem)
    annotations = []
    for category_id, mask in instances:
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": int(mask.sum()),
            "bbox": [float(v) for v in mask_util.toBbox(rle)],
            "iscrowd": 0,
        })
    return {"id": image_id, "file_name": stem + ".jpg", "width": w, "height": h}, annotations, mixed


def convert_ade20k_instances(dataset_dir: str, mapping_file: str, workers: int = 1) -> dict:
    """Write both splits under ``dataset_dir`` (ADEChallengeData2016); returns {split: number of instances}."""
    mapping = read_ade20k_instance_mapping(mapping_file)
    categories = [{"id": c["id"], "name": c["name"]} for c in ade20k_categories(mapping) if c["isthing"]]
    counts = {}
    for split, dirname in SPLITS:
        instance_dir = require_path(os.path.join(dataset_dir, "annotations_instance", dirname), _HINT, "folder")
        stems = sorted(os.path.splitext(f)[0] for f in os.listdir(instance_dir) if f.endswith(".png"))
        fn = functools.partial(_instances_one, instance_dir=instance_dir, mapping=mapping)
        results = parallel_map(fn, stems, workers, desc=f"ade20k_instance_{split}")
        annotations = [a for r in results for a in r[1]]
        for i, a in enumerate(annotations, 1):
            a["id"] = i
        report_mixed_instances(split, sum(r[2] for r in results))
        with open(os.path.join(dataset_dir, f"ade20k_instance_{split}.json"), "w") as f:
            json.dump({"images": [r[0] for r in results], "annotations": annotations, "categories": categories}, f)
        counts[split] = len(annotations)
    return counts


def main(argv=None):
    dataset_dir, mapping_file, workers = ade20k_instance_arguments(__doc__.strip().splitlines()[0], argv)
    for split, n in convert_ade20k_instances(dataset_dir, mapping_file, workers).items():
        print(f"{split}: wrote {n} instances")


if __name__ == "__main__":
    sys.exit(main())
