#!/usr/bin/env python
"""Plot training loss and evaluation metrics from a detectron2 ``metrics.json`` (one JSON object per line).

    python tools/plot_metrics.py OUTPUT_DIR/metrics.json -o docs/curves.png [--title TEXT]

Left: total loss and the final layer's class / mask / dice losses, and the auxiliary per-pixel class loss
where the config has one (smoothed with a running median).
Right: PQ, mask AP and mIoU at every evaluation, and the mask AP with test-time augmentation where the run
evaluated it (once, after training).
"""
import argparse
import json
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSSES = ("total_loss", "loss_ce", "loss_mask", "loss_dice", "loss_aux_sem_seg")  # those present
METRICS = (("panoptic_seg/PQ", "PQ"), ("segm/AP", "mask AP"), ("sem_seg/mIoU", "mIoU"),
           ("segm_TTA/AP", "mask AP, test-time augmentation"))


def read_metrics(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not a JSON line ({e})")
    if not rows:
        raise SystemExit(f"{path}: no metrics")
    return rows


def smooth(values, window=9):
    half = window // 2
    return [statistics.median(values[max(0, i - half): i + half + 1]) for i in range(len(values))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="metrics.json written by train_net.py")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    rows = read_metrics(args.metrics)

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in LOSSES:
        pts = [(r["iteration"], r[key]) for r in rows if key in r]
        if pts:
            it, val = zip(*pts)
            ax_loss.plot(it, smooth(list(val)), label=key)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_title("training losses (running median)")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)

    for key, label in METRICS:
        pts = [(r["iteration"], r[key]) for r in rows if key in r]
        if pts:
            it, val = zip(*pts)
            ax_metric.plot(it, val, marker="o", label=label)
            ax_metric.annotate(f"{val[-1]:.1f}", (it[-1], val[-1]), textcoords="offset points", xytext=(4, 4))
    ax_metric.set_xlabel("iteration")
    ax_metric.set_ylim(0, 100)
    ax_metric.set_title("validation metrics")
    ax_metric.legend()
    ax_metric.grid(alpha=0.3)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
