"""The trainer shared by the image and video entry points.

``MaskFormerTrainer`` is a detectron2 ``DefaultTrainer`` with Mask2Former's optimizer, LR schedulers,
dataset mappers and evaluators (workarounds for detectron2 0.6 are in :mod:`.compat`). Differences from
detectron2's ``DefaultTrainer`` that matter:

* the model is wrapped in ``DistributedDataParallel`` without ``device_ids`` when it lives on the CPU
  (detectron2 0.6 always passes a GPU index, which DDP rejects for CPU modules);
* ``SOLVER.AMP.ENABLED`` works on the CPU too (bfloat16 autocast, no gradient scaler, on CPUs with bfloat16
  instructions unless ``SOLVER.AMP.CPU_BFLOAT16`` is "always": :func:`autocast_dtype`); on CUDA it is
  float16 autocast with a gradient scaler, as in detectron2;
* a non-finite loss stops training with an error naming the non-finite terms and the iteration;
* the inner trainer's state (optimizer, gradient scaler) is saved in checkpoints under "_trainer"
  (detectron2 0.6 saves only the iteration and the hooks, so ``--resume`` lost the optimizer state);
* resuming continues the run exactly (docs/RELIABILITY.md): checkpoints are written atomically and a damaged
  one is skipped (:mod:`.checkpoint`), the training loader starts at the batch the run stopped at
  (:mod:`mask2former.data.resumable_loader`), and at every checkpoint iteration each rank reseeds its Python,
  NumPy and torch RNGs from (seed, rank, iteration), which a resumed run repeats;
* a full disk stops the run with an error naming the file (checkpoint, metrics.json or an evaluation output)
  and the free space; items skipped under
  ``DATALOADER.SKIP_BAD_ITEMS`` are counted in metrics.json ("data/skipped_items") and listed at the end
  (log and ``OUTPUT_DIR/skipped_items.json``); a stalled data loader is reported (``DATALOADER.TIMEOUT``).
"""
import importlib
import json
import logging
import os
import random
import sys
import time
import weakref
from collections import OrderedDict
from typing import Dict, Mapping, Optional

import numpy as np
import torch

from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage, JSONWriter, TensorboardXWriter, get_event_storage
from detectron2.utils.logger import setup_logger

from ..data.resumable_loader import ResumableTrainLoader, pop_skipped_items
from ..evaluation.build import build_evaluator
from ..compat import ddp_device_ids, grad_scaler, load_trainer_state, trainer_state_dict
from ..utils.disk import DiskFullError, atomic_write, disk_full_error, is_disk_full, report_full_disk
from .checkpoint import MaskFormerCheckpointer
from .solver import build_lr_scheduler, build_optimizer
from .tta import MaskFormerWithTTA
from .watchdog import DataStallWatchdog

__all__ = [
    "MaskFormerTrainer",
    "MaskFormerSimpleTrainer",
    "MaskFormerAMPTrainer",
    "autocast_dtype",
    "check_losses_finite",
]

logger = logging.getLogger(__name__)

def check_losses_finite(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
    """Raise ``FloatingPointError`` naming every loss term that is NaN or infinite."""
    values = torch.stack([v.detach().float().sum() for v in loss_dict.values()]).cpu()
    finite = torch.isfinite(values).tolist()
    if all(finite):
        return
    bad = ", ".join(f"{k}={v:.4g}" for (k, v), ok in zip(zip(loss_dict, values.tolist()), finite) if not ok)
    all_terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(loss_dict, values.tolist()))
    raise FloatingPointError(
        f"Loss became infinite or NaN at iteration={iteration} (rank {comm.get_rank()}): "
        f"non-finite terms: {bad}. All terms: {all_terms}"
    )


def _loss_dict_and_total(loss_dict, iteration: int):
    if isinstance(loss_dict, torch.Tensor):
        loss_dict = {"total_loss": loss_dict}
    if not loss_dict:
        raise ValueError("The model returned no losses in training mode")
    check_losses_finite(loss_dict, iteration)
    return loss_dict, sum(loss_dict.values())


class _BatchSource:
    """What both inner trainers do to get a batch: time it against DATALOADER.TIMEOUT, take out skip records."""

    watchdog: Optional[DataStallWatchdog] = None
    skipped_items: list

    def next_batch(self):
        if self.watchdog is None:
            data = next(self._data_loader_iter)
        else:
            with self.watchdog.watch(self.iter):
                data = next(self._data_loader_iter)
        skipped = pop_skipped_items(data)
        if skipped:
            self.skipped_items = getattr(self, "skipped_items", []) + skipped
        return data


class MaskFormerSimpleTrainer(_BatchSource, SimpleTrainer):
    """detectron2's ``SimpleTrainer`` step that stops on non-finite losses before the backward pass."""

    def run_step(self):
        assert self.model.training, "[MaskFormerSimpleTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = self.next_batch()
        data_time = time.perf_counter() - start

        loss_dict, losses = _loss_dict_and_total(self.model(data), self.iter)
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def cpu_has_bfloat16_instructions() -> bool:
    """Whether this CPU runs bfloat16 matrix products and convolutions natively (AVX512-BF16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def autocast_dtype(cfg) -> Optional[torch.dtype]:
    """
    The autocast dtype training uses for ``cfg`` (None: float32). ``SOLVER.AMP.ENABLED``: float16 on CUDA;
    bfloat16 on the CPU where it pays (``SOLVER.AMP.CPU_BFLOAT16`` "auto": with AVX512-BF16 or AMX; without them
    PyTorch's bfloat16 convolutions and matrix products take reference paths about 10x slower than float32),
    or on any CPU with "always". Other devices raise.
    """
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    device_type = torch.device(cfg.MODEL.DEVICE).type
    if device_type == "cuda":
        return torch.float16
    if device_type != "cpu":
        raise ValueError(f"SOLVER.AMP.ENABLED supports MODEL.DEVICE cuda or cpu, got '{cfg.MODEL.DEVICE}'")
    mode = cfg.SOLVER.AMP.CPU_BFLOAT16
    if mode not in ("auto", "always"):
        raise ValueError(f"SOLVER.AMP.CPU_BFLOAT16 must be 'auto' or 'always', got {mode!r}")
    if mode == "always" or cpu_has_bfloat16_instructions():
        return torch.bfloat16
    return None


class MaskFormerAMPTrainer(_BatchSource, AMPTrainer):
    """
    Mixed precision on CUDA (float16 autocast + gradient scaler) and on the CPU (bfloat16 autocast,
    no scaler: bfloat16 has float32's range). detectron2 0.6's ``AMPTrainer`` requires CUDA.
    """

    def __init__(self, model, data_loader, optimizer, device_type: str):
        if device_type not in ("cuda", "cpu"):
            raise ValueError(f"SOLVER.AMP.ENABLED supports MODEL.DEVICE cuda or cpu, got '{device_type}'")
        super().__init__(model, data_loader, optimizer, grad_scaler=grad_scaler(enabled=device_type == "cuda"))
        self.device_type = device_type
        self.amp_dtype = torch.float16 if device_type == "cuda" else torch.bfloat16

    def run_step(self):
        assert self.model.training, "[MaskFormerAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = self.next_batch()
        data_time = time.perf_counter() - start

        with torch.autocast(device_type=self.device_type, dtype=self.amp_dtype):
            loss_dict, losses = _loss_dict_and_total(self.model(data), self.iter)
        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()


class MaskFormerTrainer(DefaultTrainer):
    """
    Trainer of Mask2Former (image and video). Build it from a frozen config, then::

        trainer = MaskFormerTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()

    Classmethods ``build_model / build_optimizer / build_lr_scheduler / build_train_loader /
    build_test_loader / build_evaluator / test / test_with_TTA`` can be used without an instance.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        device_type = torch.device(cfg.MODEL.DEVICE).type
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            device_ids=ddp_device_ids(device_type),
        )
        if autocast_dtype(cfg) is not None:
            self._trainer = MaskFormerAMPTrainer(model, data_loader, optimizer, device_type)
        else:
            if cfg.SOLVER.AMP.ENABLED:
                logger.info(
                    "SOLVER.AMP.ENABLED: training in float32, since this CPU has no bfloat16 instructions "
                    "(AVX512-BF16 or AMX), without which bfloat16 autocast is about 10x slower; "
                    "SOLVER.AMP.CPU_BFLOAT16 'always' forces it")
            self._trainer = MaskFormerSimpleTrainer(model, data_loader, optimizer)

        self._trainer.watchdog = DataStallWatchdog(cfg.DATALOADER.TIMEOUT, comm.get_rank())
        self._trainer.skipped_items = []

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = MaskFormerCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        loader = self._trainer.data_loader
        self.seed = loader.seed if isinstance(loader, ResumableTrainLoader) else cfg.SEED
        self.register_hooks(self.build_hooks())

    def train(self):
        """Train; returns the results of the last evaluation (None if there was none)."""
        try:
            results = super().train()
        except OSError as e:
            if not is_disk_full(e) or (isinstance(e, DiskFullError) and e.kept):
                raise
            # a write whose error says nothing about the checkpoints (e.g. an evaluation output): say it here
            path = e.path if isinstance(e, DiskFullError) else e.filename or self.cfg.OUTPUT_DIR
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else ""
            raise disk_full_error(
                path, e, f"the last complete checkpoint '{last}' is intact" if last else "no checkpoint was written"
            ) from e
        return results if results is not None else getattr(self, "_last_eval_results", None)

    def after_train(self):
        """detectron2's; while an error stops the run, a hook that fails as well is logged, not raised, so that
        the user sees the first error (e.g. a full disk fails the checkpoint, then the metrics writer)."""
        if sys.exc_info()[1] is None:
            return super().after_train()
        self.storage.iter = self.iter
        for h in self._hooks:
            try:
                h.after_train()
            except Exception as e:
                logger.error(f"While stopping on the error below, {type(h).__name__}.after_train failed too: "
                             f"{type(e).__name__}: {e}")

    def resume_or_load(self, resume=True):
        """detectron2's, and on resume the training loader starts at the batch of the first new iteration."""
        super().resume_or_load(resume=resume)
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            loader.start = self.start_iter

    # ---------------------------------------------------------------- checkpointed state
    def state_dict(self):
        ret = trainer_state_dict(self)
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            ret["data_loader"] = loader.state_dict()
        ret["seed"] = self.seed
        return ret

    def load_state_dict(self, state_dict):
        if not load_trainer_state(self, state_dict):
            logger.warning("The checkpoint has no optimizer state ('_trainer'); the optimizer starts afresh.")
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader) and "data_loader" in state_dict:
            loader.load_state_dict(state_dict["data_loader"])
        self.seed = state_dict.get("seed", self.seed)

    # ---------------------------------------------------------------- weights
    @classmethod
    def check_weights(cls, cfg, resume: bool = False) -> None:
        """
        Before building the model: check that ``MODEL.WEIGHTS`` can be loaded, through
        ``mask2former.utils.weights.check_weights_available`` when that module exists. Skipped when
        no weights are set, or when resuming from a checkpoint in ``OUTPUT_DIR`` (which replaces them).
        """
        if not cfg.MODEL.WEIGHTS:
            return
        if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
            return
        try:
            weights = importlib.import_module("mask2former.utils.weights")
        except ModuleNotFoundError as e:
            if e.name != "mask2former.utils.weights":
                raise  # the module exists but one of its own imports is missing
            return
        check = getattr(weights, "check_weights_available", None)
        if check is not None:
            check(cfg)

    # ---------------------------------------------------------------- builders
    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @staticmethod
    def _is_video_dataset(dataset_name: str) -> bool:
        return MetadataCatalog.get(dataset_name).get("evaluator_type", None) == "ytvis"

    @classmethod
    def build_train_mapper(cls, cfg):
        """The training mapper named by ``INPUT.DATASET_MAPPER_NAME``; the clip mapper for video datasets.

        Video datasets (evaluator_type "ytvis") always use the "ytvis" clip mapper, as the official video
        entry point does, so the official video configs (which do not set the mapper name) work unchanged.
        """
        from mask2former.data.dataset_mappers import MAPPER_REGISTRY, build_dataset_mapper

        if cfg.DATASETS.TRAIN and cls._is_video_dataset(cfg.DATASETS.TRAIN[0]):
            return MAPPER_REGISTRY.get("ytvis")(cfg, is_train=True)
        return build_dataset_mapper(cfg, is_train=True)

    @classmethod
    def build_train_loader(cls, cfg):
        """
        A :class:`~mask2former.data.resumable_loader.ResumableTrainLoader` for detectron2's default
        ``DATALOADER.SAMPLER_TRAIN`` "TrainingSampler" (the same kind of stream, able to start at any batch);
        detectron2's loader for the other samplers, whose runs resume at the iteration but not at the data.
        """
        mapper = cls.build_train_mapper(cfg)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return build_detection_train_loader(cfg, mapper=mapper)
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        world_size = comm.get_world_size()
        if cfg.SOLVER.IMS_PER_BATCH % world_size != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by the number of processes "
                f"({world_size})"
            )
        # the stream's seed is saved in checkpoints, so that runs with SEED < 0 (random) resume too
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return ResumableTrainLoader(
            dicts, mapper, cfg.SOLVER.IMS_PER_BATCH // world_size, seed=seed,
            num_workers=cfg.DATALOADER.NUM_WORKERS, aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            rank=comm.get_rank(), world_size=world_size,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader; video datasets read whole videos with the clip mapper (test mode)."""
        mapper = None
        if cls._is_video_dataset(dataset_name):
            from mask2former.data.dataset_mappers import MAPPER_REGISTRY

            mapper = MAPPER_REGISTRY.get("ytvis")(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's; a full disk while an evaluator writes its outputs (results JSON, predictions, panoptic
        PNGs in a temporary folder) raises :class:`DiskFullError` naming that file and its free space."""
        with report_full_disk(os.path.join(cfg.OUTPUT_DIR, "inference")):
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None):
        """The evaluators of ``dataset_name`` for this model (:func:`mask2former.evaluation.build_evaluator`)."""
        return build_evaluator(cfg, dataset_name, output_folder)

    # ---------------------------------------------------------------- hooks and evaluation
    def build_writers(self):
        """detectron2's writers; metrics.json through :class:`SafeJSONWriter`."""
        return [
            CommonMetricPrinter(self.max_iter),
            SafeJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    def build_hooks(self):
        ret = super().build_hooks()
        writer_index = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret))
        ret.insert(writer_index, SkippedItemsHook())  # counts before the writer writes them, summary at the end
        ret.append(ReseedHook(self.cfg.SOLVER.CHECKPOINT_PERIOD))  # last: after evaluation has used the RNGs
        if self.cfg.TEST.AUG.ENABLED:
            # after training, evaluate with TTA; before the writer so that its results are written
            tta_hook = hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model))
            writer_index = next(
                (i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret)
            )
            ret.insert(writer_index, tta_hook)
        return ret

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """
        Evaluate ``model`` with test-time augmentation (``TEST.AUG``) on the semantic and instance evaluators
        of ``DATASETS.TEST`` (those that ``MODEL.MASK_FORMER.TEST.SEMANTIC_ON`` / ``INSTANCE_ON`` ask for;
        panoptic outputs are not augmented); result keys get a "_TTA" suffix.
        """
        video = [name for name in cfg.DATASETS.TEST if cls._is_video_dataset(name)]
        if video:
            raise ValueError(
                f"TEST.AUG.ENABLED: test-time augmentation works on images, but DATASETS.TEST has video datasets "
                f"{video}; set TEST.AUG.ENABLED False"
            )
        test = cfg.MODEL.MASK_FORMER.TEST
        tasks = [name for name, on in (("semantic", test.SEMANTIC_ON), ("instance", test.INSTANCE_ON)) if on]
        logging.getLogger("mask2former").info(
            f"Running inference with test-time augmentation ({' and '.join(tasks) or 'no'} outputs; sizes "
            f"{tuple(cfg.TEST.AUG.MIN_SIZES)}, flip {cfg.TEST.AUG.FLIP}) ..."
        )
        tta_model = MaskFormerWithTTA(cfg, model)
        tta_cfg = cfg.clone()
        tta_cfg.defrost()
        tta_cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False  # the TTA model outputs sem_seg and instances only
        # The test loader hands over the original images (detectron2: MIN_SIZE_TEST 0 = no resize); the TTA
        # mapper resizes each one once to every TEST.AUG size instead of resizing the MIN_SIZE_TEST image again.
        tta_cfg.INPUT.MIN_SIZE_TEST = 0
        tta_cfg.freeze()
        evaluators = [
            cls.build_evaluator(tta_cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA"))
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(tta_cfg, tta_model, evaluators)
        return OrderedDict((k + "_TTA", v) for k, v in results.items())

    @staticmethod
    def write_results(cfg, results: Dict, iteration: int = 0) -> None:
        """
        Write evaluation results (as returned by ``test``) to ``OUTPUT_DIR/metrics.json`` and
        TensorBoard, the files that training writes to. Main process only.
        """
        if not comm.is_main_process() or not results:
            return
        writers = [SafeJSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json")), TensorboardXWriter(cfg.OUTPUT_DIR)]
        with EventStorage(iteration) as storage:
            flat = flatten_results_dict(results)
            storage.put_scalars(**{k: float(v) for k, v in flat.items()}, smoothing_hint=False)
            for writer in writers:
                writer.write()
        for writer in writers:
            writer.close()


# -------------------------------------------------------------------- hooks and writers of the trainer
def reseed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class ReseedHook(HookBase):
    """
    At every checkpoint iteration (and when a resumed run starts) each rank reseeds its RNGs from (seed, rank,
    iteration). A resumed run thus draws the same random numbers as the run it continues, on every rank,
    although the checkpoint (written by rank 0 alone) holds no RNG state.
    """

    def __init__(self, period: int):
        self.period = period

    def _reseed(self, iteration: int) -> None:
        reseed_all(int(np.random.SeedSequence([int(self.trainer.seed) % (2**63), comm.get_rank(), iteration])
                       .generate_state(1)[0]))

    def before_train(self):
        if self.trainer.start_iter > 0:
            self._reseed(self.trainer.start_iter - 1)

    def after_step(self):
        if self.period > 0 and (self.trainer.iter + 1) % self.period == 0:
            self._reseed(self.trainer.iter)


class SkippedItemsHook(HookBase):
    """
    Puts the number of items skipped so far (``DATALOADER.SKIP_BAD_ITEMS``) in the event storage
    ("data/skipped_items", hence metrics.json); at the end logs the list and writes it to
    ``OUTPUT_DIR/skipped_items.json`` (all ranks' items).
    """

    def after_step(self):
        get_event_storage().put_scalar("data/skipped_items", len(self.trainer._trainer.skipped_items),
                                       smoothing_hint=False)

    def after_train(self):
        items = self.trainer._trainer.skipped_items
        if sys.exc_info()[1] is None:  # while stopping on an error the other ranks may not be here: no gathering
            items = [x for rank_items in comm.all_gather(items) for x in rank_items]
        if not comm.is_main_process():
            return
        log = logging.getLogger("mask2former")
        if not items:
            log.info("No bad dataset items were skipped.")
            return
        path = os.path.join(self.trainer.cfg.OUTPUT_DIR, "skipped_items.json")
        with atomic_write(path, "w") as f:
            json.dump(items, f, indent=1)
        lines = "\n".join(f"  iteration {x['iteration']}: '{x['file_name']}': {x['reason']}" for x in items[:20])
        more = f"\n  ... and {len(items) - 20} more" if len(items) > 20 else ""
        log.warning(f"{len(items)} bad dataset item(s) were skipped (DATALOADER.SKIP_BAD_ITEMS), listed in "
                    f"{path}:\n{lines}{more}")


class SafeJSONWriter(JSONWriter):
    """detectron2's ``JSONWriter``; a write that fails (full disk) is undone and raises naming the file."""

    def write(self):
        f = self._file_handle
        f.flush()
        size = f.tell()
        try:
            super().write()
        except OSError as e:
            try:  # drop the partial line so that the file stays valid JSON lines
                f.truncate(size)
            except OSError:
                pass
            if is_disk_full(e):
                raise disk_full_error(f.name, e, "the lines written before are intact") from e
            raise
