"""Extra query groups the decoder trains beside its Q matching queries (ours; all off by default).

* Denoising queries (DN-DETR, Mask DINO): for every ground-truth mask of an image, ``num_groups`` queries whose
  content is the embedding of a noised label and whose first masked attention is the ground-truth mask moved
  and rescaled like a noised box. They learn to reconstruct their own target (no matching), which gives the
  decoder layers a stable signal while the matching of the real queries is still random.
* One-to-many queries (H-DETR): an extra set of queries matched to the ground truth repeated k times.

Self-attention keeps the groups apart (:func:`self_attention_mask`) so that the matching queries behave
exactly as without the extra groups, which exist only in training.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

__all__ = ["denoising_queries", "noised_masks", "self_attention_mask"]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(n, h, w) bool masks -> (n, 4) boxes (x0, y0, x1, y1) in pixels, [0, 0, 0, 0] for empty masks."""
    n, h, w = masks.shape
    cols, rows = masks.any(1), masks.any(2)  # (n, w), (n, h)
    xs = torch.arange(w, device=masks.device).expand(n, w)
    ys = torch.arange(h, device=masks.device).expand(n, h)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs + 1, 0).amax(1)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys + 1, 0).amax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(cols.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def noised_masks(masks: torch.Tensor, noise_scale: float, generator=None) -> torch.Tensor:
    """Move and rescale each mask as Mask DINO noises a box: the centre by up to ``noise_scale`` times half
    the box size, each side length by a factor in [1 - noise_scale, 1 + noise_scale].

    Args:
        masks: (n, h, w) float masks in [0, 1].
    Returns:
        (n, h, w) float, the noised masks (bilinearly resampled, in [0, 1]).
    """
    n, h, w = masks.shape
    if n == 0 or noise_scale == 0:
        return masks
    boxes = mask_boxes(masks > 0.5)
    size = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1) / masks.new_tensor([w, h])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / masks.new_tensor([w, h]) * 2 - 1  # in [-1, 1]
    rand = torch.rand(n, 4, device=masks.device, generator=generator) * 2 - 1
    shift = rand[:, :2] * noise_scale * size  # half the box size, in [-1, 1] units (the box spans 2 * size)
    scale = (1 + rand[:, 2:] * noise_scale).clamp(min=0.1)
    # The output at x shows the input at centre + (x - centre - shift) / scale.
    theta = masks.new_zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / scale[:, 0], 1 / scale[:, 1]
    theta[:, :, 2] = centre - (centre + shift) / scale
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    return F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def denoising_queries(targets: List[Dict[str, torch.Tensor]], num_groups: int, num_classes: int,
                      label_noise: float, mask_noise: float, mask_size: Tuple[int, int]):
    """The denoising queries of a batch: ``num_groups`` groups of ``M`` slots per image, M the largest number of
    targets of an image in the batch; slot ``g * M + j`` of image b denoises target j of image b.

    Args:
        targets: B dicts {"labels": (N_b,), "masks": (N_b, H, W)} (padded image size).
        mask_size: (h, w) the noised masks are made at (the mask features' size).
    Returns:
        labels: (B, G * M) int64 noised labels, ``num_classes`` in padding slots.
        masks: (B, G * M, h, w) float noised masks in [0, 1], 0 in padding slots.
        valid: (B, G * M) bool, False in padding slots.
        indices: B pairs (slot indices, target indices) for the criterion, as a matcher returns them.
    """
    device = targets[0]["labels"].device
    b, m = len(targets), max(len(t["labels"]) for t in targets)
    labels = torch.full((b, num_groups, m), num_classes, dtype=torch.int64, device=device)
    masks = torch.zeros((b, num_groups, m) + tuple(mask_size), device=device)
    valid = torch.zeros((b, num_groups, m), dtype=torch.bool, device=device)
    indices = []
    for i, t in enumerate(targets):
        n = len(t["labels"])
        slots = (torch.arange(num_groups)[:, None] * m + torch.arange(n)[None]).flatten()
        indices.append((slots, torch.arange(n).repeat(num_groups)))
        if n == 0:
            continue
        gt = F.interpolate(t["masks"][:, None].float(), size=mask_size, mode="bilinear", align_corners=False)[:, 0]
        gt = gt.repeat(num_groups, 1, 1)
        lab = t["labels"].to(torch.int64).repeat(num_groups)
        flip = torch.rand(lab.shape, device=device) < label_noise
        lab = torch.where(flip, torch.randint_like(lab, num_classes), lab)
        labels[i, :, :n] = lab.view(num_groups, n)
        masks[i, :, :n] = noised_masks(gt, mask_noise).view(num_groups, n, *mask_size)
        valid[i, :, :n] = True
    return labels.flatten(1), masks.flatten(1, 2), valid.flatten(1), indices


def self_attention_mask(num_dn: int, num_groups: int, num_queries: int, num_o2m: int, device) -> torch.Tensor:
    """The (T, T) self-attention mask, True where blocked, of the queries [DN | matching | one-to-many]
    (T = num_dn + num_queries + num_o2m; ``num_dn`` = num_groups * M).

    Matching and one-to-many queries see only their own set, so neither depends on the training-only
    groups; a denoising group sees itself and the matching queries (as in DN-DETR), never another group,
    which would give away the answers.
    """
    total = num_dn + num_queries + num_o2m
    group = torch.empty(total, dtype=torch.int64, device=device)
    if num_dn:
        group[:num_dn] = torch.arange(num_dn, device=device) // (num_dn // num_groups) + 2
    group[num_dn:num_dn + num_queries] = 0
    group[num_dn + num_queries:] = 1
    blocked = group[:, None] != group[None, :]
    blocked[:num_dn, num_dn:num_dn + num_queries] = False  # denoising queries see the matching queries
    return blocked
