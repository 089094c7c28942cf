"""Mask prompts for the mask classifier: ground-truth masks perturbed the way real SAM masks differ from ground
truth, negative prompts, and the class a prompt is labelled with.

All functions take and return (H, W) bool numpy arrays and draw from a ``numpy.random.RandomState``.
Perturbations: ``dilate``/``erode`` (by 1 px up to a tenth of the object's size), ``noisy_boundary`` (the
boundary moved by smooth random noise), ``partial`` (the object cut by a random straight line), ``part`` (one
cell of a random split of the object, as SAM's part-level masks), ``merge`` (the union with a touching
segment). Negatives: ``background_fragment`` (a piece of the area no thing covers) and ``random_blob``
(random ellipses anywhere).
"""
from typing import List, Optional, Sequence

import cv2
import numpy as np

__all__ = ["PERTURBATIONS", "perturb_mask", "background_fragment", "random_blob", "label_prompts"]

PERTURBATIONS = ("dilate", "erode", "noisy_boundary", "partial", "part", "merge")


def _radius(mask: np.ndarray, rng: np.random.RandomState) -> int:
    size = np.sqrt(max(int(mask.sum()), 1))
    return int(rng.randint(1, max(2, int(round(0.1 * size))) + 1))


def _morph(mask: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    op = cv2.dilate if dilate else cv2.erode
    return op(mask.astype(np.uint8), kernel).astype(bool)


def _smooth_noise(shape, cell: int, rng: np.random.RandomState) -> np.ndarray:
    """Noise in [-1, 1] that varies over about ``cell`` pixels."""
    h, w = shape
    coarse = rng.uniform(-1, 1, size=(max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def _split_cells(mask: np.ndarray, num_cells: int, rng: np.random.RandomState) -> List[np.ndarray]:
    """The mask split into Voronoi cells around ``num_cells`` random seed pixels of it."""
    ys, xs = np.nonzero(mask)
    seeds = rng.choice(len(ys), size=min(num_cells, len(ys)), replace=False)
    d = (ys[:, None] - ys[seeds][None]) ** 2 + (xs[:, None] - xs[seeds][None]) ** 2
    owner = d.argmin(1)
    cells = []
    for k in range(len(seeds)):
        cell = np.zeros_like(mask)
        cell[ys[owner == k], xs[owner == k]] = True
        cells.append(cell)
    return cells


def perturb_mask(mask: np.ndarray, kind: str, rng: np.random.RandomState,
                 others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """``mask`` changed by the perturbation ``kind`` (one of PERTURBATIONS); ``others`` are the image's other
    segments (for "merge"). Falls back to a dilation where a perturbation would leave nothing (erosion of a
    thin object) or has nothing to work with (no touching segment to merge with)."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown mask perturbation {kind!r}; expected one of {PERTURBATIONS}")
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("cannot perturb an empty mask")
    out = None
    if kind == "erode":
        out = _morph(mask, _radius(mask, rng), dilate=False)
    elif kind == "noisy_boundary":
        size = np.sqrt(mask.sum())
        amplitude = rng.uniform(1.0, max(1.5, 0.15 * size))  # pixels the boundary moves at most
        inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
        outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)
        signed = np.where(mask, inside, -outside)  # > 0 inside
        cell = int(max(4, size / 3))
        out = signed + amplitude * _smooth_noise(mask.shape, cell, rng) > 0
    elif kind == "partial":
        ys, xs = np.nonzero(mask)
        i = rng.randint(len(ys))
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
        side = (yy - ys[i]) * np.cos(angle) - (xx - xs[i]) * np.sin(angle) >= 0
        out = mask & side
        if out.sum() < 0.5 * mask.sum():  # keep the larger piece: a partial mask, not a sliver
            out = mask & ~side
    elif kind == "part":
        if mask.sum() >= 8:
            cells = _split_cells(mask, rng.randint(2, 5), rng)
            out = cells[rng.randint(len(cells))]
    elif kind == "merge":
        grown = _morph(mask, 2, dilate=True)
        touching = [o for o in others if o.any() and (grown & o).any() and not (o == mask).all()]
        if touching:
            out = mask | touching[rng.randint(len(touching))]
    if out is None or not out.any() or kind == "dilate":
        out = _morph(mask, _radius(mask, rng), dilate=True)
    return out


def background_fragment(thing_union: np.ndarray, region: np.ndarray, rng: np.random.RandomState) -> Optional[np.ndarray]:
    """A piece of ``region`` outside every thing (a cell of a random split of that area), or None if none."""
    free = region & ~thing_union
    if free.sum() < 16:
        return None
    ys, xs = np.nonzero(free)
    # Split a random window of the free area (bounded work on large images).
    i = rng.randint(len(ys))
    half = int(max(8, np.sqrt(free.sum()) * rng.uniform(0.1, 0.35)))
    window = np.zeros_like(free)
    window[max(0, ys[i] - half): ys[i] + half, max(0, xs[i] - half): xs[i] + half] = True
    piece = free & window
    cells = _split_cells(piece, rng.randint(1, 4), rng) if piece.sum() >= 8 else [piece]
    cell = cells[rng.randint(len(cells))]
    return cell if cell.any() else None


def random_blob(region: np.ndarray, rng: np.random.RandomState) -> Optional[np.ndarray]:
    """One to three random ellipses inside ``region``'s bounding box, or None if the region is empty."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = np.sqrt((y1 - y0) * (x1 - x0))
    canvas = np.zeros(region.shape, dtype=np.uint8)
    for _ in range(rng.randint(1, 4)):
        center = (int(rng.randint(x0, x1)), int(rng.randint(y0, y1)))
        axes = (int(max(2, rng.uniform(0.04, 0.2) * scale)), int(max(2, rng.uniform(0.04, 0.2) * scale)))
        cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    blob = canvas.astype(bool) & region
    return blob if blob.any() else None


def label_prompts(prompts: np.ndarray, segments: np.ndarray, classes: Sequence[int], is_thing: Sequence[bool],
                  num_classes: int, min_purity: float = 0.5, min_coverage: float = 0.3) -> np.ndarray:
    """The class of each prompt: that of the segment covering the largest part of it, if that segment covers at
    least ``min_purity`` of the prompt and (for a thing) the prompt covers at least ``min_coverage`` of the
    thing; else ``num_classes`` ("no object").

    Args:
        prompts: (P, H, W) bool; segments: (S, H, W) bool ground truth with ``classes`` and ``is_thing`` (S,).
    Returns:
        (P,) int64.
    """
    labels = np.full(len(prompts), num_classes, dtype=np.int64)
    if len(prompts) == 0 or len(segments) == 0:
        return labels
    p = prompts.reshape(len(prompts), -1).astype(np.float32)
    s = segments.reshape(len(segments), -1).astype(np.float32)
    inter = p @ s.T  # (P, S)
    best = inter.argmax(1)
    rows = np.arange(len(prompts))
    purity = inter[rows, best] / np.maximum(p.sum(1), 1)
    coverage = inter[rows, best] / np.maximum(s.sum(1)[best], 1)
    thing = np.asarray(is_thing, dtype=bool)[best]
    ok = (purity >= min_purity) & (~thing | (coverage >= min_coverage))
    labels[ok] = np.asarray(classes, dtype=np.int64)[best[ok]]
    return labels
