#!/usr/bin/env python
"""Time one training iteration split into stages, and the optimizer step fused vs per-parameter side by side.

Builds the model, optimizer and training data loader of a config exactly as ``train_net.py`` does, takes a few
real batches, and times each stage of an iteration (median over ``--repeats`` iterations after two warm-ups):
backbone, pixel decoder and transformer decoder forward, criterion (matching + losses), backward, optimizer
step; with the config's autocast setting (``SOLVER.AMP.ENABLED``: bfloat16 on a CPU). The optimizer step is
then timed again with the per-parameter AdamW loop (``fused=False``) on the same gradients. Random weights,
or the checkpoint given as ``MODEL.WEIGHTS``.

    DETECTRON2_DATASETS=datasets python tools/benchmark_train_step.py \\
        [--config-file configs/shapes_world/maskformer2_R18_panoptic.yaml] [--repeats 10] [KEY VALUE ...]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mask2former.engine import MaskFormerTrainer as Trainer  # noqa: E402
from mask2former.utils.weights import WeightsCheckpointer  # noqa: E402
from train_net import build_config  # noqa: E402

STAGES = ("backbone", "pixel_decoder", "transformer_decoder", "criterion", "backward", "optimizer")


def train_step(model, optimizer, batch, amp):
    """One iteration; returns seconds per stage."""
    clock = [time.perf_counter()]
    with torch.autocast(model.device.type, dtype=torch.bfloat16 if model.device.type == "cpu" else torch.float16,
                        enabled=amp):
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        clock.append(time.perf_counter())
        pixel_outputs = model.sem_seg_head.pixel_decoder.forward_features(features)
        clock.append(time.perf_counter())
        outputs = model.sem_seg_head.decode(features, *pixel_outputs)
        clock.append(time.perf_counter())
        targets = model.prepare_targets([x["instances"].to(model.device) for x in batch], images)
        losses = model.criterion(outputs, targets)
        weights = model.criterion.weight_dict
        loss = sum(v * weights[k] for k, v in losses.items() if k in weights)
        clock.append(time.perf_counter())
    optimizer.zero_grad()
    loss.backward()
    clock.append(time.perf_counter())
    optimizer.step()
    clock.append(time.perf_counter())
    return dict(zip(STAGES, (b - a for a, b in zip(clock, clock[1:]))))


def median(values):
    return sorted(values)[len(values) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/shapes_world/maskformer2_R18_panoptic.yaml")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()

    cfg, _ = build_config(argparse.Namespace(config_file=args.config_file,
                                             opts=["DATALOADER.NUM_WORKERS", 0] + args.opts))
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).train()
    if cfg.MODEL.WEIGHTS:
        WeightsCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    optimizer = Trainer.build_optimizer(cfg, model)
    loader = iter(Trainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(args.repeats + 2)]

    times = {s: [] for s in STAGES}
    for i, batch in enumerate(batches):
        t = train_step(model, optimizer, batch, cfg.SOLVER.AMP.ENABLED)
        if i >= 2:  # two warm-ups
            for s in STAGES:
                times[s].append(t[s])
    total = sum(median(v) for v in times.values())
    print(f"config: {args.config_file} {' '.join(args.opts)}; batch {cfg.SOLVER.IMS_PER_BATCH}, "
          f"autocast {cfg.SOLVER.AMP.ENABLED}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for s in STAGES:
        print(f"{s:20s} {median(times[s]) * 1e3:8.1f} ms  {median(times[s]) / total:5.1%}")
    print(f"{'total':20s} {total * 1e3:8.1f} ms")

    # Optimizer step: the built (fused where supported) optimizer vs the per-parameter loop, same gradients.
    fused = optimizer.param_groups[0].get("fused")
    step_times = {}
    for name, use_fused in (("built", fused), ("per-parameter", False)):
        for g in optimizer.param_groups:
            g["fused"] = use_fused
        runs = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            optimizer.step()
            runs.append(time.perf_counter() - start)
        step_times[name] = median(runs[1:])
    print(f"optimizer step: built (fused={bool(fused)}) {step_times['built'] * 1e3:.1f} ms, per-parameter "
          f"{step_times['per-parameter'] * 1e3:.1f} ms, ratio {step_times['built'] / step_times['per-parameter']:.2f}")


if __name__ == "__main__":
    main()
