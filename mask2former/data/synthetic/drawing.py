"""The drawing kit shared by the shapes-world image and video generators.

Thing shapes (circle, square, triangle, star, ring, cross, hexagon) as polygons and rasterised masks, stuff
textures (grass, water, sand, wall) and a background of irregular stuff regions, painting a shaded shape into
an image, and the final blur and noise. Everything draws from a given ``numpy.random.Generator``, so a scene
depends only on its seed.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

# `size` is the diameter of the circle circumscribing a shape, in pixels.
SHAPE_KINDS = ("circle", "square", "triangle", "star", "ring", "cross", "hexagon")
SMALLEST_SHAPE = 8.0
MIN_SHAPE_SIZE = {"circle": 8, "square": 8, "triangle": 10, "star": 12, "ring": 14, "cross": 12, "hexagon": 8}
STAR_INNER_RATIO = 0.45
RING_HOLE_RATIO = 0.55
CROSS_ARM_RATIO = 0.3
NUM_STUFF_RANGE = (2, 4)  # stuff regions per background


# ----------------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------------
def _ring_points(n: int, radius: float, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _local_polygons(kind: str, r: float) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Outer polygons and holes of a shape of radius ``r`` centred at the origin, unrotated."""
    num_circle = int(np.clip(round(np.pi * r / 1.5), 12, 96))  # vertices about 3 px apart
    if kind == "circle":
        return [_ring_points(num_circle, r)], []
    if kind == "ring":
        return [_ring_points(num_circle, r)], [_ring_points(num_circle, r * RING_HOLE_RATIO)]
    if kind == "square":
        return [_ring_points(4, r, np.pi / 4)], []
    if kind == "triangle":
        return [_ring_points(3, r, -np.pi / 2)], []
    if kind == "hexagon":
        return [_ring_points(6, r)], []
    if kind == "star":
        pts = _ring_points(10, r, -np.pi / 2)
        pts[1::2] *= STAR_INNER_RATIO
        return [pts], []
    if kind == "cross":
        a, b = CROSS_ARM_RATIO, 1.0
        # the edge of the upper arm's right side, the inner corner and the right arm's upper side; turned
        # clockwise 4 times, so consecutive quarters join into one simple (not self-intersecting) outline
        quarter = [(a, b), (a, a), (b, a)]
        pts = []
        for k in range(4):
            c, s = math.cos(-k * np.pi / 2), math.sin(-k * np.pi / 2)
            pts += [(x * c - y * s, x * s + y * c) for x, y in quarter]
        return [r * np.asarray(pts)], []
    raise ValueError(f"shape kind must be one of {SHAPE_KINDS}, got {kind!r}")


def shape_polygons(
    kind: str, center: Sequence[float], size: float, angle: float
) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """
    Polygons of one shape, in image pixel coordinates.

    Args:
        kind: one of SHAPE_KINDS.
        center: (x, y) in pixels.
        size: diameter of the circumscribed circle in pixels.
        angle: rotation in radians.

    Returns:
        (outer, holes): lists of (N, 2) float64 arrays of (x, y) vertices, rounded to 0.01 px (so they
        survive a JSON round trip exactly). The shape is the union of `outer` minus the union of `holes`.
    """
    outer, holes = _local_polygons(kind, size / 2.0)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # row vectors: p @ rot turns p by `angle`
    offset = np.asarray(center, dtype=np.float64)

    def place(polys):
        return [np.round(p @ rot + offset, 2) for p in polys]

    return place(outer), place(holes)


def rasterize_polygons(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Union of (N, 2) polygons as a bool (height, width) mask, rasterised exactly like COCO / detectron2."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects([p.ravel().tolist() for p in polygons], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def render_shape(
    kind: str, center: Sequence[float], size: float, angle: float, height: int, width: int
) -> np.ndarray:
    """Bool (height, width) mask of a shape (see :func:`shape_polygons` for the arguments)."""
    outer, holes = shape_polygons(kind, center, size, angle)
    mask = rasterize_polygons(outer, height, width)
    if holes:
        mask &= ~rasterize_polygons(holes, height, width)
    return mask


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def shape_area(kind: str, size: float) -> float:
    """Area in px^2 of an unclipped shape."""
    outer, holes = _local_polygons(kind, size / 2.0)
    return sum(map(_polygon_area, outer)) - sum(map(_polygon_area, holes))


# ----------------------------------------------------------------------------------------------------------
# Stuff textures
# ----------------------------------------------------------------------------------------------------------
def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """(height, width) float32 smooth random field with features about `cell` px wide, values ~N(0, 1)."""
    gh = max(2, int(math.ceil(height / cell)) + 1)
    gw = max(2, int(math.ceil(width / cell)) + 1)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _jitter_color(rng: np.random.Generator, base: Sequence[float], amount: float = 15.0) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0.0, amount, 3).astype(np.float32), 0, 255)


def _grid(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    return yy.astype(np.float32), xx.astype(np.float32)


def grass_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Green with short vertical blade streaks and patchy brightness."""
    base = _jitter_color(rng, (70, 140, 50))
    blades = cv2.blur(rng.standard_normal((height, width)).astype(np.float32), (1, 9)) * 3.0
    shade = 1.0 + 0.18 * blades + 0.15 * smooth_noise(rng, height, width, 48)
    img = base * shade[..., None]
    img[..., 0] += 15.0 * smooth_noise(rng, height, width, 64)  # yellowish patches
    return img


def water_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blue with warped wave stripes and bright crests."""
    base = _jitter_color(rng, (45, 95, 175))
    period, theta = rng.uniform(7.0, 14.0), rng.uniform(-0.3, 0.3)
    yy, xx = _grid(height, width)
    t = yy * math.cos(theta) + xx * math.sin(theta) + 4.0 * smooth_noise(rng, height, width, 40)
    waves = np.sin(2 * np.pi * t / period)
    shade = 1.0 + 0.15 * waves + 0.1 * smooth_noise(rng, height, width, 64)
    crest = np.clip(waves - 0.85, 0.0, None) / 0.15
    return base * shade[..., None] + 60.0 * crest[..., None]


def sand_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Beige speckle with fine ripples and dark grains."""
    base = _jitter_color(rng, (205, 180, 125))
    period, theta = rng.uniform(5.0, 9.0), rng.uniform(0.0, np.pi)
    yy, xx = _grid(height, width)
    t = xx * math.cos(theta) + yy * math.sin(theta) + 2.0 * smooth_noise(rng, height, width, 32)
    shade = (
        1.0
        + 0.07 * rng.standard_normal((height, width)).astype(np.float32)
        + 0.06 * np.sin(2 * np.pi * t / period)
        - np.where(rng.random((height, width), dtype=np.float32) < 0.02, np.float32(0.25), np.float32(0.0))
        + 0.08 * smooth_noise(rng, height, width, 64)
    )
    return base * shade[..., None]


def wall_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Running-bond bricks with light mortar lines."""
    brick = _jitter_color(rng, (150, 75, 60), 20.0)
    mortar_color = _jitter_color(rng, (190, 185, 175), 10.0)
    bh = int(rng.integers(7, 14))
    bw = 2 * bh + int(rng.integers(-2, 3))
    mortar = int(rng.integers(1, 3))
    yy = np.arange(height)[:, None]
    row = yy // bh
    xo = np.arange(width)[None, :] + (row % 2) * (bw // 2)
    col = xo // bw
    brick_shade = 1.0 + 0.12 * rng.standard_normal((height // bh + 1, (width + bw) // bw + 1)).astype(np.float32)
    shade = brick_shade[np.broadcast_to(row, col.shape), col]
    shade = shade + 0.04 * rng.standard_normal((height, width)).astype(np.float32)
    is_mortar = (yy % bh < mortar) | (xo % bw < mortar)
    return np.where(is_mortar[..., None], mortar_color, brick * shade[..., None])


STUFF_TEXTURES: Dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "grass": grass_texture,
    "water": water_texture,
    "sand": sand_texture,
    "wall": wall_texture,
}


def stuff_texture(name: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 RGB texture (values about 0..255) of the stuff class `name`."""
    if name not in STUFF_TEXTURES:
        raise ValueError(f"stuff texture must be one of {tuple(STUFF_TEXTURES)}, got {name!r}")
    return STUFF_TEXTURES[name](rng, height, width).astype(np.float32)


def _scaled_texture(name: str, rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    if scale == 1.0:
        return stuff_texture(name, rng, height, width)
    h, w = max(1, round(height / scale)), max(1, round(width / scale))
    interpolation = cv2.INTER_LINEAR if scale > 1.0 else cv2.INTER_AREA  # area averaging when shrinking: no aliasing
    return cv2.resize(stuff_texture(name, rng, h, w), (width, height), interpolation=interpolation)


def stuff_background(
    rng: np.random.Generator,
    height: int,
    width: int,
    stuff_names: Sequence[str] = tuple(STUFF_TEXTURES),
    texture_scale: float = 1.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """
    Partition an image into irregular regions of 2-4 stuff classes (argmax of smoothed noise fields) and
    texture them. A 2 px band along region boundaries blends both textures and is labelled -1 (ignore).
    ``texture_scale`` magnifies the textures' features (bricks, waves, blades, grains) by that factor: they are
    drawn at 1 / texture_scale of the image size and resized to it.

    Returns:
        image: (height, width, 3) float32 RGB.
        labels: (height, width) int32 index into `stuff_names`, -1 on the boundary band.
    """
    lo, hi = NUM_STUFF_RANGE
    k = int(rng.integers(min(lo, len(stuff_names)), min(hi, len(stuff_names)) + 1))
    chosen = rng.choice(len(stuff_names), size=k, replace=False)
    cell = rng.uniform(0.25, 0.5) * max(height, width)
    fields = np.stack(
        [
            smooth_noise(rng, height, width, cell)
            + 0.35 * smooth_noise(rng, height, width, cell / 5)
            + rng.normal(0.0, 0.3)
            for _ in range(k)
        ]
    )
    region = fields.argmax(axis=0).astype(np.uint8)
    image = np.zeros((height, width, 3), np.float32)
    for j, c in enumerate(chosen):
        np.copyto(image, _scaled_texture(stuff_names[c], rng, height, width, texture_scale), where=(region == j)[..., None])
    kernel = np.ones((3, 3), np.uint8)
    band = cv2.dilate(region, kernel) != cv2.erode(region, kernel)
    image[band] = cv2.GaussianBlur(image, (5, 5), 0)[band]
    labels = chosen.astype(np.int32)[region]
    labels[band] = -1
    return image, labels


# ----------------------------------------------------------------------------------------------------------
# Things
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ShapeInstance:
    """One drawn shape. `color` is RGB; `shading` = (direction in radians, strength) of a linear
    brightness gradient across the shape, so touching shapes of one colour stay distinguishable."""

    kind: str
    center: Tuple[float, float]
    size: float
    angle: float
    color: Tuple[float, float, float]
    shading: Tuple[float, float]

    def mask(self, height: int, width: int) -> np.ndarray:
        return render_shape(self.kind, self.center, self.size, self.angle, height, width)


def paint_shape(image: np.ndarray, mask: np.ndarray, shape: ShapeInstance) -> None:
    """Paint `shape` (its bool `mask`) into the float (H, W, 3) RGB `image` in place."""
    ys, xs = np.nonzero(mask)
    direction, strength = shape.shading
    t = ((xs - shape.center[0]) * math.cos(direction) + (ys - shape.center[1]) * math.sin(direction)) / (
        shape.size / 2.0
    )
    color = np.asarray(shape.color, np.float32)
    image[ys, xs] = np.clip(color[None, :] * (1.0 + strength * t.astype(np.float32))[:, None], 0, 255)


def degrade(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gaussian blur (sigma 0.3-1.2, 80% of images) then Gaussian noise (sigma 2-8); returns uint8."""
    image = image.astype(np.float32)
    if rng.random() < 0.8:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    image = image + rng.uniform(2.0, 8.0) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
