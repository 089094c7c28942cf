"""Bipartite (Hungarian) matching between predicted queries and ground-truth masks.

Mask2Former matches each image's (or each video clip's) targets one-to-one to its queries by minimising

    C = cost_class * (-p(target class)) + cost_mask * BCE + cost_dice * Dice,

where the mask costs are evaluated at ``num_points`` uniformly random points shared by all predictions and
targets of the image (and by all frames of a video clip, so a video instance is matched as one
spatio-temporal mask).
"""
from typing import Dict, List, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import point_sample
from .sigmoid_ops import sigmoid_bce_terms

__all__ = ["HungarianMatcher", "batch_sigmoid_ce_cost", "batch_dice_cost"]


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise sigmoid binary cross-entropy, averaged over points.

    Args:
        inputs: (Q, P) mask logits.
        targets: (N, P) mask values in [0, 1].

    Returns:
        (Q, N) cost, entry [q, n] = mean_p BCE(sigmoid(inputs[q, p]), targets[n, p]).
    """
    num_points = inputs.shape[1]
    pos, neg = sigmoid_bce_terms(inputs)
    cost = torch.einsum("qp,np->qn", pos, targets) + torch.einsum("qp,np->qn", neg, 1 - targets)
    return cost / num_points


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice cost ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` with ``p = sigmoid(inputs)``.

    Args:
        inputs: (Q, P) mask logits.
        targets: (N, P) mask values in [0, 1].

    Returns:
        (Q, N) cost.
    """
    probs = inputs.sigmoid()
    numerator = 2 * torch.einsum("qp,np->qn", probs, targets)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to queries, per image or per video clip.

    Predicted masks may be (B, Q, H, W) for images or (B, Q, T, H, W) for videos; target masks are then
    (N, H', W') or (N, T, H', W') (any resolution: both are sampled at the same normalised points).
    """

    def __init__(self, cost_class: float = 1, cost_mask: float = 1, cost_dice: float = 1, num_points: int = 0):
        """
        Args:
            cost_class: weight of the classification cost.
            cost_mask: weight of the sigmoid BCE mask cost.
            cost_dice: weight of the dice mask cost.
            num_points: number of random points the mask costs are computed on (the official configs use
                MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112); must be positive when a mask cost is used.
        """
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_mask and cost_dice cannot all be 0")
        if (cost_mask != 0 or cost_dice != 0) and num_points <= 0:
            raise ValueError(
                "HungarianMatcher: num_points (MODEL.MASK_FORMER.TRAIN_NUM_POINTS) must be positive when "
                f"cost_mask or cost_dice is non-zero, got {num_points}"
            )
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]], repeats: int = 1
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: {"pred_logits": (B, Q, K + 1), "pred_masks": (B, Q, H, W) or (B, Q, T, H, W)}.
            targets: B dicts {"labels": (N,) int64, "masks": (N, H', W') or (N, T, H', W')}.
            repeats: match to every target repeated this many times (one-to-many matching, H-DETR): up to
                ``repeats`` queries per target; the cost is computed once and tiled.

        Returns:
            B pairs (index_i, index_j) of int64 CPU tensors of length min(Q, repeats * N): query index_i[k] is
            matched to target index_j[k].
        """
        if repeats < 1:
            raise ValueError(f"HungarianMatcher: repeats (MODEL.MASK_FORMER.ONE_TO_MANY.K) must be >= 1, got {repeats}")
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if pred_logits.dim() != 3:
            raise ValueError(f"HungarianMatcher: pred_logits must be (B, Q, K+1), got {tuple(pred_logits.shape)}")
        if pred_masks.dim() not in (4, 5) or pred_masks.shape[:2] != pred_logits.shape[:2]:
            raise ValueError(
                "HungarianMatcher: pred_masks must be (B, Q, H, W) or (B, Q, T, H, W) with the (B, Q) of "
                f"pred_logits {tuple(pred_logits.shape[:2])}, got {tuple(pred_masks.shape)}"
            )
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(
                f"HungarianMatcher: got {len(targets)} targets for a batch of {pred_logits.shape[0]} predictions"
            )
        indices = []
        for b, target in enumerate(targets):
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], target).cpu()
            if not torch.isfinite(cost).all():
                raise FloatingPointError(
                    "HungarianMatcher: the matching cost contains NaN or Inf (are the predicted logits or masks "
                    "non-finite, i.e. has training diverged?)"
                )
            num_targets = cost.shape[1]
            if repeats > 1:
                cost = cost.repeat(1, repeats)
            rows, cols = linear_sum_assignment(cost.numpy())
            cols = torch.as_tensor(cols, dtype=torch.int64)
            indices.append((torch.as_tensor(rows, dtype=torch.int64), cols % max(num_targets, 1)))
        return indices

    @torch.no_grad()
    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor, target: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The float32 matching cost of one image or clip.

        Args:
            logits: (Q, K + 1) class logits.
            masks: (Q, H, W) mask logits of an image or (Q, T, H, W) of a clip.
            target: {"labels": (N,), "masks": (N, H', W') or (N, T, H', W')}.

        Returns:
            (Q, N) cost on the device of ``logits``.
        """
        labels, tgt_masks = target["labels"], target["masks"]
        if tgt_masks.dim() != masks.dim() or (masks.dim() == 4 and tgt_masks.shape[1] != masks.shape[1]):
            raise ValueError(
                f"HungarianMatcher: target 'masks' of shape {tuple(tgt_masks.shape)} do not fit predicted masks "
                f"{tuple(masks.shape)} (expected (N, H, W) for images, (N, T, H, W) with the same T for videos)"
            )
        if labels.dim() != 1 or labels.shape[0] != tgt_masks.shape[0]:
            raise ValueError(
                f"HungarianMatcher: target 'labels' {tuple(labels.shape)} must be (N,) with N = "
                f"{tgt_masks.shape[0]} masks"
            )
        if labels.numel() == 0:
            return logits.new_zeros((logits.shape[0], 0), dtype=torch.float32)

        with torch.autocast(device_type=logits.device.type, enabled=False):
            cost = self.cost_class * -logits.float().softmax(-1)[:, labels.to(logits.device, torch.int64)]
            if self.cost_mask != 0 or self.cost_dice != 0:
                if masks.dim() == 3:  # images: one "frame" per mask
                    masks, tgt_masks = masks[:, None], tgt_masks[:, None]
                # The same points for every prediction, target and frame.
                coords = torch.rand(1, self.num_points, 2, device=masks.device)
                pred_points = point_sample(
                    masks.float(), coords.expand(masks.shape[0], -1, -1), align_corners=False
                ).flatten(1)  # (Q, T * P)
                tgt_points = point_sample(
                    tgt_masks.to(device=masks.device, dtype=torch.float32),
                    coords.expand(tgt_masks.shape[0], -1, -1),
                    align_corners=False,
                ).flatten(1)  # (N, T * P)
                cost = cost + self.cost_mask * batch_sigmoid_ce_cost(pred_points, tgt_points)
                cost = cost + self.cost_dice * batch_dice_cost(pred_points, tgt_points)

        return cost

    def __repr__(self, _repr_indent: int = 4) -> str:
        head = "Matcher " + self.__class__.__name__
        body = [
            f"cost_class: {self.cost_class}",
            f"cost_mask: {self.cost_mask}",
            f"cost_dice: {self.cost_dice}",
            f"num_points: {self.num_points}",
        ]
        return "\n".join([head] + [" " * _repr_indent + line for line in body])
