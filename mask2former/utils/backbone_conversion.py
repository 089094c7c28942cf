"""ImageNet backbone weights from torchvision / timm / the official Swin release, renamed for this project.

* :func:`convert_resnet`: torchvision or timm ResNet (``conv1``, ``bn1``, ``layer{1-4}.{j}.conv{k}`` /
  ``bn{k}`` / ``downsample.{0,1}``) -> detectron2's ResNet names (``stem.conv1``, ``res{2-5}.{j}.conv{k}``
  with ``.norm``, ``shortcut``), as detectron2's model zoo ``R-50.pkl`` has them. The ImageNet configs that
  use them set ``MODEL.RESNETS.STRIDE_IN_1X1 False`` (torchvision strides in the 3x3 conv), ``INPUT.FORMAT RGB``
  and torchvision's ``PIXEL_MEAN`` / ``PIXEL_STD``, as the official R50/R101 configs do.
* :func:`convert_swin`: the official Swin checkpoints (``{"model": ...}``, the names our Swin uses already) or
  timm's Swin (patch merging stored at the start of the next stage) -> our Swin names.

Both drop what the segmentation model does not use (the classifier, the final norm, index buffers). The
results are saved by tools/convert_*_to_d2.py as detectron2 ``.pkl`` files ({"model": name -> numpy array,
"__author__", "matching_heuristics": True}), which MODEL.WEIGHTS loads (names are matched to ``backbone.*``).
"""
import re
from typing import Dict

import numpy as np
import torch

__all__ = ["convert_resnet", "convert_swin", "to_detectron2_pkl"]


def convert_resnet(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision / timm ResNet state dict -> detectron2 ResNet names (the classifier ``fc`` is dropped)."""
    out = {}
    for name, value in state_dict.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        new = name
        new = re.sub(r"^conv1\.", "stem.conv1.", new)
        new = re.sub(r"^bn1\.", "stem.conv1.norm.", new)
        new = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", new)
        new = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", new)
        new = re.sub(r"\.downsample\.0\.", ".shortcut.", new)
        new = re.sub(r"\.downsample\.1\.", ".shortcut.norm.", new)
        if new == name:
            raise ValueError(f"convert_resnet: unexpected parameter '{name}' (not a torchvision / timm ResNet?)")
        out[new] = value
    return out


_SWIN_DROP = re.compile(r"(^head\.|^norm\.|relative_position_index$|attn_mask$|^fc\.|num_batches_tracked$)")


def convert_swin(state_dict: Dict[str, torch.Tensor], source: str = "official") -> Dict[str, torch.Tensor]:
    """Swin ImageNet weights -> our Swin names.

    Args:
        state_dict: the official release's ``checkpoint["model"]`` or a timm ``SwinTransformer`` state dict.
        source: "official" (names already ours) or "timm" (``layers.{i}.downsample`` -> ``layers.{i-1}``).
    """
    if source not in ("official", "timm"):
        raise ValueError(f"convert_swin: source must be 'official' or 'timm', got {source!r}")
    out = {}
    for name, value in state_dict.items():
        if _SWIN_DROP.search(name):
            continue
        if source == "timm":
            match = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", name)
            if match:
                name = f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
        if not name.startswith(("patch_embed.", "layers.", "absolute_pos_embed")):
            raise ValueError(f"convert_swin: unexpected parameter '{name}' (not a {source} Swin checkpoint?)")
        out[name] = value
    return out


def to_detectron2_pkl(state_dict: Dict[str, torch.Tensor], author: str) -> dict:
    """The content of a detectron2 backbone ``.pkl``: numpy arrays, matched to the model's names on loading."""
    return {
        "model": {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                  for k, v in state_dict.items()},
        "__author__": author,
        "matching_heuristics": True,
    }
