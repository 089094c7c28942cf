"""Optimizer and learning-rate schedulers of Mask2Former.

``build_optimizer`` puts every trainable parameter into exactly one parameter group, with
hyper-parameters decided by what the parameter is:

=====================================  =====================================================
parameter                              learning rate / weight decay
=====================================  =====================================================
inside the backbone                    ``BASE_LR * SOLVER.BACKBONE_MULTIPLIER``
of a normalization layer               weight decay ``SOLVER.WEIGHT_DECAY_NORM``
an embedding (see ``_is_embedding``)   weight decay ``SOLVER.WEIGHT_DECAY_EMBED``
anything else                          ``BASE_LR`` / ``SOLVER.WEIGHT_DECAY``
=====================================  =====================================================

Gradient clipping: ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` ``"full_model"`` clips the norm of all gradients
together (one ``clip_grad_norm_`` over the whole model, inside ``optimizer.step``); ``"value"`` and
``"norm"`` use detectron2's per-parameter clipping.

``build_lr_scheduler`` adds ``"WarmupPolyLR"`` to detectron2's ``WarmupMultiStepLR`` and ``WarmupCosineLR``.
"""
import itertools
import logging
import math
from typing import Any, Dict, List, Tuple, Type

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping

from ..compat import LRSchedulerBase

__all__ = [
    "NORM_MODULE_TYPES",
    "get_param_groups",
    "build_optimizer",
    "build_lr_scheduler",
    "WarmupPolyLR",
    "full_model_gradient_clipping",
]

logger = logging.getLogger(__name__)

# Every normalization layer of torch (and detectron2's, which subclass them or hold no parameters).
NORM_MODULE_TYPES: Tuple[Type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.SyncBatchNorm,  # detectron2's NaiveSyncBatchNorm subclasses BatchNorm2d
        nn.GroupNorm,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
        nn.LayerNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),  # torch >= 2.4
        FrozenBatchNorm2d,  # buffers only: listed so that a subclass with parameters is handled too
    )
    if t is not None
)

# Parameter names (last component) that hold positional/relative embeddings (rpe_table: DAT's deformable blocks).
EMBEDDING_PARAM_NAMES = ("relative_position_bias_table", "rpe_table", "absolute_pos_embed", "level_embed")


def _is_embedding(module: nn.Module, param_name: str) -> bool:
    return isinstance(module, nn.Embedding) or param_name in EMBEDDING_PARAM_NAMES


def _is_backbone(module_name: str) -> bool:
    return "backbone" in module_name.split(".")


def get_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
    backbone_multiplier: float,
) -> List[Dict[str, Any]]:
    """
    Split the trainable parameters of ``model`` into optimizer parameter groups.

    Each parameter appears exactly once (a parameter shared by several modules takes the
    hyper-parameters of the first module that owns it, in ``model.named_modules()`` order).
    Parameters with equal (lr, weight_decay) share one group, so there are at most six groups.

    Returns:
        list of dicts ``{"params": [Parameter, ...], "lr": float, "weight_decay": float,
        "param_names": [str, ...]}``. ``param_names`` is informational; torch keeps it in the
        optimizer's param groups.
    """
    groups: Dict[Tuple[float, float], Dict[str, Any]] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr = base_lr * (backbone_multiplier if _is_backbone(module_name) else 1.0)
            if isinstance(module, NORM_MODULE_TYPES):
                wd = weight_decay_norm
            elif _is_embedding(module, param_name):
                wd = weight_decay_embed
            else:
                wd = weight_decay
            group = groups.setdefault((lr, wd), {"params": [], "lr": lr, "weight_decay": wd,
                                                 "param_names": []})
            group["params"].append(param)
            group["param_names"].append(f"{module_name}.{param_name}" if module_name else param_name)
    return list(groups.values())


def full_model_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], clip_value: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """
    Return a subclass of ``optimizer_type`` whose ``step`` first rescales all gradients of all
    param groups so that their joint ``norm_type``-norm is at most ``clip_value``.
    """
    if clip_value <= 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0 for full_model clipping, got {clip_value}")

    def step(self, closure=None):
        params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type)
        return super(cls, self).step(closure)

    cls = type(optimizer_type.__name__ + "FullModelGradientClip", (optimizer_type,), {"step": step})
    return cls


def _fused_adamw_supported(param_groups: List[Dict[str, Any]]) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` accepts these parameters (floating point, on CPU or CUDA)."""
    params = [p for g in param_groups for p in g["params"]]
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer described by ``cfg.SOLVER`` for ``model`` (see the module docstring)."""
    solver = cfg.SOLVER
    if solver.BIAS_LR_FACTOR != 1.0 or solver.WEIGHT_DECAY_BIAS not in (None, solver.WEIGHT_DECAY):
        logger.warning(
            "SOLVER.BIAS_LR_FACTOR / SOLVER.WEIGHT_DECAY_BIAS are not used by Mask2Former's optimizer "
            "(bias parameters follow the rules of their module)."
        )
    param_groups = get_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
    )
    if not param_groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")

    name = solver.OPTIMIZER.upper()
    if name == "SGD":
        optimizer_type = torch.optim.SGD
        kwargs = {"momentum": solver.MOMENTUM, "nesterov": solver.NESTEROV}
    elif name == "ADAMW":
        optimizer_type = torch.optim.AdamW
        # The fused kernel does the same update in one pass over all parameters instead of a loop over them
        # (docs/PERFORMANCE.md, "Training step").
        kwargs = {"fused": True} if _fused_adamw_supported(param_groups) else {}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got '{solver.OPTIMIZER}'")

    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_type = full_model_gradient_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
    elif clip.ENABLED and clip.CLIP_TYPE not in ("value", "norm"):
        raise ValueError(
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'full_model', 'value' or 'norm', "
            f"got '{clip.CLIP_TYPE}'"
        )
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    return optimizer_type(param_groups, lr=solver.BASE_LR, **kwargs)


def _warmup_factor(method: str, it: int, warmup_iters: int, warmup_factor: float) -> float:
    """Multiplier of the learning rate at iteration ``it`` of a warmup of ``warmup_iters`` iterations."""
    if it >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = it / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got '{method}'")


class WarmupPolyLR(LRSchedulerBase):
    """
    Polynomial decay with warmup, stepped once per iteration::

        lr(it) = base_lr * warmup(it) * (1 - it / max_iters) ** power

    where ``warmup(it)`` rises from ``warmup_factor`` to 1 over ``warmup_iters`` iterations ("linear")
    or stays at ``warmup_factor`` until then ("constant"). With ``constant_ending > 0``, once warmup is
    over the decay factor never drops below ``constant_ending``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        power: float = 0.9,
        constant_ending: float = 0.0,
        last_epoch: int = -1,
    ):
        if max_iters <= 0:
            raise ValueError(f"WarmupPolyLR: SOLVER.MAX_ITER must be > 0, got {max_iters}")
        _warmup_factor(warmup_method, 0, 1, warmup_factor)  # validate the method name early
        self.max_iters = max_iters
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        self.power = power
        self.constant_ending = constant_ending
        super().__init__(optimizer, last_epoch)

    def _factor(self, it: int) -> float:
        warmup = _warmup_factor(self.warmup_method, it, self.warmup_iters, self.warmup_factor)
        decay = math.pow(max(0.0, 1.0 - it / self.max_iters), self.power)
        if self.constant_ending > 0 and warmup == 1.0:
            decay = max(decay, self.constant_ending)
        return warmup * decay

    def get_lr(self) -> List[float]:
        factor = self._factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """``SOLVER.LR_SCHEDULER_NAME``: "WarmupPolyLR" (ours) or any name detectron2 knows."""
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME == "WarmupPolyLR":
        return WarmupPolyLR(
            optimizer,
            solver.MAX_ITER,
            warmup_factor=solver.WARMUP_FACTOR,
            warmup_iters=solver.WARMUP_ITERS,
            warmup_method=solver.WARMUP_METHOD,
            power=solver.POLY_LR_POWER,
            constant_ending=solver.POLY_LR_CONSTANT_ENDING,
        )
    return d2_build_lr_scheduler(cfg, optimizer)
