#!/usr/bin/env python
"""Does a model fail at the masks or at the classes? Per ground-truth segment, the query that segments it best.

For every segment of a panoptic split, takes the query whose binarised mask (logit > 0, at the image's size) has
the highest IoU with it, and prints, for things and for stuff: how many segments some query covers at IoU >= 0.5
(things also by size: COCO small / medium / large), how often that query's most probable class is the segment's
class, and the mean probability it gives the right class and "no object". A model whose masks are found but
whose classes are at chance needs a class signal, not better masks or other test thresholds.

    DETECTRON2_DATASETS=datasets python tools/analyze_query_classes.py \\
        --config-file configs/shapes_world/maskformer2_R18_panoptic.yaml [--dataset shapes_world_dev_val_panoptic] \\
        MODEL.WEIGHTS output/shapes_world/maskformer2_R18_panoptic/model_final.pth [KEY VALUE ...]

``--dataset`` names a registered panoptic split; ``shapes_world_dev_*`` (the default) is the dev split of
``tools/eval_dev_split.py``, registered here with ``--dev-seed``.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mask2former.engine import MaskFormerTrainer as Trainer  # noqa: E402  (first: imports detectron2 quietly)
from mask2former.engine.checkpoint import MaskFormerCheckpointer  # noqa: E402
from mask2former.data.datasets.register_shapes_world import register_shapes_world  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from train_net import build_config  # noqa: E402

SIZES = (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, float("inf")))


def segment_rows(model, cfg, dataset):
    """One row per ground-truth segment: (is thing, area, best IoU, right class is argmax, p(right), p(no object))."""
    num_things = len(MetadataCatalog.get(dataset).thing_classes)
    dicts = {d["image_id"]: d for d in DatasetCatalog.get(dataset)}
    rows = []
    with torch.no_grad():
        for batch in Trainer.build_test_loader(cfg, dataset):
            x = batch[0]
            d = dicts[x["image_id"]]
            q = model.predict_queries(batch)[0]
            h, w = q["image_size"]
            masks = F.interpolate(q["pred_masks"][None, :, :h, :w].float(), size=(x["height"], x["width"]),
                                  mode="bilinear", align_corners=False)[0].flatten(1) > 0  # (Q, H * W)
            probs = q["pred_logits"].float().softmax(-1)  # (Q, K + 1)
            rgb = np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")).astype(np.int64)
            ids = torch.from_numpy(rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]).flatten()
            pred = masks.float()
            for s in d["segments_info"]:
                gt = (ids == s["id"]).float()
                inter = pred @ gt
                iou = inter / (pred.sum(1) + gt.sum() - inter).clamp(min=1)
                j, c = int(iou.argmax()), s["category_id"]
                rows.append((c < num_things, float(gt.sum()), float(iou[j]), int(probs[j].argmax()) == c,
                             float(probs[j, c]), float(probs[j, -1])))
    return np.array(rows, dtype=float).reshape(-1, 6)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/shapes_world/maskformer2_R18_panoptic.yaml")
    parser.add_argument("--dataset", default="shapes_world_dev_val_panoptic", help="a registered panoptic split")
    parser.add_argument("--dev-seed", type=int, default=1, help="seed of the shapes-world dev split")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    if args.dataset.startswith("shapes_world_dev_"):
        register_shapes_world(os.environ.get("DETECTRON2_DATASETS", "datasets"), prefix="shapes_world_dev",
                              dirname=f"shapes_world_dev_seed{args.dev_seed}", num_train=1, seed=args.dev_seed)
    if args.dataset not in DatasetCatalog.list():
        raise SystemExit(f"--dataset {args.dataset!r} is not a registered dataset")
    if MetadataCatalog.get(args.dataset).get("evaluator_type") != "coco_panoptic_seg":
        raise SystemExit(f"--dataset {args.dataset!r} is not a panoptic split (its segments are read from the "
                         "panoptic PNGs)")
    cfg, _ = build_config(argparse.Namespace(config_file=args.config_file, opts=args.opts))
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("give the model to analyse as MODEL.WEIGHTS")
    model = Trainer.build_model(cfg).eval()
    MaskFormerCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    rows = segment_rows(model, cfg, args.dataset)

    print("| segments | count | best IoU >= 0.5 | mean best IoU | right class (argmax) | p(right class) | p(no object) |")
    print("|---|---|---|---|---|---|---|")
    groups = [("things", rows[:, 0] == 1)] + [
        (f"things, {name}", (rows[:, 0] == 1) & (rows[:, 1] >= lo) & (rows[:, 1] < hi)) for name, lo, hi in SIZES
    ] + [("stuff", rows[:, 0] == 0)]
    for name, sel in groups:
        r = rows[sel]
        if len(r):
            print(f"| {name} | {len(r)} | {np.mean(r[:, 2] >= 0.5):.1%} | {r[:, 2].mean():.3f} | {r[:, 3].mean():.1%} "
                  f"| {r[:, 4].mean():.3f} | {r[:, 5].mean():.3f} |")


if __name__ == "__main__":
    main()
