#!/usr/bin/env python
"""
Prepare ADE20K-full (the full ADE20K release, e.g. ADE20K_2021_17_01) for ``ade20k_full_sem_seg_{train,val}``:

    ADE20K_2021_17_01/index_ade20k.pkl        dict with "filename", "folder" (per image) and "objectnames"
    <folder>/NAME.jpg, <folder>/NAME_seg.png  class of a pixel = R // 10 * 256 + G; 0 = unlabeled,
                                              k > 0 = objectnames[k - 1]
      -> ADE20K_2021_17_01/images_detectron2/{training,validation}/NAME.jpg
      -> ADE20K_2021_17_01/annotations_detectron2/{training,validation}/NAME.tif   uint16 trainIds, 65535 = ignore
      -> ADE20K_2021_17_01/ade20k_full_categories.json    [{"trainId", "id" (= k), "name"}]

The classes kept are those with labelled pixels in both the training and the validation images (the
ADE20K-full selection the MaskFormer paper describes, 847 classes there; the count is printed, set
MODEL.SEM_SEG_HEAD.NUM_CLASSES to it). trainIds follow the number of training pixels, most first. The data
is read twice: once to count the classes, once to write.

    python datasets/prepare_ade20k_full_sem_seg.py [--root DIR] [--workers N] [--dirname ADE20K_2021_17_01]
"""
import functools
import json
import os
import shutil
import sys
from collections import Counter

import numpy as np
from PIL import Image

from mask2former.data.datasets.loading import require_path
from mask2former.data.preparation import argument_parser, parallel_map
from mask2former.utils.safe_load import load_pickle

IGNORE_LABEL = 65535
SPLITS = ("training", "validation")
_HINT = "download the full ADE20K release (ADE20K_2021_17_01.zip, ade20k.csail.mit.edu) and unpack it."


def read_class_mask(seg_png: str) -> np.ndarray:
    """(H, W) int32 object class indices of an ADE20K ``*_seg.png`` (0 = unlabeled)."""
    seg = np.asarray(Image.open(require_path(seg_png, _HINT)).convert("RGB")).astype(np.int32)
    return seg[:, :, 0] // 10 * 256 + seg[:, :, 1]


def _class_pixels(item):
    _, _, image_path = item
    values, counts = np.unique(read_class_mask(image_path[:-4] + "_seg.png"), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def _write_one(item, dataset_dir: str, lut: np.ndarray):
    split, stem, image_path = item
    label = lut[read_class_mask(image_path[:-4] + "_seg.png")]
    out = os.path.join(dataset_dir, "annotations_detectron2", split, stem + ".tif")
    Image.fromarray(label.astype(np.uint16)).save(out)
    shutil.copyfile(image_path, os.path.join(dataset_dir, "images_detectron2", split, stem + ".jpg"))


def list_images(dataset_dir: str):
    """(split, stem, image path) of every training and validation image in ``index_ade20k.pkl``, and the names."""
    # the release's index is a pickle of lists and numpy arrays: read without running code from it
    index = load_pickle(require_path(os.path.join(dataset_dir, "index_ade20k.pkl"), _HINT))
    parent = os.path.dirname(os.path.abspath(dataset_dir))
    base = os.path.basename(os.path.abspath(dataset_dir))
    items = []
    for folder, filename in zip(index["folder"], index["filename"]):
        parts = folder.replace("\\", "/").split("/")
        split = next((s for s in SPLITS if s in parts), None)
        if split is None:
            continue
        # "folder" starts with the release's own folder name, e.g. ADE20K_2021_17_01/images/ADE/training/...
        root = parent if parts[0] == base else dataset_dir
        items.append((split, os.path.splitext(filename)[0], os.path.join(root, *parts, filename)))
    if not items:
        raise ValueError(f"index_ade20k.pkl in '{dataset_dir}' lists no training or validation images")
    return items, list(index["objectnames"])


def select_classes(items, pixels, objectnames):
    """Categories present in both splits, ordered by training pixels (most first)."""
    totals = {split: Counter() for split in SPLITS}
    for (split, _, _), counts in zip(items, pixels):
        totals[split].update(counts)
    present = (set(totals["training"]) & set(totals["validation"])) - {0}
    unknown = [k for k in present if k > len(objectnames)]
    if unknown:
        raise ValueError(f"class indices {sorted(unknown)[:10]} exceed the {len(objectnames)} objectnames")
    order = sorted(present, key=lambda k: (-totals["training"][k], k))
    return [{"trainId": i, "id": int(k), "name": objectnames[k - 1]} for i, k in enumerate(order)]


def convert_ade20k_full(dataset_dir: str, workers: int = 1) -> list:
    """Write images, label maps and the categories file under ``dataset_dir``; returns the categories."""
    items, objectnames = list_images(dataset_dir)
    pixels = parallel_map(_class_pixels, items, workers, desc="counting classes")
    categories = select_classes(items, pixels, objectnames)
    lut = np.full(256 * 256, IGNORE_LABEL, dtype=np.int64)
    for c in categories:
        lut[c["id"]] = c["trainId"]
    for split in SPLITS:
        os.makedirs(os.path.join(dataset_dir, "annotations_detectron2", split), exist_ok=True)
        os.makedirs(os.path.join(dataset_dir, "images_detectron2", split), exist_ok=True)
    parallel_map(functools.partial(_write_one, dataset_dir=dataset_dir, lut=lut), items, workers, desc="writing")
    with open(os.path.join(dataset_dir, "ade20k_full_categories.json"), "w") as f:
        json.dump(categories, f, indent=0)
    return categories


def main(argv=None):
    parser = argument_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--dirname", default="ADE20K_2021_17_01", help="the release's folder under --root")
    args = parser.parse_args(argv)
    categories = convert_ade20k_full(os.path.join(args.root, args.dirname), args.workers)
    print(f"kept {len(categories)} classes present in both splits (MODEL.SEM_SEG_HEAD.NUM_CLASSES)")


if __name__ == "__main__":
    sys.exit(main())
