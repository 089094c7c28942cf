"""Mask2Former for detectron2. Importing this package registers its models and datasets."""
from . import compat  # noqa: F401  (first: imports detectron2 without its import-time warnings)
from . import data  # noqa: F401  (registers the datasets)
from . import modeling  # noqa: F401  (registers backbones, heads and meta-architectures)
from .config import add_maskformer2_config, add_maskformer2_video_config

__all__ = ["add_maskformer2_config", "add_maskformer2_video_config"]
