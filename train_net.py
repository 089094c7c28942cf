#!/usr/bin/env python
"""
Train or evaluate Mask2Former (semantic / instance / panoptic segmentation).

    python train_net.py --config-file CONFIG.yaml [--num-gpus N] [--resume] [KEY VALUE ...]
    python train_net.py --config-file CONFIG.yaml --eval-only MODEL.WEIGHTS model.pth

Runs on the CPU with ``MODEL.DEVICE cpu`` (and falls back to it, with a warning, when CUDA is not
available). ``--num-gpus N`` starts N processes: one per GPU (NCCL), or N CPU processes (gloo) when
the model runs on the CPU.
"""
import torch

import mask2former  # noqa: F401  (first: registers models and datasets, imports detectron2 quietly)
from mask2former.engine.checkpoint import MaskFormerCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from mask2former import add_maskformer2_config, add_maskformer2_video_config
from mask2former.data.datasets.register_folder import register_from_config
from mask2former.engine import MaskFormerTrainer, launch
from mask2former.utils.cpu_memory import keep_freed_cpu_memory


Trainer = MaskFormerTrainer


def build_config(args):
    """
    The frozen config of ``args`` (config file, then trailing KEY VALUE pairs), and whether
    ``MODEL.DEVICE`` was switched from CUDA to the CPU because CUDA is not available.
    """
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    fell_back = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()
    if fell_back:
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_from_config(cfg)  # DATASETS.REGISTER: custom folders, in every process
    return cfg, fell_back


def setup(args):
    """Config plus detectron2's default setup (loggers, config dump in OUTPUT_DIR, seeds)."""
    cfg, fell_back = build_config(args)
    default_setup(cfg, args)
    logger = setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask2former")
    keep_freed_cpu_memory()  # large CPU tensors reuse freed memory instead of page-faulting it in again
    if fell_back:
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
    return cfg


def main(args):
    cfg = setup(args)
    Trainer.check_weights(cfg, resume=args.resume)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpoint = MaskFormerCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
            Trainer.write_results(cfg, results, iteration=checkpoint.get("iteration", 0))
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def backend_for(cfg) -> str:
    """Process-group backend for ``cfg.MODEL.DEVICE``: NCCL for CUDA, gloo for the CPU."""
    return "nccl" if cfg.MODEL.DEVICE.startswith("cuda") else "gloo"


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=backend_for(build_config(args)[0]),
    )
