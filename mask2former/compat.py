"""Every workaround for detectron2 0.6 (the release on the package index) in one place.

Each entry says what it works around and when it can be deleted. The install-time source patches of
detectron2 0.6 (current NumPy, Pillow, setuptools and Python; no compiled extension) are listed, with the same
kind of condition, in ``tools/install_detectron2.py`` (``PATCHES``).

1. :func:`create_local_process_group`: detectron2 0.6's ``comm`` has no ``create_local_process_group``, so
   ``comm.get_local_rank()`` fails in processes that our launcher started. Delete when the minimum detectron2
   has ``comm.create_local_process_group`` (detectron2 > 0.6).
2. :data:`LRSchedulerBase`: detectron2 0.6's ``LRScheduler`` hook saves a scheduler in checkpoints only if it
   is a ``torch.optim.lr_scheduler._LRScheduler`` (our installer patches the check to ``LRScheduler``);
   ``_LRScheduler`` subclasses ``LRScheduler`` in torch >= 2.0, so deriving from it satisfies both. Delete when
   the minimum detectron2 tests ``LRScheduler`` (detectron2 > 0.6) and derive from that.
3. :func:`ddp_device_ids`: detectron2's ``DefaultTrainer.__init__`` wraps the model in
   ``DistributedDataParallel(device_ids=[local_rank])``, which DDP rejects for CPU modules; that is why
   ``MaskFormerTrainer.__init__`` repeats detectron2's constructor instead of calling it. Delete (and call
   ``DefaultTrainer.__init__``) when detectron2's ``create_ddp_model`` leaves ``device_ids`` out for CPU models.
4. :func:`trainer_state_dict` / :func:`load_trainer_state`: detectron2 0.6's ``DefaultTrainer.state_dict``
   saves only the iteration and the hooks, so ``--resume`` lost the optimizer and gradient-scaler state.
   Delete when the minimum detectron2 saves ``"_trainer"`` itself (detectron2 > 0.6).
5. :func:`grad_scaler`: detectron2 0.6's ``AMPTrainer`` requires CUDA and builds a CUDA-only scaler; our
   ``MaskFormerAMPTrainer`` passes a scaler that is disabled on the CPU (bfloat16 autocast needs none).
   ``torch.amp.GradScaler`` exists from torch 2.3; delete the fallback when the minimum torch is 2.3.
6. Quiet imports: detectron2 and fvcore call ``torch.jit.script`` at import time, and current torch answers each
   call with a FutureWarning that no user can act on. This module imports them once with that warning filtered
   (``import mask2former`` imports this module first); a user's own ``torch.jit.script`` calls still warn.
   Delete when neither detectron2 nor fvcore scripts at import time.
"""
import warnings
from typing import Optional

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import fvcore.nn  # noqa: F401
    import detectron2.modeling  # noqa: F401

import torch
import torch.distributed as dist
from detectron2.engine import TrainerBase
from detectron2.utils import comm

__all__ = [
    "LRSchedulerBase",
    "create_local_process_group",
    "ddp_device_ids",
    "grad_scaler",
    "load_trainer_state",
    "trainer_state_dict",
]


def create_local_process_group(num_per_machine: int) -> None:
    """Create the group of the processes on this machine, which detectron2's ``comm.get_local_rank`` uses."""
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_per_machine)
        return
    machine_rank = dist.get_rank() // num_per_machine
    for i in range(dist.get_world_size() // num_per_machine):
        # every process must take part in creating every group
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


LRSchedulerBase = getattr(torch.optim.lr_scheduler, "_LRScheduler", torch.optim.lr_scheduler.LRScheduler)


def ddp_device_ids(device_type: str) -> Optional[list]:
    """``device_ids`` for ``DistributedDataParallel``: this process's GPU on CUDA, none for CPU modules."""
    return [comm.get_local_rank()] if device_type == "cuda" else None


def trainer_state_dict(trainer) -> dict:
    """A ``DefaultTrainer``'s checkpointed state, with the inner trainer's (optimizer, scaler) under "_trainer"."""
    ret = TrainerBase.state_dict(trainer)
    ret["_trainer"] = trainer._trainer.state_dict()
    return ret


def load_trainer_state(trainer, state_dict: dict) -> bool:
    """Restore :func:`trainer_state_dict`'s state; returns False when the checkpoint had no "_trainer" entry."""
    TrainerBase.load_state_dict(trainer, state_dict)
    if "_trainer" not in state_dict:
        return False
    trainer._trainer.load_state_dict(state_dict["_trainer"])
    return True


def grad_scaler(enabled: bool):
    """A CUDA gradient scaler, disabled when ``enabled`` is False (CPU bfloat16 training)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)
