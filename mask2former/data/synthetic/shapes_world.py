"""
Shapes world: a generated dataset that makes the project usable and testable offline.

Every image shows 2-4 textured stuff regions (grass, water, sand, wall) with irregular boundaries, covered by
3-14 thing shapes (circle, square, triangle, star, ring, cross, hexagon) drawn in painter's order: later shapes
occlude earlier ones and the annotations are the visible parts. Shapes range from tiny (8 px) to half the
image, take random colours from one palette shared by all classes (colour never tells the class), touch and
overlap, and the finished image is blurred and noised. The class list is data:
``metadata/shapes_world.json``.

Layout of a generated folder ``DIR`` (readable by detectron2's own COCO / COCO panoptic / sem-seg loaders)::

    DIR/images/{split}/{split}_{index:06d}.jpg    RGB images
    DIR/panoptic/{split}/{split}_{index:06d}.png  COCO panoptic PNG, segment id = R + 256 G + 256^2 B, 0 = void
    DIR/semantic/{split}/{split}_{index:06d}.png  uint8 contiguous class ids, 255 = ignore
    DIR/annotations/instances_{split}.json        COCO instances (polygons when a whole shape is visible,
                                                  RLE for rings, occluded or clipped shapes), iscrowd 0
    DIR/annotations/panoptic_{split}.json         COCO panoptic (images, annotations with segments_info,
                                                  categories with isthing)
    DIR/COMPLETE.json                             written last: generator parameters and file sizes

Contiguous class ids are positions in the metadata category list (things first, then stuff). Ignored
(void) pixels are a 2 px band along stuff/stuff boundaries, where the two textures are blended, and stuff
whose visible area is below ``MIN_STUFF_AREA`` pixels.

Image ``i`` of a split depends only on (seed, split, i), so a larger set extends a smaller one. With the same
seed and the same numpy / OpenCV / pycocotools versions the files are byte-identical.

Shapes, textures and painting come from :mod:`.drawing` (shared with the video generator); this module samples
scenes (:func:`sample_shapes`, :func:`generate_image`) and writes them with :func:`ensure_shapes_world`, which
keeps the folder through :mod:`.generated_folder` and is also the command line::

    python -m mask2former.data.synthetic.shapes_world --output datasets/shapes_world --num-train 3000 --num-val 50
"""
import argparse
import copy
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

from . import generated_folder
from .drawing import (  # noqa: F401  (re-exported: the generators' building blocks)
    MIN_SHAPE_SIZE,
    SHAPE_KINDS,
    SMALLEST_SHAPE,
    STUFF_TEXTURES,
    ShapeInstance,
    degrade,
    paint_shape,
    rasterize_polygons,
    render_shape,
    shape_area,
    shape_polygons,
    smooth_noise,
    stuff_background,
    stuff_texture,
)
from .generated_folder import MARKER_FILE, GeneratedFolderError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PARAMS",
    "IGNORE_LABEL",
    "LABEL_DIVISOR",
    "SHAPE_KINDS",
    "SCENE_DEFAULTS",
    "SPLITS",
    "STUFF_TEXTURES",
    "ShapeInstance",
    "ShapesWorldFolderError",
    "degrade",
    "ensure_shapes_world",
    "generate_image",
    "main",
    "paint_shape",
    "rasterize_polygons",
    "render_shape",
    "sample_shapes",
    "shape_polygons",
    "shapes_world_categories",
    "shapes_world_paths",
    "smooth_noise",
    "stuff_background",
    "stuff_texture",
    "validate_params",
    "validate_scene",
]

METADATA_FILE = Path(__file__).resolve().parents[1] / "metadata" / "shapes_world.json"
# bump whenever a change makes a given seed produce different files. 2: crosses were drawn as their central
# square (a self-intersecting outline), which made them look like squares
GENERATOR_VERSION = 2
IGNORE_LABEL = 255
LABEL_DIVISOR = 1000  # panoptic segment id = dataset category id * LABEL_DIVISOR + instance number
SPLITS = ("train", "val")
LAYOUT_ENTRIES = ("images", "panoptic", "semantic", "annotations", MARKER_FILE)
# Scene statistics, also generator parameters (a second world with other statistics: register_shapes_world.py).
# Folders written before these were parameters hold these values.
SCENE_DEFAULTS = {"min_shapes": 3, "max_shapes": 14, "largest_shape": 0.5, "texture_scale": 1.0}
DEFAULT_PARAMS = {"num_train": 3000, "num_val": 50, "seed": 0, "min_size": 256, "max_size": 384, **SCENE_DEFAULTS}
MIN_IMAGE_SIZE = 64
JPEG_QUALITY = 95

# Scene sampling.
NEAR_PLACEMENT_PROB = 0.5  # place next to an earlier shape (touching or overlapping it)
PLACEMENT_TRIES = 8
MIN_VISIBLE_AREA = 16  # every shape keeps at least this many visible pixels ...
MIN_VISIBLE_FRACTION = 0.3  # ... and this fraction of its in-image area
MIN_IN_IMAGE_FRACTION = 0.5  # at least half of a shape lies inside the image
MIN_STUFF_AREA = 64  # smaller visible stuff areas are void


ShapesWorldFolderError = GeneratedFolderError  # the name this module's callers catch


# ----------------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _read_metadata() -> dict:
    with open(METADATA_FILE) as f:
        data = json.load(f)
    where = f"shapes world metadata {METADATA_FILE}"
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise ValueError(f"{where}: 'categories' must be a non-empty list")
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or set(c) != {"id", "name", "isthing", "color"}:
            raise ValueError(f"{where}: categories[{i}] must have exactly the keys id, name, isthing, color; got {c}")
        color = c["color"]
        valid_color = isinstance(color, list) and len(color) == 3
        if not (valid_color and all(isinstance(v, int) and 0 <= v < 256 for v in color)):
            raise ValueError(f"{where}: categories[{i}].color must be 3 integers in [0, 255], got {color}")
        if c["isthing"] not in (0, 1) or not isinstance(c["id"], int) or c["id"] < 1:
            raise ValueError(f"{where}: categories[{i}] needs an integer id >= 1 and isthing 0 or 1, got {c}")
        known = SHAPE_KINDS if c["isthing"] else tuple(STUFF_TEXTURES)
        if c["name"] not in known:
            kind = "thing" if c["isthing"] else "stuff"
            raise ValueError(f"{where}: categories[{i}].name {c['name']!r} is no {kind} the generator draws {known}")
    ids = [c["id"] for c in cats]
    if ids != sorted(set(ids)):
        raise ValueError(f"{where}: category ids must be unique and increasing, got {ids}")
    isthing = [c["isthing"] for c in cats]
    if isthing != sorted(isthing, reverse=True) or 1 not in isthing or 0 not in isthing:
        raise ValueError(f"{where}: list the thing categories first, then the stuff ones (both needed)")
    if len(cats) > IGNORE_LABEL:
        raise ValueError(f"{where}: at most {IGNORE_LABEL} categories fit uint8 maps (ignore = {IGNORE_LABEL})")
    if max(ids) * LABEL_DIVISOR + LABEL_DIVISOR >= 256**3:
        raise ValueError(f"{where}: category ids must stay below {256**3 // LABEL_DIVISOR - 1} for panoptic PNG ids")
    palette = data.get("instance_palette")
    if not (isinstance(palette, list) and palette and all(isinstance(p, list) and len(p) == 3 for p in palette)):
        raise ValueError(f"{where}: 'instance_palette' must be a non-empty list of RGB triples")
    return data


def shapes_world_categories() -> List[dict]:
    """The categories (dicts with id, name, isthing, color), things first; position = contiguous id."""
    return copy.deepcopy(_read_metadata()["categories"])


def instance_palette() -> np.ndarray:
    """(K, 3) float32 RGB colours that thing instances of every class draw from."""
    return np.asarray(_read_metadata()["instance_palette"], dtype=np.float32)


def _metadata_fingerprint() -> str:
    canonical = json.dumps(_read_metadata(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Things
# ----------------------------------------------------------------------------------------------------------
def sample_shapes(
    rng: np.random.Generator,
    height: int,
    width: int,
    kinds: Sequence[str] = SHAPE_KINDS,
    palette: Optional[np.ndarray] = None,
    num_shapes: Tuple[int, int] = (SCENE_DEFAULTS["min_shapes"], SCENE_DEFAULTS["max_shapes"]),
    largest_shape: float = SCENE_DEFAULTS["largest_shape"],
) -> Tuple[List[ShapeInstance], List[np.ndarray]]:
    """
    Sample ``num_shapes`` (lowest, highest; default 3-14) shapes in painter's order (later ones on top). Sizes are
    log-uniform from 8 px to ``largest_shape`` (default half) of the shorter image side; about half the shapes are
    placed against an earlier shape (touching or overlapping).
    A placement is retried when it would leave an earlier shape less than MIN_VISIBLE_AREA px or
    MIN_VISIBLE_FRACTION of its area visible; a shape with no valid placement is dropped.

    Returns:
        shapes: the ShapeInstances, in drawing order.
        masks: their full (unoccluded, clipped to the image) bool (height, width) masks.
    """
    palette = instance_palette() if palette is None else np.asarray(palette, np.float32)
    n = int(rng.integers(num_shapes[0], num_shapes[1] + 1))
    largest = max(SMALLEST_SHAPE, largest_shape * min(height, width))
    sizes = np.exp(rng.uniform(math.log(SMALLEST_SHAPE), math.log(largest), n))
    kind_ids = rng.integers(len(kinds), size=n)
    order = np.argsort(-np.log(sizes) + rng.normal(0.0, 0.5, n), kind="stable")  # mostly large ones first

    owner = np.full((height, width), -1, np.int32)  # index of the shape visible at each pixel
    shapes: List[ShapeInstance] = []
    masks: List[np.ndarray] = []
    areas: List[int] = []
    for i in order:
        kind = kinds[kind_ids[i]]
        size = float(max(sizes[i], MIN_SHAPE_SIZE[kind]))
        min_in_image = MIN_IN_IMAGE_FRACTION * shape_area(kind, size)
        for _ in range(PLACEMENT_TRIES):
            if shapes and rng.random() < NEAR_PLACEMENT_PROB:
                other = shapes[int(rng.integers(len(shapes)))]
                dist = 0.5 * (size + other.size) * rng.uniform(0.5, 1.0)
                direction = rng.uniform(0.0, 2 * np.pi)
                center = (
                    other.center[0] + dist * math.cos(direction),
                    other.center[1] + dist * math.sin(direction),
                )
            else:
                center = (rng.uniform(0.0, width), rng.uniform(0.0, height))
            angle = rng.uniform(0.0, 2 * np.pi)
            mask = render_shape(kind, center, size, angle, height, width)
            area = int(mask.sum())
            if area < max(MIN_VISIBLE_AREA, min_in_image):
                continue
            if shapes:
                left = np.bincount(owner[(owner >= 0) & ~mask], minlength=len(shapes))
                needed = np.maximum(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * np.asarray(areas))
                if np.any(left < needed):
                    continue
            color = np.clip(palette[int(rng.integers(len(palette)))] + rng.normal(0.0, 12.0, 3), 0, 255)
            shading = (float(rng.uniform(0.0, 2 * np.pi)), float(rng.uniform(0.05, 0.35)))
            shapes.append(ShapeInstance(kind, center, size, angle, tuple(float(v) for v in color), shading))
            masks.append(mask)
            areas.append(area)
            owner[mask] = len(shapes) - 1
            break
    return shapes, masks


# ----------------------------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------------------------
def generate_image(rng: np.random.Generator, height: int, width: int, scene: Optional[dict] = None) -> dict:
    """
    Draw one scene and its annotations. ``scene`` overrides entries of ``SCENE_DEFAULTS`` (number and size of the
    shapes, scale of the textures).

    Returns a dict with
        "image": (H, W, 3) uint8 RGB,
        "semantic": (H, W) uint8 contiguous ids, IGNORE_LABEL for void,
        "panoptic": (H, W) int32 segment ids, 0 for void,
        "segments": list of dicts with "id", "category_id" (dataset id), "isthing", "mask" (bool (H, W),
            visible pixels) and, for things, "polygon": an (N, 2) array when the whole shape is visible as a
            single polygon inside the image (its COCO rasterisation equals "mask"), else None.
    """
    cats = _read_metadata()["categories"]
    contiguous = {c["id"]: i for i, c in enumerate(cats)}
    things = {c["name"]: c for c in cats if c["isthing"]}
    stuff = [c for c in cats if not c["isthing"]]

    scene = {**SCENE_DEFAULTS, **(scene or {})}
    image, stuff_labels = stuff_background(rng, height, width, [c["name"] for c in stuff], scene["texture_scale"])
    shapes, masks = sample_shapes(
        rng, height, width, list(things), instance_palette(),
        (scene["min_shapes"], scene["max_shapes"]), scene["largest_shape"],
    )
    owner = np.full((height, width), -1, np.int32)
    for k, (shape, mask) in enumerate(zip(shapes, masks)):
        paint_shape(image, mask, shape)
        owner[mask] = k
    image = degrade(rng, image)

    semantic = np.full((height, width), IGNORE_LABEL, np.uint8)
    panoptic = np.zeros((height, width), np.int32)
    segments = []
    for k, (shape, full) in enumerate(zip(shapes, masks)):
        cat = things[shape.kind]
        visible = owner == k
        outer, holes = shape_polygons(shape.kind, shape.center, shape.size, shape.angle)
        inside = all(
            p[:, 0].min() >= 0 and p[:, 1].min() >= 0 and p[:, 0].max() <= width and p[:, 1].max() <= height
            for p in outer
        )
        polygon = outer[0] if (not holes and len(outer) == 1 and inside and np.array_equal(visible, full)) else None
        seg_id = cat["id"] * LABEL_DIVISOR + k + 1
        semantic[visible] = contiguous[cat["id"]]
        panoptic[visible] = seg_id
        segments.append({"id": seg_id, "category_id": cat["id"], "isthing": 1, "mask": visible, "polygon": polygon})
    background = owner < 0
    for j, cat in enumerate(stuff):
        visible = background & (stuff_labels == j)
        if visible.sum() < MIN_STUFF_AREA:  # too small to annotate: stays void / ignore
            continue
        seg_id = cat["id"] * LABEL_DIVISOR
        semantic[visible] = contiguous[cat["id"]]
        panoptic[visible] = seg_id
        segments.append({"id": seg_id, "category_id": cat["id"], "isthing": 0, "mask": visible, "polygon": None})
    return {"image": image, "semantic": semantic, "panoptic": panoptic, "segments": segments}


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------
def shapes_world_paths(folder, split: str) -> Dict[str, str]:
    """Paths of one split inside a shapes world folder: image_root, panoptic_root, sem_seg_root,
    panoptic_json and instances_json."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = str(folder)
    return {
        "image_root": os.path.join(folder, "images", split),
        "panoptic_root": os.path.join(folder, "panoptic", split),
        "sem_seg_root": os.path.join(folder, "semantic", split),
        "panoptic_json": os.path.join(folder, "annotations", f"panoptic_{split}.json"),
        "instances_json": os.path.join(folder, "annotations", f"instances_{split}.json"),
    }


def validate_params(num_train, num_val, seed, min_size, max_size, min_image_size=MIN_IMAGE_SIZE) -> dict:
    """Check generator arguments; errors name the CLI flag. Returns the parameters recorded in COMPLETE.json."""

    def check_int(value, flag, lowest):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
            raise ValueError(f"{flag} must be an integer >= {lowest}, got {value!r}")
        return int(value)

    params = {
        "num_train": check_int(num_train, "--num-train (num_train)", 1),
        "num_val": check_int(num_val, "--num-val (num_val)", 1),
        "seed": check_int(seed, "--seed (seed)", 0),
        "min_size": check_int(min_size, "--min-size (min_size)", min_image_size),
        "max_size": check_int(max_size, "--max-size (max_size)", min_image_size),
    }
    if params["min_size"] > params["max_size"]:
        raise ValueError(
            f"--min-size (min_size) {params['min_size']} must not exceed --max-size (max_size) {params['max_size']}"
        )
    params["version"] = GENERATOR_VERSION
    params["metadata"] = _metadata_fingerprint()
    return params


def validate_scene(min_shapes, max_shapes, largest_shape, texture_scale) -> dict:
    """Check the scene-statistics arguments (``SCENE_DEFAULTS``); errors name the CLI flag."""
    for flag, value in (("min_shapes", min_shapes), ("max_shapes", max_shapes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} ({flag}) must be an integer >= 1, got {value!r}")
    if min_shapes > max_shapes:
        raise ValueError(f"--min-shapes (min_shapes) {min_shapes} must not exceed --max-shapes (max_shapes) {max_shapes}")
    for flag, value, low, high in (("largest_shape", largest_shape, 0.0, 1.0), ("texture_scale", texture_scale, 0.0, 16.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not low < value <= high:
            raise ValueError(f"--{flag.replace('_', '-')} ({flag}) must be a number in ({low:g}, {high:g}], got {value!r}")
    return {"min_shapes": int(min_shapes), "max_shapes": int(max_shapes),
            "largest_shape": float(largest_shape), "texture_scale": float(texture_scale)}


def _recorded_params(**params) -> dict:
    """All generator arguments (``DEFAULT_PARAMS``' keys) checked: the parameters recorded in COMPLETE.json."""
    scene = {key: params.pop(key) for key in SCENE_DEFAULTS}
    return {**validate_params(**params), **validate_scene(**scene)}


def _write_png(path: str, array: np.ndarray) -> None:
    if not cv2.imwrite(path, array):
        raise OSError(f"could not write {path}")


def _write_image(folder: Path, split: str, params: dict, i: int) -> Tuple[dict, List[dict], dict]:
    """Generate image ``i`` of ``split`` and write its JPEG and PNGs. Returns its COCO image entry, its
    instance annotations (without ids: those are numbered over the split) and its panoptic annotation."""
    paths = shapes_world_paths(folder, split)
    rng = np.random.default_rng([params["seed"], SPLITS.index(split), i])
    height, width = (int(v) for v in rng.integers(params["min_size"], params["max_size"] + 1, size=2))
    sample = generate_image(rng, height, width, {key: params[key] for key in SCENE_DEFAULTS})
    stem, image_id = f"{split}_{i:06d}", i + 1
    if not cv2.imwrite(
        os.path.join(paths["image_root"], stem + ".jpg"),
        sample["image"][:, :, ::-1],
        [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
    ):
        raise OSError(f"could not write {stem}.jpg into {paths['image_root']}")
    pan = sample["panoptic"]
    bgr = np.stack([pan // 256**2, (pan // 256) % 256, pan % 256], axis=-1).astype(np.uint8)
    _write_png(os.path.join(paths["panoptic_root"], stem + ".png"), bgr)
    _write_png(os.path.join(paths["sem_seg_root"], stem + ".png"), sample["semantic"])

    image = {"id": image_id, "file_name": stem + ".jpg", "height": height, "width": width}
    segments_info, instance_anns = [], []
    for seg in sample["segments"]:
        rle = mask_util.encode(np.asfortranarray(seg["mask"].astype(np.uint8)))
        box = [float(v) for v in mask_util.toBbox(rle)]
        area = int(seg["mask"].sum())
        segments_info.append(
            {"id": seg["id"], "category_id": seg["category_id"], "iscrowd": 0, "area": area, "bbox": box}
        )
        if not seg["isthing"]:
            continue
        if seg["polygon"] is not None:
            segmentation = [[float(v) for v in seg["polygon"].ravel()]]
        else:
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        instance_anns.append(
            {
                "image_id": image_id,
                "category_id": seg["category_id"],
                "segmentation": segmentation,
                "area": area,
                "bbox": box,
                "iscrowd": 0,
            }
        )
    panoptic_ann = {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_info}
    return image, instance_anns, panoptic_ann


def _write_image_job(job: Tuple[Path, str, dict, int]) -> Tuple[dict, List[dict], dict]:
    return _write_image(*job)


def _write_split(folder: Path, split: str, params: dict, progress: tqdm, pool=None) -> None:
    """Write every image of ``split`` (in a process pool if given: the files do not depend on it) and then
    the split's COCO instance and panoptic JSON files."""
    paths = shapes_world_paths(folder, split)
    for key in ("image_root", "panoptic_root", "sem_seg_root"):
        os.makedirs(paths[key], exist_ok=True)
    cats = _read_metadata()["categories"]
    jobs = [(folder, split, params, i) for i in range(params[f"num_{split}"])]
    results = pool.imap(_write_image_job, jobs, chunksize=8) if pool is not None else map(_write_image_job, jobs)
    images, instance_anns, panoptic_anns = [], [], []
    for image, anns, panoptic_ann in results:  # in image order, whichever process made them
        images.append(image)
        instance_anns += [{"id": len(instance_anns) + k + 1, **ann} for k, ann in enumerate(anns)]
        panoptic_anns.append(panoptic_ann)
        progress.update(1)

    info = {"description": "shapes world (generated)", "version": GENERATOR_VERSION, "seed": params["seed"]}
    instances = {
        "info": info,
        "images": images,
        "annotations": instance_anns,
        "categories": [
            {"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in cats if c["isthing"]
        ],
    }
    panoptic = {
        "info": info,
        "images": images,
        "annotations": panoptic_anns,
        "categories": [
            {
                "id": c["id"],
                "name": c["name"],
                "supercategory": "shape" if c["isthing"] else "ground",
                "isthing": c["isthing"],
                "color": c["color"],
            }
            for c in cats
        ],
    }
    os.makedirs(os.path.dirname(paths["instances_json"]), exist_ok=True)
    for path, data in ((paths["instances_json"], instances), (paths["panoptic_json"], panoptic)):
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"))


def _check_workers(workers: Optional[int]) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"--workers (workers) must be an integer >= 1 or None, got {workers!r}")


def _write_all(folder: Path, params: dict, show_progress: bool, workers: Optional[int]) -> None:
    total = params["num_train"] + params["num_val"]
    if workers is None:  # one per core, at most one per 200 images
        workers = min(os.cpu_count() or 1, max(1, total // 200))
    workers = min(workers, total)
    # "spawn": the caller may be a training process with threads (torch), which forking can deadlock
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        with tqdm(total=total, desc="shapes world", unit="img", disable=not show_progress) as progress:
            for split in SPLITS:
                _write_split(folder, split, params, progress, pool)
    finally:
        if pool is not None:
            pool.terminate()


def folder_state(folder, params: dict) -> Tuple[str, str]:
    """("missing" | "complete" | "partial", reason) of a shapes world folder for validated ``params``."""
    return generated_folder.folder_state(
        Path(folder), params, what="shapes world", layout_entries=LAYOUT_ENTRIES, implied=SCENE_DEFAULTS
    )


def _scene_note(params: dict) -> str:
    changed = {key: params[key] for key in SCENE_DEFAULTS if params[key] != SCENE_DEFAULTS[key]}
    return "".join(f", {key} {value:g}" for key, value in changed.items())


def ensure_shapes_world(
    folder,
    *,
    num_train: int = DEFAULT_PARAMS["num_train"],
    num_val: int = DEFAULT_PARAMS["num_val"],
    seed: int = DEFAULT_PARAMS["seed"],
    min_size: int = DEFAULT_PARAMS["min_size"],
    max_size: int = DEFAULT_PARAMS["max_size"],
    min_shapes: int = DEFAULT_PARAMS["min_shapes"],
    max_shapes: int = DEFAULT_PARAMS["max_shapes"],
    largest_shape: float = DEFAULT_PARAMS["largest_shape"],
    texture_scale: float = DEFAULT_PARAMS["texture_scale"],
    show_progress: bool = True,
    workers: Optional[int] = None,
) -> Path:
    """
    Make `folder` hold a complete shapes world set with these parameters and return it as a Path. The image
    sizes and the scene statistics (``SCENE_DEFAULTS``: shapes per image, their largest size as a fraction of the
    shorter side, the textures' magnification) are the generator's; :func:`validate_scene` checks the latter.
    ``workers`` processes draw the images (default: one per CPU core, at most one per 200 images, since
    starting a process costs about as much as drawing 50 images); the files do not depend on it.

    A complete folder with the same parameters is reused. A folder without a valid marker or with missing or
    truncated files is regenerated (only if it holds nothing but the generator's own entries). A folder made
    with other parameters raises ShapesWorldFolderError naming what differs. The set is written into a
    temporary sibling folder that is renamed into place, so concurrent callers (e.g. one per GPU) are safe.
    """
    params = _recorded_params(
        num_train=num_train, num_val=num_val, seed=seed, min_size=min_size, max_size=max_size,
        min_shapes=min_shapes, max_shapes=max_shapes, largest_shape=largest_shape, texture_scale=texture_scale,
    )
    _check_workers(workers)
    start = time.perf_counter()
    folder, written = generated_folder.ensure_generated_folder(
        folder,
        params,
        lambda tmp: _write_all(tmp, params, show_progress, workers),
        generator="shapes_world",
        what="shapes world",
        layout_entries=LAYOUT_ENTRIES,
        implied=SCENE_DEFAULTS,
    )
    if written:
        logger.info(
            f"Shapes world: wrote {params['num_train']} train + {params['num_val']} val images "
            f"({params['min_size']}-{params['max_size']} px, seed {params['seed']}{_scene_note(params)}) to {folder} "
            f"in {time.perf_counter() - start:.1f} s"
        )
    return folder


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m mask2former.data.synthetic.shapes_world",
        description="Generate the shapes world dataset (COCO instances, COCO panoptic, semantic PNGs). "
        "An existing complete folder with the same parameters is kept; one with other parameters is an error.",
    )
    default_output = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "shapes_world")
    parser.add_argument("--output", default=default_output, help=f"dataset folder (default: {default_output})")
    parser.add_argument("--num-train", type=int, default=DEFAULT_PARAMS["num_train"], help="training images (>= 1)")
    parser.add_argument("--num-val", type=int, default=DEFAULT_PARAMS["num_val"], help="validation images (>= 1)")
    parser.add_argument("--seed", type=int, default=DEFAULT_PARAMS["seed"], help="random seed (>= 0)")
    parser.add_argument(
        "--min-size", type=int, default=DEFAULT_PARAMS["min_size"],
        help=f"smallest image height/width in px (>= {MIN_IMAGE_SIZE})",
    )
    parser.add_argument(
        "--max-size", type=int, default=DEFAULT_PARAMS["max_size"], help="largest image height/width in px"
    )
    parser.add_argument(
        "--min-shapes", type=int, default=DEFAULT_PARAMS["min_shapes"], help="fewest shapes drawn per image (>= 1)"
    )
    parser.add_argument(
        "--max-shapes", type=int, default=DEFAULT_PARAMS["max_shapes"],
        help="most shapes drawn per image (some may find no free place and be dropped)",
    )
    parser.add_argument(
        "--largest-shape", type=float, default=DEFAULT_PARAMS["largest_shape"],
        help="largest shape size as a fraction of the shorter image side (0-1; the smallest is 8 px)",
    )
    parser.add_argument(
        "--texture-scale", type=float, default=DEFAULT_PARAMS["texture_scale"],
        help="magnification of the stuff textures' features (bricks, waves, grains)",
    )
    parser.add_argument(
        "--workers", type=int, default=None,
        help="processes drawing images (default: one per CPU core, at most one per 200 images)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f"--output {args.output} is a file, expected a directory or a new path")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = {key: getattr(args, key) for key in DEFAULT_PARAMS}
    try:
        recorded = _recorded_params(**params)
        _check_workers(args.workers)
    except ValueError as e:
        parser.error(str(e))
    existed = folder_state(args.output, recorded)[0] == "complete"
    folder = ensure_shapes_world(args.output, show_progress=not args.no_progress, workers=args.workers, **params)
    if existed:
        logger.info(f"Shapes world: {folder} is already complete with these parameters; nothing written.")
    return folder


if __name__ == "__main__":
    try:
        main()
    except ShapesWorldFolderError as e:
        raise SystemExit(f"error: {e}")
