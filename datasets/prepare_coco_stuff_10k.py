#!/usr/bin/env python
"""
Prepare COCO-Stuff-10k (cocostuff-10k-v1.1) for ``coco_2017_{train,test}_stuff_10k_sem_seg``:

    coco/coco_stuff_10k/imageLists/{train,test}.txt     image names, one per line
    coco/coco_stuff_10k/images/NAME.jpg
    coco/coco_stuff_10k/annotations/NAME.mat            variable "S": per-pixel COCO-Stuff id, 0 = unlabeled
      -> coco/coco_stuff_10k/images_detectron2/{train,test}/NAME.jpg
      -> coco/coco_stuff_10k/annotations_detectron2/{train,test}/NAME.png   contiguous ids 0..170, 255 = ignore

Contiguous ids are positions in ``mask2former/data/metadata/coco_stuff_171.json`` (ascending
COCO-Stuff id); ids outside those 171 classes (unlabeled, and the ids COCO-Stuff does not use) become 255.

    python datasets/prepare_coco_stuff_10k.py [--root DIR] [--workers N]
"""
import functools
import os
import shutil
import sys

import numpy as np
import scipy.io

from mask2former.data.datasets.loading import require_path
from mask2former.data.preparation import argument_parser, parallel_map, write_label_png
from mask2former.data.datasets.register_coco_stuff_10k import coco_stuff_171_categories

IGNORE_LABEL = 255
MAX_ID = 182
_HINT = "download cocostuff-10k-v1.1.zip (COCO-Stuff) and unpack it into coco/coco_stuff_10k/."


def coco_stuff_lookup() -> np.ndarray:
    """(MAX_ID + 1,) uint8: COCO-Stuff id -> contiguous id, 255 where unused."""
    lut = np.full(MAX_ID + 1, IGNORE_LABEL, dtype=np.uint8)
    for i, c in enumerate(coco_stuff_171_categories()):
        lut[c["id"]] = i
    return lut


def _convert_one(name: str, dataset_dir: str, split: str, lut: np.ndarray):
    mat = os.path.join(dataset_dir, "annotations", name + ".mat")
    labels = scipy.io.loadmat(require_path(mat, _HINT))["S"]
    if labels.ndim != 2 or labels.min() < 0 or labels.max() > MAX_ID:
        raise ValueError(f"'{mat}': 'S' must be a 2-d map of COCO-Stuff ids in 0..{MAX_ID}")
    write_label_png(os.path.join(dataset_dir, "annotations_detectron2", split, name + ".png"), lut[labels])
    image_dir = os.path.join(dataset_dir, "images_detectron2", split)
    os.makedirs(image_dir, exist_ok=True)
    shutil.copyfile(require_path(os.path.join(dataset_dir, "images", name + ".jpg"), _HINT),
                    os.path.join(image_dir, name + ".jpg"))


def convert_coco_stuff_10k(dataset_dir: str, workers: int = 1) -> dict:
    """Convert both splits under ``dataset_dir`` (coco/coco_stuff_10k); returns {split: count}."""
    lut = coco_stuff_lookup()
    counts = {}
    for split in ["train", "test"]:
        with open(require_path(os.path.join(dataset_dir, "imageLists", split + ".txt"), _HINT)) as f:
            names = [os.path.splitext(line.strip())[0] for line in f if line.strip()]
        fn = functools.partial(_convert_one, dataset_dir=dataset_dir, split=split, lut=lut)
        parallel_map(fn, names, workers, desc=split)
        counts[split] = len(names)
    return counts


def main(argv=None):
    args = argument_parser(__doc__.strip().splitlines()[0]).parse_args(argv)
    for split, n in convert_coco_stuff_10k(os.path.join(args.root, "coco", "coco_stuff_10k"), args.workers).items():
        print(f"{split}: wrote {n} images and label maps")


if __name__ == "__main__":
    sys.exit(main())
