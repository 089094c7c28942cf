"""Point sampling for the mask losses (PointRend, Kirillov et al. 2020, as used by Mask2Former).

Mask2Former never computes its mask losses on whole masks: it evaluates predicted and target masks at a few
thousand points, given in normalised image coordinates ``[0, 1] x [0, 1]`` as ``(x, y)`` pairs, so that
predictions and targets of different resolutions are compared at the same physical locations.
"""
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["point_sample", "get_uncertain_point_coords_with_randomness", "calculate_uncertainty"]


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Bilinearly sample ``input`` at normalised point coordinates.

    A thin wrapper around :func:`torch.nn.functional.grid_sample` whose coordinates are in ``[0, 1]``
    (``(0, 0)`` is the top-left corner of the top-left pixel, ``(1, 1)`` the bottom-right corner of the
    bottom-right pixel, with the default ``align_corners=False``) instead of ``[-1, 1]``.

    Args:
        input: (N, C, H, W) feature maps or mask logits.
        point_coords: (N, P, 2) or (N, Hg, Wg, 2) points, last dimension ``(x, y)`` in ``[0, 1]``.
        **kwargs: passed to ``grid_sample`` (``mode``, ``padding_mode``, ``align_corners``; the last
            defaults to False).

    Returns:
        (N, C, P) for (N, P, 2) points, or (N, C, Hg, Wg) for (N, Hg, Wg, 2) points.
    """
    if input.dim() != 4:
        raise ValueError(f"point_sample: input must be (N, C, H, W), got shape {tuple(input.shape)}")
    if point_coords.dim() not in (3, 4) or point_coords.shape[-1] != 2:
        raise ValueError(
            f"point_sample: point_coords must be (N, P, 2) or (N, Hg, Wg, 2), got shape {tuple(point_coords.shape)}"
        )
    if point_coords.shape[0] != input.shape[0]:
        raise ValueError(
            f"point_sample: input has {input.shape[0]} items but point_coords has {point_coords.shape[0]}"
        )
    kwargs.setdefault("align_corners", False)
    flat = point_coords.dim() == 3
    grid = 2.0 * point_coords - 1.0
    if flat:
        grid = grid.unsqueeze(2)  # (N, P, 1, 2)
    output = F.grid_sample(input, grid.to(input.dtype), **kwargs)
    return output.squeeze(3) if flat else output


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of binary mask logits: ``-|logit|`` (highest for logits near 0, i.e. p near 0.5).

    Args:
        logits: (R, 1, ...) class-agnostic mask logits.

    Returns:
        Tensor of the same shape.
    """
    if logits.dim() < 2 or logits.shape[1] != 1:
        raise ValueError(
            f"calculate_uncertainty expects (R, 1, ...) logits, got shape {tuple(logits.shape)}"
        )
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """PointRend's importance sampling of training points.

    Draws ``int(num_points * oversample_ratio)`` uniformly random candidate points per item, keeps the
    ``int(importance_sample_ratio * num_points)`` candidates whose predicted logits are the most uncertain
    and fills the rest with fresh uniformly random points.

    Args:
        coarse_logits: (N, C, H, W) logits (C is 1 for class-agnostic masks).
        uncertainty_func: maps (N, C, P) sampled logits to (N, 1, P) uncertainties (higher = more uncertain),
            e.g. :func:`calculate_uncertainty`.
        num_points: P, the number of points to return per item.
        oversample_ratio: k >= 1, candidates drawn per returned point.
        importance_sample_ratio: beta in [0, 1], the fraction of points chosen by uncertainty.

    Returns:
        (N, P, 2) point coordinates ``(x, y)`` in ``[0, 1]``; the ``int(beta * P)`` uncertain points come first.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    if num_points <= 0:
        raise ValueError(f"num_points must be positive, got {num_points}")
    num_items = coarse_logits.shape[0]
    device = coarse_logits.device
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(num_items, num_sampled, 2, device=device)
    uncertainties = uncertainty_func(point_sample(coarse_logits, candidates, align_corners=False))
    if uncertainties.shape != (num_items, 1, num_sampled):
        raise ValueError(
            f"uncertainty_func must return (N, 1, P) = {(num_items, 1, num_sampled)}, "
            f"got {tuple(uncertainties.shape)}"
        )
    top = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1, sorted=False).indices  # (N, num_uncertain)
    coords = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(num_items, num_random, 2, device=device)], dim=1)
    return coords
