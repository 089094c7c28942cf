"""Training losses of Mask2Former (set prediction with Hungarian matching and point-sampled mask losses).

After matching queries to targets (:class:`~.matcher.HungarianMatcher`), Mask2Former trains

* ``loss_ce``: cross-entropy over K + 1 classes for every query, the target being the matched label or the
  "no object" class K for unmatched queries, whose weight is ``eos_coef``;
* ``loss_mask`` and ``loss_dice``: sigmoid BCE and dice losses of the matched masks, evaluated at points
  chosen by PointRend importance sampling on the predicted logits, and normalised by the number of target
  masks in the (whole, distributed) batch.

With deep supervision the same losses are applied to every intermediate prediction ("aux_outputs"), each
matched on its own, with keys suffixed ``_0``, ``_1``, ... . Video clips use the same code: a (T, H, W)
instance mask is matched as a whole, and its T frames count as T rows of the mask losses.

With the decoder's training-only query groups (ours, docs/RESULTS.md, "Fast-start training switches"), the same
losses, suffixed ``_dn`` / ``_o2m`` before the layer index, are also applied to

* "dn_outputs", the denoising queries, each against its own target (fixed indices, no matching; padding
  slots carry no loss), normalised by the number of target masks times the number of groups;
* "o2m_outputs", the one-to-many queries, matched to the targets repeated ``o2m_repeats`` times,
  normalised by the number of target masks times ``o2m_repeats``.

Optionally (ours, MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT > 0), once per batch rather than per decoder layer:

* ``loss_aux_sem_seg``: per-pixel cross-entropy over the K classes of the head's auxiliary semantic logits,
  the target of a pixel being the label of the first target mask that covers it (pixels no mask covers are
  ignored; video: one map per frame).
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .matcher import HungarianMatcher
from .point_sampling import calculate_uncertainty, get_uncertain_point_coords_with_randomness, point_sample

__all__ = [
    "SetCriterion", "sigmoid_ce_loss", "dice_loss", "semantic_targets", "build_loss_weight_dict", "build_criterion"
]

IGNORE = -1  # semantic target of pixels no target mask covers


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sigmoid binary cross-entropy, averaged over points, summed over masks, divided by ``num_masks``.

    Args:
        inputs: (R, P) mask logits at P points.
        targets: (R, P) target values in [0, 1] at the same points.
        num_masks: normaliser.
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss ``1 - (2 sum(p t) + 1) / (sum p + sum t + 1)`` per mask (``p = sigmoid``), summed, / ``num_masks``.

    Args:
        inputs: (R, P) mask logits at P points.
        targets: (R, P) target values in [0, 1] at the same points.
        num_masks: normaliser.
    """
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def build_loss_weight_dict(
    class_weight: float, mask_weight: float, dice_weight: float, dec_layers: int, deep_supervision: bool = True
) -> Dict[str, float]:
    """Loss weights by loss name, as the meta-architectures apply them.

    Args:
        class_weight, mask_weight, dice_weight: weights of loss_ce, loss_mask and loss_dice
            (MODEL.MASK_FORMER.CLASS_WEIGHT / MASK_WEIGHT / DICE_WEIGHT).
        dec_layers: MODEL.MASK_FORMER.DEC_LAYERS, the number of mask predictions the transformer decoder
            makes (the last one plus ``dec_layers - 1`` auxiliary ones).
        deep_supervision: MODEL.MASK_FORMER.DEEP_SUPERVISION; without it only the last prediction is trained.

    Returns:
        {"loss_ce", "loss_mask", "loss_dice"} plus, with deep supervision, the same keys suffixed
        ``_0`` ... ``_{dec_layers - 2}``.
    """
    if dec_layers < 1:
        raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {dec_layers}")
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weight_dict = dict(base)
    if deep_supervision:
        for i in range(dec_layers - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    return weight_dict


class SetCriterion(nn.Module):
    """Mask2Former's losses: Hungarian matching, then classification and point-sampled mask losses."""

    LOSSES = ("labels", "masks", "sem_seg")

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        check_label_values: bool = False,
        o2m_repeats: int = 1,
    ):
        """
        Args:
            num_classes: K, the number of classes without the "no object" class.
            matcher: computes the query-target assignment, e.g. :class:`HungarianMatcher`.
            weight_dict: loss name -> weight. Kept as an attribute for the meta-architecture, which applies it;
                :meth:`forward` returns unweighted losses.
            eos_coef: classification weight of the "no object" class.
            losses: names of the losses to compute, among "labels", "masks" and "sem_seg" (the auxiliary
                per-pixel loss; needs "aux_sem_seg" in the outputs).
            num_points: P, points per mask for the mask losses.
            oversample_ratio: PointRend oversampling ratio k (>= 1).
            importance_sample_ratio: PointRend fraction beta of points chosen by uncertainty.
            check_label_values: also check that every target label lies in [0, num_classes). Off by default:
                the dataset mappers check category ids where they enter, and this check waits for the device
                (a host sync) at every step; turn it on to debug hand-made targets.
            o2m_repeats: how many times the targets are repeated for the one-to-many queries' matching.
        """
        super().__init__()
        unknown = [name for name in losses if name not in self.LOSSES]
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {unknown}; expected a subset of {list(self.LOSSES)}")
        if num_classes < 1:
            raise ValueError(f"SetCriterion: num_classes must be >= 1, got {num_classes}")
        if "masks" in losses and num_points <= 0:
            raise ValueError(
                f"SetCriterion: num_points (MODEL.MASK_FORMER.TRAIN_NUM_POINTS) must be positive, got {num_points}"
            )
        self.num_classes = num_classes
        self.check_label_values = check_label_values
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.o2m_repeats = o2m_repeats
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    @staticmethod
    def _src_permutation_idx(indices: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(batch index, query index) of every matched query, concatenated over the batch."""
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def loss_labels(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """Cross-entropy over the K + 1 classes of every query ("no object" for unmatched ones)."""
        logits = outputs["pred_logits"]  # (B, Q, K + 1)
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion: pred_logits has {logits.shape[-1]} classes, expected num_classes + 1 = "
                f"{self.num_classes + 1}"
            )
        batch_idx, src_idx = self._src_permutation_idx(indices)
        matched_labels = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx.to(logits.device), src_idx.to(logits.device)] = matched_labels.to(
            device=logits.device, dtype=torch.int64
        )
        if "query_valid" in outputs:  # denoising padding slots: no target, no loss
            target_classes = target_classes.masked_fill(~outputs["query_valid"], IGNORE)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.empty_weight,
                                      ignore_index=IGNORE)
        return {"loss_ce": loss_ce}

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """Sigmoid BCE and dice losses of the matched masks at importance-sampled points."""
        pred_masks = outputs["pred_masks"]  # (B, Q, H, W) or (B, Q, T, H, W)
        batch_idx, src_idx = self._src_permutation_idx(indices)
        src_masks = pred_masks[batch_idx.to(pred_masks.device), src_idx.to(pred_masks.device)]  # (N, [T,] H, W)
        tgt_masks = _matched_target_masks(targets, indices, pred_masks.device)  # (N, [T,] H', W')
        if tgt_masks.shape[:-2] != src_masks.shape[:-2]:
            raise ValueError(
                f"SetCriterion: matched target masks {tuple(tgt_masks.shape)} do not fit predicted masks "
                f"{tuple(src_masks.shape)} (expected the same number of frames)"
            )
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            # One row per mask (image) or per frame of each instance (video).
            src_masks = src_masks.float().flatten(0, -3)[:, None]  # (R, 1, H, W)
            tgt_masks = tgt_masks.float().flatten(0, -3)[:, None]  # (R, 1, H', W')
            with torch.no_grad():
                point_coords = get_uncertain_point_coords_with_randomness(
                    src_masks,
                    calculate_uncertainty,
                    self.num_points,
                    self.oversample_ratio,
                    self.importance_sample_ratio,
                )
                point_labels = point_sample(tgt_masks, point_coords, align_corners=False).squeeze(1)
            point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)  # (R, P)
            return {
                "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
                "loss_dice": dice_loss(point_logits, point_labels, num_masks),
            }

    def loss_sem_seg(self, outputs, targets) -> Dict[str, torch.Tensor]:
        """Per-pixel cross-entropy of the auxiliary semantic logits against the targets' union of labelled masks."""
        if "aux_sem_seg" not in outputs:
            raise KeyError(
                "SetCriterion: the 'sem_seg' loss needs 'aux_sem_seg' logits in the outputs; the head makes them "
                "in training when MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT > 0"
            )
        logits = outputs["aux_sem_seg"]  # (B [* T], K, h, w)
        semantic = semantic_targets(targets).to(logits.device)  # (B [* T], H, W)
        if logits.shape[0] != semantic.shape[0] or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"SetCriterion: aux_sem_seg logits {tuple(logits.shape)} do not fit {semantic.shape[0]} target "
                f"maps of {self.num_classes} classes"
            )
        # The loss is taken at the logits' resolution, each cell labelled by the target pixel at its centre
        # (4x cheaper per side than upsampling the logits to the image).
        semantic = F.interpolate(semantic[:, None].float(), size=logits.shape[-2:], mode="nearest-exact")[:, 0].long()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            if not (semantic != IGNORE).any():  # nothing labelled: a zero that keeps the graph
                return {"loss_aux_sem_seg": logits.sum() * 0.0}
            return {"loss_aux_sem_seg": F.cross_entropy(logits, semantic, ignore_index=IGNORE)}

    def get_loss(self, loss, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        return {"labels": self.loss_labels, "masks": self.loss_masks}[loss](outputs, targets, indices, num_masks)

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: {"pred_logits": (B, Q, K + 1), "pred_masks": (B, Q, H, W) or (B, Q, T, H, W)} and
                optionally "aux_outputs", a list of dicts with the same two keys.
            targets: B dicts {"labels": (N,) int64 in [0, K), "masks": (N, H', W') or (N, T, H', W')}; masks of
                one batch share their size (padded by the meta-architecture).

        Returns:
            Unweighted losses: "loss_ce", "loss_mask", "loss_dice" (those of ``self.losses``) and, for the i-th
            auxiliary output, the same names suffixed ``_{i}``; "loss_aux_sem_seg" with the "sem_seg" loss.
        """
        self._check_targets(targets)
        # Float target masks on the predictions' device once for matching and the set losses of every layer
        # (the semantic targets below read the masks as they came).
        device = outputs["pred_masks"].device
        set_targets = [{**t, "masks": t["masks"].to(device=device, dtype=torch.float32)} for t in targets]
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)

        main = {k: v for k, v in outputs.items() if k not in ("dn_outputs", "o2m_outputs")}
        losses = self._set_losses(main, set_targets, lambda out: self.matcher(out, set_targets), num_masks, "")
        if "dn_outputs" in outputs:
            dn = outputs["dn_outputs"]
            losses.update(self._set_losses(dn, set_targets, lambda out: dn["indices"],
                                           num_masks * dn["num_groups"], "_dn"))
        if "o2m_outputs" in outputs:
            losses.update(self._set_losses(
                outputs["o2m_outputs"], set_targets,
                lambda out: self.matcher(out, set_targets, repeats=self.o2m_repeats),
                num_masks * self.o2m_repeats, "_o2m"))
        if "sem_seg" in self.losses:
            losses.update(self.loss_sem_seg(outputs, targets))
        return losses

    def _set_losses(self, outputs: Dict, targets, match, num_masks: float, suffix: str) -> Dict[str, torch.Tensor]:
        """The set losses of a prediction and of its "aux_outputs" (None entries carry no loss), each output
        assigned by ``match(output) -> indices``; keys ``loss_ce{suffix}`` and ``loss_ce{suffix}_{i}``, ..."""
        set_losses = [loss for loss in self.losses if loss != "sem_seg"]
        last = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = {}
        indices = match(last)
        for loss in set_losses:
            l_dict = self.get_loss(loss, last, targets, indices, num_masks)
            losses.update({f"{k}{suffix}": v for k, v in l_dict.items()})
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            if aux is None:
                continue
            indices = match(aux)
            for loss in set_losses:
                l_dict = self.get_loss(loss, aux, targets, indices, num_masks)
                losses.update({f"{k}{suffix}_{i}": v for k, v in l_dict.items()})
        return losses

    def _check_targets(self, targets: List[Dict[str, torch.Tensor]]) -> None:
        for i, t in enumerate(targets):
            missing = [k for k in ("labels", "masks") if k not in t]
            if missing:
                raise KeyError(f"SetCriterion: targets[{i}] lacks {missing}; expected keys 'labels' and 'masks'")
            if t["labels"].dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
                raise TypeError(f"SetCriterion: targets[{i}]['labels'] must be integer, got {t['labels'].dtype}")
            if t["labels"].dim() != 1 or t["labels"].shape[0] != t["masks"].shape[0]:
                raise ValueError(
                    f"SetCriterion: targets[{i}]['labels'] {tuple(t['labels'].shape)} must be (N,) with N = "
                    f"{t['masks'].shape[0]} masks"
                )
        labels = [t["labels"] for t in targets if t["labels"].numel() > 0]
        if self.check_label_values and labels:
            labels = torch.cat([lab.to(labels[0].device) for lab in labels])
            lo, hi = torch.stack([labels.min(), labels.max()]).tolist()
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"SetCriterion: target labels must lie in [0, {self.num_classes}), got values in [{lo}, {hi}]"
                )

    @staticmethod
    def _num_masks(targets: List[Dict[str, torch.Tensor]], device: torch.device) -> float:
        """Average number of target masks per worker, at least 1."""
        num_masks = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            world_size = dist.get_world_size()
        return torch.clamp(num_masks / world_size, min=1).item()

    def __repr__(self) -> str:
        head = "Criterion " + self.__class__.__name__
        matcher = self.matcher.__repr__(_repr_indent=8) if isinstance(self.matcher, HungarianMatcher) else repr(
            self.matcher
        )
        body = [
            f"matcher: {matcher}",
            f"losses: {self.losses}",
            f"weight_dict: {self.weight_dict}",
            f"num_classes: {self.num_classes}",
            f"eos_coef: {self.eos_coef}",
            f"num_points: {self.num_points}",
            f"oversample_ratio: {self.oversample_ratio}",
            f"importance_sample_ratio: {self.importance_sample_ratio}",
        ]
        return "\n".join([head] + ["    " + line for line in body])


def semantic_targets(targets: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
    """Per-pixel class maps of a batch: (B [* T], H, W) int64, the label of the first target mask covering a
    pixel, ``IGNORE`` where none does (void, padding, or background of a things-only dataset). Masks of
    different sizes are padded with ``IGNORE`` to the largest."""
    maps = []
    for t in targets:
        masks, labels = t["masks"].bool(), t["labels"].to(device=t["masks"].device, dtype=torch.int64)
        n = masks.shape[0]
        # rank = n - (index of the first mask covering a pixel), 0 where none does (int16 keeps this cheap).
        rank = masks.new_zeros(masks.shape[1:], dtype=torch.int16)
        if n:
            order = torch.arange(n, 0, -1, dtype=torch.int16, device=masks.device).view(-1, *[1] * (masks.dim() - 1))
            rank = (masks.to(torch.int16) * order).amax(0)
        lookup = torch.cat([labels.new_full((1,), IGNORE), labels.flip(0)])  # rank -> label
        maps.append(lookup[rank.long()])
    height = max(m.shape[-2] for m in maps)
    width = max(m.shape[-1] for m in maps)
    maps = [F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2]), value=IGNORE) for m in maps]
    return torch.stack(maps).flatten(0, -3)


def _matched_target_masks(targets, indices, device) -> torch.Tensor:
    """The matched target masks of the whole batch, (N, [T,] H, W) float, zero-padded to a common size."""
    masks = [t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, indices)]
    height = max(m.shape[-2] for m in masks)
    width = max(m.shape[-1] for m in masks)
    masks = [
        m if m.shape[-2:] == (height, width) else F.pad(m.float(), (0, width - m.shape[-1], 0, height - m.shape[-2]))
        for m in masks
    ]
    return torch.cat([m.to(device=device, dtype=torch.float32) for m in masks])


def build_criterion(cfg) -> SetCriterion:
    """The matcher and criterion of a Mask2Former config (image or video), from MODEL.MASK_FORMER.* keys."""
    mf = cfg.MODEL.MASK_FORMER
    matcher = HungarianMatcher(
        cost_class=mf.CLASS_WEIGHT,
        cost_mask=mf.MASK_WEIGHT,
        cost_dice=mf.DICE_WEIGHT,
        num_points=mf.TRAIN_NUM_POINTS,
    )
    weight_dict = build_loss_weight_dict(
        mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.DEC_LAYERS, mf.DEEP_SUPERVISION
    )
    losses = ["labels", "masks"]
    if mf.AUX_SEM_SEG_WEIGHT < 0:
        raise ValueError(f"MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT must be >= 0 (0 = off), got {mf.AUX_SEM_SEG_WEIGHT}")
    if mf.AUX_SEM_SEG_WEIGHT > 0:
        losses.append("sem_seg")
        weight_dict["loss_aux_sem_seg"] = mf.AUX_SEM_SEG_WEIGHT
    base = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
    aux_layers = range(mf.DEC_LAYERS - 1) if mf.DEEP_SUPERVISION else range(0)
    if mf.DN.NUM_GROUPS > 0:
        # Layer 0 (the prediction before any layer) has not seen the noised masks: not trained.
        weight_dict.update({f"{k}_dn": v for k, v in base.items()})
        weight_dict.update({f"{k}_dn_{i}": v for k, v in base.items() for i in aux_layers if i > 0})
    if mf.ONE_TO_MANY.NUM_QUERIES > 0:
        if mf.ONE_TO_MANY.K < 1 or mf.ONE_TO_MANY.WEIGHT < 0:
            raise ValueError("MODEL.MASK_FORMER.ONE_TO_MANY.K must be >= 1 and ONE_TO_MANY.WEIGHT >= 0, got "
                             f"{mf.ONE_TO_MANY.K} and {mf.ONE_TO_MANY.WEIGHT}")
        w = mf.ONE_TO_MANY.WEIGHT
        weight_dict.update({f"{k}_o2m": v * w for k, v in base.items()})
        weight_dict.update({f"{k}_o2m_{i}": v * w for k, v in base.items() for i in aux_layers})
    return SetCriterion(
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=mf.NO_OBJECT_WEIGHT,
        losses=losses,
        num_points=mf.TRAIN_NUM_POINTS,
        oversample_ratio=mf.OVERSAMPLE_RATIO,
        importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
        o2m_repeats=mf.ONE_TO_MANY.K,
    )
