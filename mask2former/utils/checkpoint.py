"""``Mask2FormerCheckpointer``: detectron2's checkpointer, plus loading of backbone-only classification
checkpoints (e.g. the official DAT ImageNet ``.pth`` files) through ``MODEL.WEIGHTS`` without conversion.

Such a file holds ``{"model": backbone_state_dict, ...}`` (or the bare state dict) with the backbone's own
names (``patch_proj.0.weight``, ``stages.0...``) rather than the detector's (``backbone.patch_proj...``).
When most of its keys name backbone parameters, they are prefixed with ``backbone.`` after the backbone's
``convert_pretrained`` hook (if it has one) has dropped the classifier and adapted size-dependent tables.
Official training checkpoints may also pickle their config (a yacs ``CfgNode``), which
``torch.load(weights_only=True)`` refuses; those are read with an unpickler restricted to torch, numpy,
collections and yacs types.
"""
import logging
import pickle

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["Mask2FormerCheckpointer"]

# What an unpickled training checkpoint may construct: tensors, containers, numbers, configs. No functions
# beyond torch's tensor rebuilders, so a crafted file cannot run code.
_ALLOWED = {
    "collections": {"OrderedDict", "defaultdict"},
    "builtins": {"set", "frozenset", "slice", "complex", "bytearray", "range"},
    "__builtin__": {"set", "frozenset", "slice", "complex", "bytearray", "range"},  # pickle protocol 2 name
    "torch": {"Size", "device"},
    "torch.storage": {"UntypedStorage", "TypedStorage", "_load_from_bytes"},
    "numpy": {"dtype", "ndarray"},
    "numpy.core.multiarray": {"scalar", "_reconstruct"},
    "numpy._core.multiarray": {"scalar", "_reconstruct"},
    "yacs.config": {"CfgNode"},
    "argparse": {"Namespace"},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = (
            name in _ALLOWED.get(module, ())
            or (module == "torch._utils" and name.startswith("_rebuild"))
            or (module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")
        return super().find_class(module, name)


class _restricted_pickle:
    """A ``pickle_module`` for ``torch.load`` whose unpickler only creates data types."""

    Unpickler = _RestrictedUnpickler
    load = pickle.load


class Mask2FormerCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also loads backbone-only checkpoints (see the module docstring)."""

    def _load_file(self, filename: str):
        if filename.endswith((".pkl", ".pyth")):
            return super()._load_file(filename)
        try:
            return super()._load_file(filename)
        except pickle.UnpicklingError:
            # e.g. an official training checkpoint with its yacs config: read data types only
            with open(filename, "rb") as f:
                loaded = torch.load(f, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
            if "model" not in loaded:
                loaded = {"model": loaded}
            return loaded

    def _load_model(self, checkpoint):
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        backbone = getattr(model, "backbone", None)
        weights = checkpoint["model"]
        if backbone is not None and _is_backbone_only(weights, backbone):
            if hasattr(backbone, "convert_pretrained"):
                weights = backbone.convert_pretrained(weights)
            logging.getLogger(__name__).info(
                "Backbone-only checkpoint: loading its %d tensors into model.backbone", len(weights)
            )
            checkpoint["model"] = {f"backbone.{k}": v for k, v in weights.items()}
        return super()._load_model(checkpoint)


def _is_backbone_only(weights, backbone: torch.nn.Module) -> bool:
    names = set(backbone.state_dict())
    keys = [k for k in weights if isinstance(k, str)]
    if not keys or any(k.startswith("backbone.") for k in keys):
        return False
    return sum(k in names for k in keys) >= len(keys) / 2
