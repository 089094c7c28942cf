#!/usr/bin/env python
"""Seconds per training iteration of several recipe variants of one config, measured side by side.

Each variant is a name and a string of config overrides (``KEY VALUE ...``, may be empty). Every variant gets its
own model and optimizer, built as ``train_net.py`` builds them (same seed), and all of them train on the same
real batches; the iterations alternate between the variants, in an order that rotates every round, so that a
machine whose speed drifts or that other jobs share slows every variant alike. An iteration is what the trainer
does per step without the data loader: the forward pass with the losses (under the autocast the trainer would
use), the backward pass and the optimizer step. Prints the median and mean per variant and its ratio to the first
variant, and, with ``--budget-iters N``, how many iterations of each variant cost as much as N of the first: the
iteration counts of an equal wall-clock comparison.

    DETECTRON2_DATASETS=datasets python tools/benchmark_recipes.py \\
        [--config-file configs/shapes_world/maskformer2_R18_panoptic.yaml] [--repeats 15] [--budget-iters 300] \\
        --variant baseline "" --variant dn "MODEL.MASK_FORMER.DN.NUM_GROUPS 3" [--variant NAME "OVERRIDES" ...] \\
        [KEY VALUE ...]

Trailing ``KEY VALUE`` pairs apply to every variant (before its own overrides).
"""
import argparse
import os
import shlex
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mask2former.engine import MaskFormerTrainer as Trainer  # noqa: E402  (first: imports detectron2 quietly)
from mask2former.engine import autocast_dtype  # noqa: E402
from train_net import build_config  # noqa: E402

WARMUP_ROUNDS = 2  # the first iterations allocate buffers and pick kernels; they are not timed


def parse_variants(pairs):
    """``[[name, overrides], ...]`` from ``--variant`` -> list of (name, [KEY, VALUE, ...]); names must be unique
    and every override string must hold whole KEY VALUE pairs."""
    variants = []
    for name, overrides in pairs:
        if any(name == n for n, _ in variants):
            raise SystemExit(f"--variant {name!r} is given twice")
        opts = shlex.split(overrides)
        if len(opts) % 2:
            raise SystemExit(f"--variant {name!r}: overrides must be KEY VALUE pairs, got {overrides!r}")
        variants.append((name, opts))
    if not variants:
        raise SystemExit("give at least one --variant NAME \"OVERRIDES\"")
    return variants


def train_iteration(model, optimizer, batch, amp_dtype) -> float:
    """One training step as the trainer runs it (forward with losses, backward, optimizer step); seconds."""
    start = time.perf_counter()
    with torch.autocast(model.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = sum(model(batch).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/shapes_world/maskformer2_R18_panoptic.yaml")
    parser.add_argument("--repeats", type=int, default=15, help="timed iterations per variant")
    parser.add_argument("--budget-iters", type=int, default=0,
                        help="print the iterations of each variant that cost as much as this many of the first")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), default=[],
                        help="a variant: its name and its config overrides as one string (\"\" for none)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides of every variant")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    variants = parse_variants(args.variant)

    runs = []
    for name, opts in variants:
        cfg, _ = build_config(argparse.Namespace(config_file=args.config_file,
                                                 opts=args.opts + opts + ["DATALOADER.NUM_WORKERS", 0]))
        torch.manual_seed(cfg.SEED)
        model = Trainer.build_model(cfg).train()
        runs.append((name, cfg, model, Trainer.build_optimizer(cfg, model), autocast_dtype(cfg)))
    # The switches do not change the data, so the batches of the first variant's loader serve every variant.
    loader = iter(Trainer.build_train_loader(runs[0][1]))
    batches = [next(loader) for _ in range(args.repeats + WARMUP_ROUNDS)]

    times = {name: [] for name, *_ in runs}
    for i, batch in enumerate(batches):
        shift = i % len(runs)
        for name, _, model, optimizer, amp_dtype in runs[shift:] + runs[:shift]:
            seconds = train_iteration(model, optimizer, batch, amp_dtype)
            if i >= WARMUP_ROUNDS:
                times[name].append(seconds)

    print(f"config: {args.config_file}; batch {runs[0][1].SOLVER.IMS_PER_BATCH}, {torch.get_num_threads()} threads, "
          f"{args.repeats} alternating iterations per variant after {WARMUP_ROUNDS} untimed")
    base = statistics.median(times[runs[0][0]])
    print(f"{'variant':24s} {'median s/it':>11s} {'mean s/it':>10s} {'ratio':>6s}"
          + (f" {'iterations':>10s}" if args.budget_iters else "") + "  overrides")
    for name, opts in variants:
        med = statistics.median(times[name])
        line = f"{name:24s} {med:11.3f} {statistics.fmean(times[name]):10.3f} {med / base:6.2f}"
        if args.budget_iters:
            line += f" {round(args.budget_iters * base / med):10d}"
        print(line + "  " + (" ".join(opts) or "(none)"))


if __name__ == "__main__":
    main()
