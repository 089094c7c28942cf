"""
Checkpoints that survive kills and full disks, and resuming that survives a damaged checkpoint.

``MaskFormerCheckpointer`` is :class:`~mask2former.utils.weights.WeightsCheckpointer` (detectron2's
``DetectionCheckpointer`` reading weights from URLs and without running code) with three changes
(docs/RELIABILITY.md):

* **Atomic saves.** A checkpoint is written to a temporary file beside it, flushed, fsynced and renamed;
  then ``last_checkpoint`` is replaced the same way. A process killed at any moment leaves the previous
  checkpoint and ``last_checkpoint`` intact (at worst a ``.model_*.pth.tmp-PID`` file, removed on resume).
  A full disk stops the run with :class:`~mask2former.utils.disk.DiskFullError` naming the file and the
  free space; nothing already written is touched.
* **Falling back on resume.** If the checkpoint that ``last_checkpoint`` names is missing, truncated or
  corrupt, a warning names it and the error, and resuming continues from the newest intact checkpoint in
  ``OUTPUT_DIR`` (by the iteration in the name ``model_NNNNNNN.pth``; ``model_final.pth`` counts as newest).
  If none is intact the run stops with an error listing every file tried, rather than silently training
  from scratch over them.
* **Backbone-only checkpoints** (e.g. the official DAT ImageNet ``.pth`` files, ``{"model": backbone_state_dict}``
  with the backbone's own names) load through ``MODEL.WEIGHTS`` without conversion: when most of their keys name
  backbone parameters they are prefixed with ``backbone.``, after the backbone's ``convert_pretrained`` hook (if
  any) has dropped the classifier and adapted size-dependent tables. Official training checkpoints may also pickle
  their config (a yacs ``CfgNode``), which ``torch.load(weights_only=True)`` refuses; those are read with an
  unpickler restricted to data types, so a crafted file cannot run code.
"""
import glob
import logging
import os
import re
from typing import List

import torch
from torch.nn.parallel import DistributedDataParallel

from ..utils.disk import atomic_write
from ..utils.safe_load import UnsafeCheckpointError, load_torch_with_config
from ..utils.weights import WeightsCheckpointer

__all__ = ["MaskFormerCheckpointer", "CheckpointUnreadableError"]

logger = logging.getLogger(__name__)


class CheckpointUnreadableError(RuntimeError):
    """No checkpoint in the output folder can be read."""


def _iteration_of(path: str) -> float:
    name = os.path.basename(path)
    if name == "model_final.pth":
        return float("inf")
    match = re.fullmatch(r"model_(\d+)\.pth", name)
    return int(match.group(1)) if match else -1


class MaskFormerCheckpointer(WeightsCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, resuming from the newest intact checkpoint and loading of
    backbone-only checkpoints (see the module docstring)."""

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except UnsafeCheckpointError:
            if filename.endswith((".pkl", ".pyth")):
                raise
            # e.g. an official training checkpoint that also pickles its yacs config
            loaded = load_torch_with_config(filename)
            return loaded if "model" in loaded else {"model": loaded}

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

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        previous = self.get_checkpoint_file() if self.has_checkpoint() else ""
        kept = f"the last complete checkpoint '{previous}' is intact" if previous else "no checkpoint was written"
        with atomic_write(save_file, "wb", kept=kept) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        with atomic_write(save_file, "w", kept="the checkpoints themselves are complete") as f:
            f.write(last_filename_basename)

    # ------------------------------------------------------------------ resume
    def _candidates(self) -> List[str]:
        """The checkpoint ``last_checkpoint`` names, then the others from the newest."""
        named = self.get_checkpoint_file()
        others = [p for p in self.get_all_checkpoint_files() if os.path.abspath(p) != os.path.abspath(named)]
        others.sort(key=lambda p: (_iteration_of(p), os.path.getmtime(p)), reverse=True)
        return [named] + others

    def _remove_stale_temporaries(self) -> None:
        for tmp in glob.glob(os.path.join(glob.escape(self.save_dir), ".*.tmp-*")):
            self.logger.warning(f"Removing '{tmp}', left by a save that did not finish (the process was stopped).")
            try:
                os.remove(tmp)
            except OSError:
                pass

    def resume_or_load(self, path: str, *, resume: bool = True):
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        if self.save_to_disk:
            self._remove_stale_temporaries()
        failures = []
        for candidate in self._candidates():
            try:
                checkpoint = self._load_file(candidate)
                if not isinstance(checkpoint.get("model"), dict):
                    raise ValueError("it has no 'model' state dict")
            except Exception as e:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ... on bad files
                failures.append(f"'{candidate}': {type(e).__name__}: {e}")
                self.logger.warning(f"Cannot resume from checkpoint '{candidate}' ({type(e).__name__}: {e}).")
                continue
            if failures:
                self.logger.warning(
                    f"Resuming from '{candidate}', the newest intact checkpoint, instead of the one that "
                    f"'last_checkpoint' names; unreadable: {'; '.join(failures)}"
                )
            return self._load_checkpoint(candidate, checkpoint)
        raise CheckpointUnreadableError(
            f"--resume: no checkpoint in '{self.save_dir}' can be read: " + "; ".join(failures)
            + ". Delete or move them to train from MODEL.WEIGHTS, or point OUTPUT_DIR elsewhere."
        )

    def _load_checkpoint(self, path: str, checkpoint: dict) -> dict:
        """fvcore's ``Checkpointer.load`` for a checkpoint already read from ``path``."""
        self.logger.info(f"[Checkpointer] Loading from {path} ...")
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        for key, obj in self.checkpointables.items():
            if key in checkpoint:
                self.logger.info(f"Loading {key} from {path} ...")
                obj.load_state_dict(checkpoint.pop(key))
        return checkpoint


def _is_backbone_only(weights, backbone: torch.nn.Module) -> bool:
    names = set(backbone.state_dict())
    keys = [k for k in weights if isinstance(k, str)]
    if not keys or any(k.startswith("backbone.") for k in keys):
        return False
    return sum(k in names for k in keys) >= len(keys) / 2
