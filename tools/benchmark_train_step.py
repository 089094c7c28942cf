#!/usr/bin/env python
"""Time one training iteration split into stages, and the optimizer step fused vs per-parameter side by side.

Builds the model, optimizer and training data loader of a config exactly as ``train_net.py`` does, takes a few
real batches, and times each stage of an iteration (median over ``--repeats`` iterations after two warm-ups):
backbone, pixel decoder and transformer decoder forward, criterion (matching + losses), backward, optimizer
step; with the autocast the trainer would use (``SOLVER.AMP.ENABLED``: bfloat16 on a CPU with bfloat16
instructions). The optimizer step is then timed again with the per-parameter AdamW loop (``fused=False``) on
the same gradients. Random weights, or the checkpoint given as ``MODEL.WEIGHTS``. With ``--deform-attn-impls
pytorch cpp`` the iterations alternate between the deformable-attention implementations (same model and
batches; the losses of the first batch are first compared under both) and a table per implementation and their
ratio are printed. With several
``--config-file`` values every config gets its own model, optimizer and batches, and the iterations alternate
between the configs (A, B, C, A, B, C, ...), so that their seconds per iteration are measured side by side; the
``KEY VALUE`` overrides apply to all of them.

    DETECTRON2_DATASETS=datasets python tools/benchmark_train_step.py \\
        [--config-file configs/shapes_world/maskformer2_R18_panoptic.yaml [CONFIG ...]] [--repeats 10] \
        [--deform-attn-impls pytorch cpp] [KEY VALUE ...]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mask2former.engine import MaskFormerTrainer as Trainer  # noqa: E402  (first: imports detectron2 quietly)
from mask2former.engine import autocast_dtype  # noqa: E402
from mask2former.engine.checkpoint import MaskFormerCheckpointer  # noqa: E402
from mask2former.modeling.pixel_decoder.deformable_attention import MSDeformAttn  # noqa: E402
from mask2former.utils.cpu_memory import keep_freed_cpu_memory  # noqa: E402
from train_net import build_config  # noqa: E402

STAGES = ("backbone", "pixel_decoder", "transformer_decoder", "criterion", "backward", "optimizer")


def train_step(model, optimizer, batch, amp_dtype):
    """One iteration; returns seconds per stage."""
    clock = [time.perf_counter()]
    with torch.autocast(model.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
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


def set_deform_attn_impl(model, impl):
    for m in model.modules():
        if isinstance(m, MSDeformAttn):
            m.impl = impl


def first_batch_losses(model, batch, amp_dtype):
    torch.manual_seed(0)  # the criterion samples points at random
    with torch.no_grad(), torch.autocast(model.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return {k: float(v) for k, v in model(batch).items()}


def median(values):
    return sorted(values)[len(values) // 2]


def build(config_file, opts, repeats):
    """Model, optimizer, config and ``repeats + 2`` training batches of one config, as ``train_net.py`` builds them."""
    cfg, _ = build_config(argparse.Namespace(config_file=config_file, opts=["DATALOADER.NUM_WORKERS", 0] + opts))
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).train()
    if cfg.MODEL.WEIGHTS:
        MaskFormerCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    optimizer = Trainer.build_optimizer(cfg, model)
    loader = iter(Trainer.build_train_loader(cfg))
    return model, optimizer, cfg, [next(loader) for _ in range(repeats + 2)]


def print_table(times):
    total = sum(median(v) for v in times.values())
    for s in STAGES:
        print(f"{s:20s} {median(times[s]) * 1e3:8.1f} ms  {median(times[s]) / total:5.1%}")
    print(f"{'total':20s} {total * 1e3:8.1f} ms")
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", nargs="+", default=["configs/shapes_world/maskformer2_R18_panoptic.yaml"],
                        help="one config, or several to time side by side (their iterations alternate)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--deform-attn-impls", nargs="+", choices=["auto", "pytorch", "cpp", "triton"],
                        help="alternate the iterations between these deformable-attention implementations")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    # "--config-file A.yaml KEY VALUE": the list stops at the first name that is no .yaml file, the rest are overrides
    split = next((i for i, v in enumerate(args.config_file) if not v.endswith((".yaml", ".yml", ".py"))),
                 len(args.config_file))
    args.config_file, args.opts = args.config_file[:split], args.config_file[split:] + args.opts
    keep_freed_cpu_memory()  # as train_net.py does
    if not args.config_file:
        parser.error("--config-file: expected a config file (.yaml) before the KEY VALUE overrides")
    if len(set(args.config_file)) != len(args.config_file):
        parser.error(f"--config-file names a config twice: {args.config_file}")
    if len(args.config_file) > 1 and args.deform_attn_impls and len(args.deform_attn_impls) > 1:
        parser.error("--deform-attn-impls with several implementations takes a single --config-file")

    runs = {path: build(path, args.opts, args.repeats) for path in args.config_file}
    amp_dtypes = {path: autocast_dtype(cfg) for path, (_, _, cfg, _) in runs.items()}
    impls = args.deform_attn_impls or [None]
    if len(impls) > 1:
        (path, (model, _, _, batches)), = runs.items()
        losses = {}
        for impl in impls:
            set_deform_attn_impl(model, impl)
            losses[impl] = first_batch_losses(model, batches[0], amp_dtypes[path])
        worst = max(abs(losses[i][k] - losses[impls[0]][k]) for i in impls for k in losses[i])
        print(f"first-batch losses, largest difference between {' / '.join(impls)}: {worst:.2e} "
              f"(total {' / '.join(f'{sum(v.values()):.6f}' for v in losses.values())})")
    variants = [(path, impl) for path in runs for impl in impls]
    times = {v: {s: [] for s in STAGES} for v in variants}
    for i in range(args.repeats + 2):
        for path, impl in variants:  # alternate, so that drift of the machine hits every variant alike
            model, optimizer, _, batches = runs[path]
            if impl:
                set_deform_attn_impl(model, impl)
            t = train_step(model, optimizer, batches[i], amp_dtypes[path])
            if i >= 2:  # two warm-ups
                for s in STAGES:
                    times[(path, impl)][s].append(t[s])
    totals = {}
    for path, impl in variants:
        model, _, cfg, _ = runs[path]
        if impl is None or impl == impls[0]:
            params = sum(p.numel() for p in model.parameters())
            print(f"config: {path} {' '.join(args.opts)}; batch {cfg.SOLVER.IMS_PER_BATCH}, autocast "
                  f"{amp_dtypes[path] or 'off (float32)'}, {torch.get_num_threads()} threads, "
                  f"median of {args.repeats}; "
                  f"{params / 1e6:.2f} M parameters ({sum(p.numel() for p in model.backbone.parameters()) / 1e6:.2f} M "
                  "in the backbone)")
        if impl:
            print(f"deformable attention: {impl}")
        totals[(path, impl)] = print_table(times[(path, impl)])
    if len(impls) > 1:
        path = args.config_file[0]
        print("speed-up vs " + impls[0] + ": " + ", ".join(
            f"{i} {totals[(path, impls[0])] / totals[(path, i)]:.2f}x" for i in impls[1:]))
    if len(runs) > 1:
        print("seconds per iteration, side by side: " + ", ".join(
            f"{path} {totals[(path, impls[0])]:.3f} s" for path in runs))
        first = args.config_file[0]
        print(f"relative to {first}: " + ", ".join(
            f"{path} {totals[(path, impls[0])] / totals[(first, impls[0])]:.2f}" for path in args.config_file[1:]))

    # Optimizer step: the built (fused where supported) optimizer vs the per-parameter loop, same gradients.
    for path, (_, optimizer, _, _) in runs.items():
        fused = optimizer.param_groups[0].get("fused")
        step_times = {}
        for name, use_fused in (("built", fused), ("per-parameter", False)):
            for g in optimizer.param_groups:
                g["fused"] = use_fused
            step_runs = []
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                optimizer.step()
                step_runs.append(time.perf_counter() - start)
            step_times[name] = median(step_runs[1:])
        print(f"optimizer step{f' ({path})' if len(runs) > 1 else ''}: built (fused={bool(fused)}) "
              f"{step_times['built'] * 1e3:.1f} ms, per-parameter {step_times['per-parameter'] * 1e3:.1f} ms, "
              f"ratio {step_times['built'] / step_times['per-parameter']:.2f}")


if __name__ == "__main__":
    main()
