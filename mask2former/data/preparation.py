"""
Helpers of the dataset preparation scripts in ``datasets/prepare_*.py``: command-line basics, a parallel
map with a progress bar, label-map writing and the ADE20K instance annotations shared by the ADE20K
panoptic and instance scripts.
"""
import argparse
import multiprocessing
import os
import re
from typing import Callable, Dict, List, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from .datasets.loading import datasets_root, require_path

__all__ = [
    "argument_parser",
    "parallel_map",
    "write_label_png",
    "read_ade20k_instance_mapping",
    "ade20k_categories",
    "ade20k_image_id",
    "ade20k_instances",
    "ade20k_instance_arguments",
    "report_mixed_instances",
]


def argument_parser(description: str) -> argparse.ArgumentParser:
    """A parser with ``--root`` (default ``$DETECTRON2_DATASETS`` or ``datasets``) and ``--workers``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", default=datasets_root(),
                        help="the datasets folder (default: $DETECTRON2_DATASETS, else 'datasets')")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="worker processes (1: no multiprocessing)")
    return parser


def parallel_map(fn: Callable, items: Sequence, workers: int, desc: str) -> List:
    """``[fn(x) for x in items]`` over ``workers`` processes (in order), with a tqdm progress bar."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, desc=desc)]
    with multiprocessing.Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, items, chunksize=16), total=len(items), desc=desc))


def write_label_png(path: str, label: np.ndarray) -> None:
    """Write a uint8 (H, W) label map as a single-channel PNG, creating the folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(label.astype(np.uint8)).save(path)


def read_ade20k_instance_mapping(path: str) -> Dict[int, int]:
    """
    The ADE20K instance-segmentation category mapping (the challenge toolkit's ``categoryMapping.txt``):
    a header line, then one line per instance class, ``<instance class id> <SceneParsing-150 class id> ...``
    (both 1-based, whitespace-separated). Returns {instance class id: 150-class id}.
    """
    require_path(path, "it comes with the ADE20K instance segmentation challenge toolkit; pass it with "
                       "--category-mapping.")
    mapping = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) < 2 or not (re.fullmatch(r"\d+", fields[0]) and re.fullmatch(r"\d+", fields[1])):
                if n == 1 or not fields:
                    continue  # header or blank line
                raise ValueError(f"'{path}' line {n}: expected '<instance class id> <150-class id> ...', got {line!r}")
            instance_id, semantic_id = int(fields[0]), int(fields[1])
            if instance_id in mapping or not 1 <= semantic_id <= 150:
                raise ValueError(f"'{path}' line {n}: duplicate instance class {instance_id} or 150-class id "
                                 f"{semantic_id} outside 1..150")
            mapping[instance_id] = semantic_id
    if not mapping:
        raise ValueError(f"'{path}' has no category mapping lines")
    return mapping


def ade20k_instances(instance_png: str, mapping: Dict[int, int]):
    """
    Instances of an ADE20K ``annotations_instance`` PNG (R = instance class id, G = instance index, 0 = none).
    Returns ``(instances, mixed, (H, W))``: [(150-class id, bool mask (H, W))] in instance-index order, and
    the number of instances whose pixels carry more than one class id (each gets its most frequent one).
    """
    ins = np.asarray(Image.open(instance_png).convert("RGB"))
    cls, idx = ins[:, :, 0], ins[:, :, 1]
    instances, mixed = [], 0
    for k in np.unique(idx):
        if k == 0:
            continue
        mask = idx == k
        values, counts = np.unique(cls[mask], return_counts=True)
        mixed += len(values) > 1
        instance_class = int(values[np.argmax(counts)])
        if instance_class == 0:
            continue
        if instance_class not in mapping:
            raise ValueError(f"'{instance_png}': instance class id {instance_class} is not in the category mapping")
        instances.append((mapping[instance_class], mask))
    return instances, mixed, idx.shape


def ade20k_categories(mapping: Dict[int, int]) -> List[dict]:
    """
    The 150 SceneParsing classes as COCO-panoptic categories: "id" 1..150 (the raw label value), "name"
    (detectron2's ``ADE20K_SEM_SEG_CATEGORIES``), "isthing" 1 for the classes the instance classes map to.
    """
    things = set(mapping.values())
    return [
        {"id": i + 1, "name": name, "isthing": int(i + 1 in things)} for i, name in enumerate(ADE20K_SEM_SEG_CATEGORIES)
    ]


def ade20k_image_id(stem: str) -> int:
    """The number in an ADE20K image name, e.g. ``ADE_train_00000012`` -> 12."""
    match = re.search(r"(\d+)$", stem)
    if match is None:
        raise ValueError(f"ADE20K image name '{stem}' does not end in a number")
    return int(match.group(1))


def ade20k_instance_arguments(description: str, argv=None):
    """Command line of the ADE20K panoptic and instance scripts: (dataset folder, mapping file, workers)."""
    parser = argument_parser(description)
    parser.add_argument("--category-mapping", default=None,
                        help="instance class -> 150-class mapping (default: ADEChallengeData2016/categoryMapping.txt)")
    args = parser.parse_args(argv)
    dataset_dir = os.path.join(args.root, "ADEChallengeData2016")
    return dataset_dir, args.category_mapping or os.path.join(dataset_dir, "categoryMapping.txt"), args.workers


def report_mixed_instances(split: str, mixed: int) -> None:
    if mixed:
        print(f"{split}: {mixed} instances carried several instance class ids; each got its most frequent one")
