#!/usr/bin/env python
"""
Derive COCO semantic label maps from the panoptic annotations, for
``coco_2017_{train,val}_panoptic_with_sem_seg``:

    coco/annotations/panoptic_{split}.json + coco/panoptic_{split}/*.png  ->  coco/panoptic_semseg_{split}/*.png

Each pixel of a segment, thing or stuff (crowd regions included), gets the contiguous id of the segment's
category: its position in detectron2's 133 COCO panoptic categories (things first). Void pixels get 255.

    python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py [--root DIR] [--workers N]
"""
import functools
import json
import os
import sys

import numpy as np
from PIL import Image

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from mask2former.data.datasets.loading import require_path, rgb2id
from mask2former.data.preparation import argument_parser, parallel_map, write_label_png

IGNORE_LABEL = 255


def _convert_one(annotation: dict, panoptic_root: str, sem_seg_root: str, id_map: dict):
    pan_path = os.path.join(panoptic_root, annotation["file_name"])
    ids = rgb2id(np.asarray(Image.open(pan_path).convert("RGB")))
    label = np.full(ids.shape, IGNORE_LABEL, dtype=np.uint8)
    for seg in annotation["segments_info"]:
        if seg["category_id"] not in id_map:
            raise ValueError(f"'{pan_path}': segment {seg['id']} has unknown category_id {seg['category_id']}")
        label[ids == seg["id"]] = id_map[seg["category_id"]]
    write_label_png(os.path.join(sem_seg_root, os.path.splitext(annotation["file_name"])[0] + ".png"), label)


def convert_panoptic_to_semantic(panoptic_json: str, panoptic_root: str, sem_seg_root: str,
                                 categories=COCO_CATEGORIES, workers: int = 1) -> int:
    """Write one semantic PNG per annotation of ``panoptic_json``; returns how many."""
    hint = "download the COCO 2017 panoptic annotations (cocodataset.org) and unpack them into coco/."
    with open(require_path(panoptic_json, hint)) as f:
        annotations = json.load(f)["annotations"]
    require_path(panoptic_root, hint + " The PNGs are zipped inside the annotations archive.", "folder")
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    os.makedirs(sem_seg_root, exist_ok=True)
    fn = functools.partial(_convert_one, panoptic_root=panoptic_root, sem_seg_root=sem_seg_root, id_map=id_map)
    parallel_map(fn, annotations, workers, desc=os.path.basename(sem_seg_root))
    return len(annotations)


def main(argv=None):
    parser = argument_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["train2017", "val2017"])
    args = parser.parse_args(argv)
    coco = os.path.join(args.root, "coco")
    for split in args.splits:
        n = convert_panoptic_to_semantic(
            os.path.join(coco, "annotations", f"panoptic_{split}.json"),
            os.path.join(coco, f"panoptic_{split}"),
            os.path.join(coco, f"panoptic_semseg_{split}"),
            workers=args.workers,
        )
        print(f"{split}: wrote {n} semantic label maps to {os.path.join(coco, f'panoptic_semseg_{split}')}")


if __name__ == "__main__":
    sys.exit(main())
