"""Training and evaluation machinery shared by the image and video entry points."""
from .launch import launch
from .solver import WarmupPolyLR, build_lr_scheduler, build_optimizer, get_param_groups
from .trainer import (
    MaskFormerAMPTrainer,
    MaskFormerSimpleTrainer,
    MaskFormerTrainer,
    autocast_dtype,
    check_losses_finite,
)
from .tta import MaskFormerWithTTA, SemanticSegmentorWithTTA

__all__ = [
    "launch",
    "WarmupPolyLR",
    "build_lr_scheduler",
    "build_optimizer",
    "get_param_groups",
    "MaskFormerAMPTrainer",
    "MaskFormerSimpleTrainer",
    "MaskFormerTrainer",
    "autocast_dtype",
    "check_losses_finite",
    "MaskFormerWithTTA",
    "SemanticSegmentorWithTTA",
]
