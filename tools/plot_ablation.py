#!/usr/bin/env python
"""Plot an equal wall-clock ablation: training losses of several variants against the share of the time budget,
and their final evaluation.

Each ``--variant NAME DIR [DIR ...]`` names the output folders of one variant's runs (one per seed), each with the
``metrics.json`` and ``config.yaml`` that ``train_net.py`` writes. A run's x axis is ``iteration / SOLVER.MAX_ITER``:
when every variant was given the iterations that cost the same time, equal x is equal wall-clock time.

    python tools/plot_ablation.py -o docs/ablation.png --title TEXT \\
        --variant baseline out/baseline_s1 out/baseline_s2 --variant dn out/dn_s1 out/dn_s2

Panels: the final decoder layer's class, dice and (where present) auxiliary per-pixel class losses of the matching
queries (as ``metrics.json`` has them: medians over 20 iterations; thin lines per seed, thick line their mean), and the last evaluation's PQ, PQ things and
mask AP per variant (bars: mean over seeds; dots: seeds).
"""
import argparse
import os

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from plot_metrics import read_metrics  # noqa: E402

LOSSES = (("loss_ce", "class loss (final layer, weighted)"), ("loss_dice", "dice loss (final layer, weighted)"),
          ("loss_aux_sem_seg", "auxiliary per-pixel class loss (weighted)"))
METRICS = (("panoptic_seg/PQ", "PQ"), ("panoptic_seg/PQ_th", "PQ things"), ("segm/AP", "mask AP"))


def read_run(folder):
    """(max_iter, metrics rows) of one output folder; a clear error when a file is missing."""
    for name in ("metrics.json", "config.yaml"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise SystemExit(f"{folder}: no {name} (expected a train_net.py output folder)")
    with open(os.path.join(folder, "config.yaml")) as f:
        max_iter = yaml.safe_load(f)["SOLVER"]["MAX_ITER"]
    return max_iter, read_metrics(os.path.join(folder, "metrics.json"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "DIR"), required=True,
                        help="a variant's name and the output folders of its runs")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    for v in args.variant:
        if len(v) < 2:
            raise SystemExit(f"--variant {v[0]}: give the output folder(s) of its runs after the name")

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    loss_axes = [axes[0, 0], axes[0, 1], axes[1, 0]]
    finals = {}
    for n, (name, *folders) in enumerate(args.variant):
        color = f"C{n}"
        runs = [read_run(f) for f in folders]
        finals[name] = [next((r for r in reversed(rows) if METRICS[0][0] in r), {}) for _, rows in runs]
        for ax, (key, _) in zip(loss_axes, LOSSES):
            curves = []
            for max_iter, rows in runs:
                pts = [(r["iteration"] / max_iter, r[key]) for r in rows if key in r]
                if pts:
                    x, y = zip(*pts)
                    curves.append((np.array(x), np.array(y)))
                    ax.plot(x, curves[-1][1], color=color, alpha=0.3, lw=0.8)
            if curves:
                grid = np.linspace(max(c[0][0] for c in curves), 1.0, 50)
                ax.plot(grid, np.mean([np.interp(grid, *c) for c in curves], 0), color=color, lw=2, label=name)
    for ax, (_, title) in zip(loss_axes, LOSSES):
        ax.set_title(title)
        ax.set_xlabel("share of the equal wall-clock budget")
        ax.grid(alpha=0.3)
    loss_axes[0].legend(fontsize=8)

    ax = axes[1, 1]
    width = 0.8 / len(finals)
    for n, (name, rows) in enumerate(finals.items()):
        for m, (key, _) in enumerate(METRICS):
            values = [r[key] for r in rows if key in r]
            if values:
                x = m + (n - (len(finals) - 1) / 2) * width
                ax.bar(x, np.mean(values), width, color=f"C{n}", label=name if m == 0 else None)
                ax.plot([x] * len(values), values, "k.", ms=4)
    ax.set_xticks(range(len(METRICS)), [label for _, label in METRICS])
    ax.set_title("final evaluation (bars: mean over seeds, dots: seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
