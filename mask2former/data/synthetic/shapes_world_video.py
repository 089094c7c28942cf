"""
Shapes world videos: a generated video instance segmentation dataset in the YouTube-VIS format.

Each video shows the textured stuff background of shapes world (seen through a slowly panning camera) and
2-6 thing shapes drawn with shapes world's rasteriser, textures and palette (see drawing.py). Every
shape moves along a straight line, grows or shrinks and turns; the first one enters the frame from outside,
the second one leaves it, and when there are three or more the third crosses the second's path mid-video
(so they overlap and one occludes the other; the drawing order is fixed per video). Annotations are the
visible parts, per frame; a shape with fewer than ``MIN_VISIBLE_AREA`` visible pixels in a frame has a null
segmentation there (absent). Frames are blurred and noised like shapes world images.

Layout of a generated folder ``DIR``::

    DIR/{split}/JPEGImages/{split}_{index:05d}/{frame:05d}.jpg   frames (RGB JPEG)
    DIR/{split}.json                                              YouTube-VIS format: videos, annotations
                                                                  (per-frame compressed RLE or null, bboxes,
                                                                  areas), categories (shapes world things)
    DIR/COMPLETE.json                                             written last: parameters and file sizes

Video ``i`` of a split depends only on (seed, split, i). The command line::

    python -m mask2former.data.synthetic.shapes_world_video --output datasets/shapes_world_video \\
        --num-train 100 --num-val 20
"""
import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import cv2
import numpy as np
import pycocotools.mask as mask_util

from . import generated_folder
from .drawing import MIN_SHAPE_SIZE, ShapeInstance, degrade, paint_shape, stuff_background
from .generated_folder import GeneratedFolderError
from .shapes_world import MIN_VISIBLE_AREA, instance_palette, shapes_world_categories
from .shapes_world import validate_params as validate_image_params

__all__ = [
    "DEFAULT_PARAMS",
    "SPLITS",
    "ensure_shapes_world_video",
    "generate_video",
    "shapes_world_video_paths",
    "validate_params",
    "main",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump whenever a change makes a given seed produce different files (2: image generator's cross fix)
SPLITS = ("train", "val")
LAYOUT_ENTRIES = SPLITS + tuple(f"{s}.json" for s in SPLITS)
ShapesWorldFolderError = GeneratedFolderError  # the name this module's callers catch
DEFAULT_PARAMS = {"num_train": 100, "num_val": 20, "seed": 0, "min_size": 128, "max_size": 192,
                  "min_frames": 8, "max_frames": 16}
MIN_IMAGE_SIZE = 32
JPEG_QUALITY = 95
NUM_SHAPES_RANGE = (2, 6)
MAX_PAN_SPEED = 1.5  # px per frame
SPEED_RANGE = (1.0, 4.0)  # px per frame, shapes that stay in view
MAX_SCALE_RATE = 0.03  # size changes by exp(rate) per frame
MAX_TURN_RATE = 0.15  # radians per frame


def shapes_world_video_paths(folder, split: str) -> Dict[str, str]:
    """image_root and json_file of one split of a generated folder."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = str(folder)
    return {"image_root": os.path.join(folder, split, "JPEGImages"), "json_file": os.path.join(folder, f"{split}.json")}


def validate_params(num_train, num_val, seed, min_size, max_size, min_frames, max_frames) -> dict:
    """Check generator arguments; errors name the CLI flag. Returns the parameters recorded in COMPLETE.json.

    The image generator's checks cover the shared arguments; the frame counts are checked here.
    """
    params = validate_image_params(num_train, num_val, seed, min_size, max_size, min_image_size=MIN_IMAGE_SIZE)
    for flag in ("min_frames", "max_frames"):
        value = locals()[flag]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"--{flag.replace('_', '-')} ({flag}) must be an integer >= 2, got {value!r}")
    if min_frames > max_frames:
        raise ValueError(f"--min-frames (min_frames) {min_frames} must not exceed --max-frames (max_frames) {max_frames}")
    params.update(min_frames=int(min_frames), max_frames=int(max_frames), version=GENERATOR_VERSION)
    return params


# ----------------------------------------------------------------------------------------------------------
# One video
# ----------------------------------------------------------------------------------------------------------
def _outside_point(rng, height, width, margin):
    """A point beyond a random image side by ``margin`` px, and the side's inward unit normal."""
    side = int(rng.integers(4))
    if side == 0:  # left
        return np.array([-margin, rng.uniform(0, height)]), np.array([1.0, 0.0])
    if side == 1:  # right
        return np.array([width + margin, rng.uniform(0, height)]), np.array([-1.0, 0.0])
    if side == 2:  # top
        return np.array([rng.uniform(0, width), -margin]), np.array([0.0, 1.0])
    return np.array([rng.uniform(0, width), height + margin]), np.array([0.0, -1.0])


def _trajectories(rng, n, num_frames, height, width, sizes):
    """Per shape (num_frames, 2) centres: shape 0 enters, shape 1 leaves, shape 2 crosses shape 1."""
    centers = []
    times = np.arange(num_frames, dtype=np.float64)
    for k in range(n):
        mode = ["enter", "leave"][k] if k < 2 else str(rng.choice(["enter", "leave", "inside", "inside"]))
        if k == 2:
            mode = "cross"
        if mode in ("enter", "leave"):
            # out of view at one end (clear of the border by its radius), well inside at the other
            outside, inward = _outside_point(rng, height, width, 0.5 * sizes[k] + 2)
            inside = np.array([rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height])
            a, b = (outside, inside) if mode == "enter" else (inside, outside)
            path = a[None] + (b - a)[None] * (times / (num_frames - 1))[:, None]
        else:
            speed = rng.uniform(*SPEED_RANGE)
            direction = rng.uniform(0, 2 * np.pi)
            velocity = speed * np.array([math.cos(direction), math.sin(direction)])
            if mode == "cross":  # at mid-video, where shape 1 is
                anchor, t0 = centers[1][num_frames // 2], num_frames // 2
            else:
                anchor, t0 = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height]), 0
            path = anchor[None] + velocity[None] * (times - t0)[:, None]
        centers.append(path)
    return centers


def generate_video(rng: np.random.Generator, height: int, width: int, num_frames: int) -> dict:
    """
    Draw one video and its annotations.

    Returns {"frames": list of (H, W, 3) uint8 RGB, "objects": list of {"category_id" (shapes world dataset
    id), "masks": per frame the bool (H, W) visible mask or None (under MIN_VISIBLE_AREA pixels),
    "full_areas": per frame the shape's area inside the frame before occlusion}} (objects never visible
    are left out).
    """
    things = [c for c in shapes_world_categories() if c["isthing"]]
    kinds = [c["name"] for c in things]
    palette = instance_palette()

    pad = int(math.ceil(MAX_PAN_SPEED * num_frames)) + 1
    background, _ = stuff_background(rng, height + 2 * pad, width + 2 * pad)
    pan = rng.uniform(-MAX_PAN_SPEED, MAX_PAN_SPEED, 2)

    n = int(rng.integers(NUM_SHAPES_RANGE[0], NUM_SHAPES_RANGE[1] + 1))
    kind_ids = rng.integers(len(kinds), size=n)
    largest = max(16.0, 0.4 * min(height, width))
    base_sizes = np.exp(rng.uniform(math.log(12.0), math.log(largest), n))
    scale_rates = rng.uniform(-MAX_SCALE_RATE, MAX_SCALE_RATE, n)
    angles = rng.uniform(0, 2 * np.pi, n)
    turn_rates = rng.uniform(-MAX_TURN_RATE, MAX_TURN_RATE, n)
    colors = [np.clip(palette[int(rng.integers(len(palette)))] + rng.normal(0.0, 12.0, 3), 0, 255) for _ in range(n)]
    shadings = [(float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.05, 0.35))) for _ in range(n)]
    max_sizes = base_sizes * np.exp(np.abs(scale_rates) * num_frames / 2)
    centers = _trajectories(rng, n, num_frames, height, width, max_sizes)
    order = rng.permutation(n)  # drawing order: later shapes occlude earlier ones

    frames, visible, full_areas = [], [[] for _ in range(n)], [[] for _ in range(n)]
    for t in range(num_frames):
        x0, y0 = (np.array([pad, pad]) + pan * t).round().astype(int)
        image = background[y0: y0 + height, x0: x0 + width].copy()
        owner = np.full((height, width), -1, np.int32)
        for k in order:
            kind = kinds[kind_ids[k]]
            size = max(float(base_sizes[k] * math.exp(scale_rates[k] * (t - num_frames / 2))), MIN_SHAPE_SIZE[kind])
            shape = ShapeInstance(kind, (float(centers[k][t][0]), float(centers[k][t][1])), size,
                                  float(angles[k] + turn_rates[k] * t), tuple(float(v) for v in colors[k]),
                                  shadings[k])
            mask = shape.mask(height, width)
            full_areas[k].append(int(mask.sum()))
            if mask.any():
                paint_shape(image, mask, shape)
                owner[mask] = k
        frames.append(degrade(rng, image))
        for k in range(n):
            mask = owner == k
            visible[k].append(mask if mask.sum() >= MIN_VISIBLE_AREA else None)
    objects = [
        {"category_id": things[kind_ids[k]]["id"], "masks": visible[k], "full_areas": full_areas[k]}
        for k in range(n)
        if any(m is not None for m in visible[k])
    ]
    return {"frames": frames, "objects": objects}


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------
def _write_split(folder: Path, split: str, params: dict) -> None:
    paths = shapes_world_video_paths(folder, split)
    videos, annotations = [], []
    for i in range(params[f"num_{split}"]):
        rng = np.random.default_rng([params["seed"], SPLITS.index(split), i])
        height, width = (int(v) for v in rng.integers(params["min_size"], params["max_size"] + 1, size=2))
        num_frames = int(rng.integers(params["min_frames"], params["max_frames"] + 1))
        sample = generate_video(rng, height, width, num_frames)
        name, video_id = f"{split}_{i:05d}", i + 1
        os.makedirs(os.path.join(paths["image_root"], name))
        file_names = []
        for t, frame in enumerate(sample["frames"]):
            rel = f"{name}/{t:05d}.jpg"
            if not cv2.imwrite(os.path.join(paths["image_root"], rel), frame[:, :, ::-1],
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError(f"could not write {rel} into {paths['image_root']}")
            file_names.append(rel)
        videos.append({"id": video_id, "file_names": file_names, "height": height, "width": width,
                       "length": num_frames})
        for obj in sample["objects"]:
            segs, boxes, areas = [], [], []
            for mask in obj["masks"]:
                if mask is None:
                    segs.append(None), boxes.append(None), areas.append(None)
                    continue
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                segs.append({"size": [height, width], "counts": rle["counts"].decode("ascii")})
                boxes.append([float(v) for v in mask_util.toBbox(rle)])
                areas.append(int(mask.sum()))
            annotations.append({"id": len(annotations) + 1, "video_id": video_id, "category_id": obj["category_id"],
                                "iscrowd": 0, "height": height, "width": width, "length": num_frames,
                                "segmentations": segs, "bboxes": boxes, "areas": areas})
    data = {
        "info": {"description": "shapes world videos (generated)", "version": GENERATOR_VERSION,
                 "seed": params["seed"]},
        "videos": videos,
        "annotations": annotations,
        "categories": [{"id": c["id"], "name": c["name"], "supercategory": "shape"}
                       for c in shapes_world_categories() if c["isthing"]],
    }
    with open(paths["json_file"], "w") as f:
        json.dump(data, f, separators=(",", ":"))


def ensure_shapes_world_video(
    folder,
    *,
    num_train: int = DEFAULT_PARAMS["num_train"],
    num_val: int = DEFAULT_PARAMS["num_val"],
    seed: int = DEFAULT_PARAMS["seed"],
    min_size: int = DEFAULT_PARAMS["min_size"],
    max_size: int = DEFAULT_PARAMS["max_size"],
    min_frames: int = DEFAULT_PARAMS["min_frames"],
    max_frames: int = DEFAULT_PARAMS["max_frames"],
) -> Path:
    """
    Make ``folder`` hold a complete shapes world video set with these parameters and return it.

    A complete folder with the same parameters is reused; an incomplete one is regenerated; one made with
    other parameters raises ShapesWorldFolderError. The set is written into a temporary sibling folder that
    is renamed into place, so concurrent callers are safe.
    """
    params = validate_params(num_train, num_val, seed, min_size, max_size, min_frames, max_frames)
    start = time.perf_counter()

    def write(tmp: Path) -> None:
        for split in SPLITS:
            _write_split(tmp, split, params)

    folder, written = generated_folder.ensure_generated_folder(
        folder, params, write, generator="shapes_world_video", what="shapes world video",
        layout_entries=LAYOUT_ENTRIES)
    if written:
        logger.info(f"Shapes world video: wrote {params['num_train']} train + {params['num_val']} val videos to "
                    f"{folder} in {time.perf_counter() - start:.1f} s")
    return folder


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m mask2former.data.synthetic.shapes_world_video",
        description="Generate the shapes world video dataset (YouTube-VIS format). An existing complete folder "
                    "with the same parameters is kept; one with other parameters is an error.")
    default_output = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "shapes_world_video")
    parser.add_argument("--output", default=default_output, help=f"dataset folder (default: {default_output})")
    for key, help_text in (("num_train", "training videos"), ("num_val", "validation videos"), ("seed", "random seed"),
                           ("min_size", "smallest frame height/width in px"),
                           ("max_size", "largest frame height/width in px"),
                           ("min_frames", "fewest frames per video"), ("max_frames", "most frames per video")):
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=DEFAULT_PARAMS[key],
                            help=f"{help_text} (default {DEFAULT_PARAMS[key]})")
    args = parser.parse_args(argv)
    params = {key: getattr(args, key) for key in DEFAULT_PARAMS}
    try:
        validate_params(**params)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return ensure_shapes_world_video(args.output, **params)


if __name__ == "__main__":
    try:
        main()
    except ShapesWorldFolderError as e:
        raise SystemExit(f"error: {e}")
