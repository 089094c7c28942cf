#!/usr/bin/env python
"""
Make ADE20K's semantic label maps 0-based for ``ade20k_sem_seg_{train,val}``:

    ADEChallengeData2016/annotations/{training,validation}/*.png  (0 = other, 1..150)
      -> ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png  (0..149, 255 = ignore)

    python datasets/prepare_ade20k_sem_seg.py [--root DIR] [--workers N]
"""
import functools
import os
import sys

import numpy as np
from PIL import Image

from mask2former.data.datasets.loading import require_path
from mask2former.data.preparation import argument_parser, parallel_map, write_label_png


def _convert_one(name: str, src: str, dst: str):
    label = np.asarray(Image.open(os.path.join(src, name)))
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"'{os.path.join(src, name)}' is not a single-channel 8-bit label map")
    write_label_png(os.path.join(dst, name), label - np.uint8(1))  # 0 (other) wraps around to 255


def convert_ade20k_sem_seg(dataset_dir: str, workers: int = 1) -> dict:
    """Convert both splits under ``dataset_dir`` (ADEChallengeData2016); returns {split folder: count}."""
    counts = {}
    for split in ["training", "validation"]:
        src = require_path(os.path.join(dataset_dir, "annotations", split),
                           "download ADEChallengeData2016.zip (MIT SceneParsing benchmark) and unpack it.", "folder")
        dst = os.path.join(dataset_dir, "annotations_detectron2", split)
        names = sorted(f for f in os.listdir(src) if f.endswith(".png"))
        parallel_map(functools.partial(_convert_one, src=src, dst=dst), names, workers, desc=split)
        counts[split] = len(names)
    return counts


def main(argv=None):
    args = argument_parser(__doc__.strip().splitlines()[0]).parse_args(argv)
    for split, n in convert_ade20k_sem_seg(os.path.join(args.root, "ADEChallengeData2016"), args.workers).items():
        print(f"{split}: wrote {n} label maps")


if __name__ == "__main__":
    sys.exit(main())
