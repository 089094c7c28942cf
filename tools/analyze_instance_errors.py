#!/usr/bin/env python
"""Where does mask AP go? Class confusion vs missed or coarse masks, by object size.

Reads a COCO instances ground-truth file and the ``coco_instances_results.json`` that detectron2's
COCOEvaluator writes (``OUTPUT_DIR/inference/``), and prints

1. mask AP as COCOEvaluator computes it (mask areas for the size ranges) and class-agnostic (every prediction
   may match every object): the gap between the two is what class confusion costs;
2. per object-size bin: the fraction of objects that some prediction (of any class, of the right class, or
   with score >= 0.3) covers at IoU >= 0.5 and >= 0.75;
3. with ``--test-size``: the same fractions for a perfect predictor at the model's mask resolution, i.e. each
   ground-truth mask resized to the test scale, averaged over ``--mask-stride`` x ``--mask-stride`` cells and
   upsampled back bilinearly as logits (what Mask2Former's 1/4-resolution masks can represent at best).

    python tools/analyze_instance_errors.py datasets/shapes_world/annotations/instances_val.json \\
        OUTPUT_DIR/inference/coco_instances_results.json [--test-size 288] [--mask-stride 4]
"""
import argparse
import contextlib
import copy
import io
import json
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# Object-size bins by mask area in pixels of the original image: COCO's small (< 32^2) split in three.
BINS = ((0, 10**2), (10**2, 16**2), (16**2, 32**2), (32**2, 96**2), (96**2, float("inf")))
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def load(gt_file, results_file):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
    with open(results_file) as f:
        results = json.load(f)
    if not isinstance(results, list) or not results:
        raise SystemExit(f"{results_file}: expected a non-empty JSON list of COCO results")
    missing = [k for k in ("image_id", "category_id", "segmentation", "score") if k not in results[0]]
    if missing:
        raise SystemExit(f"{results_file}: results lack {missing}; expected COCO instance segmentation results")
    return gt, results


def mask_ap(gt, results, use_cats):
    # As detectron2's COCOEvaluator: without "bbox", pycocotools sizes detections by their mask area.
    # (loadRes also adds fields to the results it is given, hence the copy.)
    results = copy.deepcopy(results)
    for r in results:
        r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: 100 * float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def best_ious(gt, results):
    """Per ground-truth object: (area, best IoU of any prediction, of a same-class one, of one scoring >= 0.3)."""
    by_image = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    rows = []
    for image_id in gt.getImgIds():
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image_id, iscrowd=False))
        if not anns:
            continue
        dets = by_image.get(image_id, [])
        if not dets:
            rows += [(a["area"], 0.0, 0.0, 0.0) for a in anns]
            continue
        ious = mask_util.iou([d["segmentation"] for d in dets], [gt.annToRLE(a) for a in anns], [0] * len(anns))
        classes = np.array([d["category_id"] for d in dets])
        confident = np.array([d["score"] >= 0.3 for d in dets])
        for j, a in enumerate(anns):
            col = ious[:, j]
            same = col[classes == a["category_id"]]
            rows.append((a["area"], col.max(), same.max() if same.size else 0.0,
                         col[confident].max() if confident.any() else 0.0))
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def ceiling_ious(gt, test_size, stride):
    """Per object: (area, IoU of its mask after a round trip through the model's mask resolution)."""
    rows = []
    for image_id in gt.getImgIds():
        info = gt.loadImgs(image_id)[0]
        height, width = info["height"], info["width"]
        scale = test_size / min(height, width)
        h, w = int(round(height * scale)), int(round(width * scale))
        for a in gt.loadAnns(gt.getAnnIds(imgIds=image_id, iscrowd=False)):
            target = torch.from_numpy(gt.annToMask(a)).bool()
            m = F.interpolate(target[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)
            cells = F.adaptive_avg_pool2d(m, (-(-h // stride), -(-w // stride)))  # soft mask at 1/stride
            logits = torch.logit(cells.clamp(1e-3, 1 - 1e-3))
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            pred = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[0, 0] > 0
            union = (pred | target).sum().item()
            rows.append((a["area"], (pred & target).sum().item() / max(union, 1)))
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def bin_label(lo, hi):
    side = lambda v: "inf" if v == float("inf") else f"{int(round(v ** 0.5))}^2"  # noqa: E731
    return f"[{side(lo)}, {side(hi)})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gt_json", help="COCO instances ground truth (the dataset's json_file)")
    parser.add_argument("results_json", help="coco_instances_results.json written by COCOEvaluator")
    parser.add_argument("--test-size", type=int, default=0,
                        help="shorter side at test time (INPUT.MIN_SIZE_TEST); prints the resolution ceiling")
    parser.add_argument("--mask-stride", type=int, default=4, help="stride of the predicted mask logits")
    args = parser.parse_args()
    if args.test_size < 0 or args.mask_stride < 1:
        raise SystemExit("--test-size must be >= 0 and --mask-stride >= 1")

    gt, results = load(args.gt_json, args.results_json)
    print(f"{len(gt.getAnnIds(iscrowd=False))} objects in {len(gt.getImgIds())} images, {len(results)} predictions")
    print("\n| mask AP | " + " | ".join(STAT_NAMES) + " |\n|---|" + "---|" * len(STAT_NAMES))
    for name, use_cats in (("by class (COCOEvaluator)", True), ("class-agnostic", False)):
        stats = mask_ap(gt, results, use_cats)
        print(f"| {name} | " + " | ".join(f"{stats[k]:.1f}" for k in STAT_NAMES) + " |")

    rows = best_ious(gt, results)
    ceiling = ceiling_ious(gt, args.test_size, args.mask_stride) if args.test_size else None
    header = ("| object area (px) | objects | any class >= 0.5 / 0.75 | right class >= 0.5 | score >= 0.3, >= 0.5 |"
              + (f" ceiling at {args.test_size} px >= 0.5 / 0.75 |" if ceiling is not None else ""))
    print("\nFraction of objects covered by a prediction at IoU >= 0.5 (and 0.75):\n")
    print(header + "\n|" + "---|" * header.count(" |"))
    for lo, hi in BINS:
        sel = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
        if not sel.any():
            continue
        r = rows[sel]
        line = (f"| {bin_label(lo, hi)} | {sel.sum()} | {np.mean(r[:, 1] >= 0.5):.2f} / {np.mean(r[:, 1] >= 0.75):.2f}"
                f" | {np.mean(r[:, 2] >= 0.5):.2f} | {np.mean(r[:, 3] >= 0.5):.2f} |")
        if ceiling is not None:
            c = ceiling[(ceiling[:, 0] >= lo) & (ceiling[:, 0] < hi), 1]
            line += f" {np.mean(c >= 0.5):.2f} / {np.mean(c >= 0.75):.2f} |"
        print(line)


if __name__ == "__main__":
    main()
