#!/usr/bin/env python
"""
Evaluate classes for given masks on a registered panoptic dataset: a MaskClassifier against the baseline a user
would try first (the plain Mask2Former the classifier starts from; each given mask takes the class
distribution of the query whose binarised mask has the highest IoU with it), on the same masks.

    python tools/eval_mask_classifier.py --config-file configs/shapes_world/mask_classifier_R18_panoptic.yaml \\
        --classifier-weights CLS.pth --baseline-weights MASKFORMER.pth [--dataset shapes_world_val_panoptic] \\
        [--output results.json] [KEY VALUE ...]

Given masks: "clean", the ground-truth segments (non-crowd); "perturbed", each ground-truth segment changed by
one perturbation drawn from INPUT.MASK_PROMPTS.PERTURBATIONS (mask2former/data/mask_prompts.py; fixed seed per
image) and labelled as the training mapper labels prompts. Metrics per method and mask set:
    top1, top5   accuracy of the K-class ranking, over the masks whose label is a class (not "no object")
    PQ, SQ, RQ   detectron2's COCOPanopticEvaluator on the panoptic segmentation of the given masks with their
                 classes (overlaps resolved by score, "no object" masks left out)
    AP           COCO mask AP (detectron2's COCOEvaluator): every (mask, thing class) pair scored by the class
                 probability, top TEST.DETECTIONS_PER_IMAGE per image
The results are printed as a markdown table and written to --output.
"""
import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image
from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from mask2former import add_maskformer2_config  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Instances  # noqa: E402

from demo.mask_classifier import resize_masks  # noqa: E402
from demo.predictor import load_weights  # noqa: E402
from mask2former.data.datasets.loading import rgb2id  # noqa: E402
from mask2former.data.mask_prompts import label_prompts, perturb_mask  # noqa: E402
from mask2former.evaluation.labelled_masks import panoptic_segmentation  # noqa: E402
from mask2former.modeling.postprocessing import masks_to_boxes, resize_to_output  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the MaskClassifier config")
    p.add_argument("--classifier-weights", required=True)
    p.add_argument("--baseline-weights", required=True, help="the MaskFormer checkpoint the classifier started from")
    p.add_argument("--dataset", default="shapes_world_val_panoptic", help="a registered panoptic dataset")
    p.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations")
    p.add_argument("--output", default="", help="write the results as JSON here")
    p.add_argument("--export-sam-json", default="", metavar="DIR",
                   help="also write each image's perturbed masks as SAM-style JSON (DIR/NAME.json, RLE), "
                        "input for tools/classify_masks.py")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    return p.parse_args(argv)


def ground_truth(d):
    """(S, H, W) bool masks and (S,) contiguous classes of the non-crowd segments of a panoptic dataset dict."""
    ids = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")))
    segs = [s for s in d["segments_info"] if not s.get("iscrowd", 0)]
    masks = np.stack([ids == s["id"] for s in segs]) if segs else np.zeros((0,) + ids.shape, dtype=bool)
    return masks, np.array([s["category_id"] for s in segs], dtype=np.int64)


class Methods:
    """Both models with the test-time resize: class_probs (P, K+1) for given masks of one image."""

    def __init__(self, cfg, classifier_weights, baseline_weights):
        self.classifier = build_model(cfg).eval()
        load_weights(self.classifier, classifier_weights)
        base_cfg = cfg.clone()
        base_cfg.defrost()
        base_cfg.MODEL.META_ARCHITECTURE = "MaskFormer"
        self.baseline = build_model(base_cfg).eval()
        load_weights(self.baseline, baseline_weights)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.format = cfg.INPUT.FORMAT

    def inputs(self, image_bgr):
        image = image_bgr[:, :, ::-1] if self.format == "RGB" else image_bgr
        resized = self.aug.get_transform(image).apply_image(image)
        return torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))

    @torch.no_grad()
    def classify(self, tensor, masks, height, width):
        prompts = resize_masks(torch.as_tensor(masks), tensor.shape[-2:])
        inst = self.classifier([{"image": tensor, "prompt_masks": prompts, "height": height, "width": width}])[0]
        return inst["instances"].class_probs.numpy()

    @torch.no_grad()
    def baseline_queries(self, tensor, height, width):
        q = self.baseline.predict_queries([{"image": tensor}])[0]
        masks = resize_to_output(q["pred_masks"], q["image_size"], height, width) > 0
        return q["pred_logits"].float().softmax(-1).numpy(), masks.numpy()

    @staticmethod
    def best_iou(query_probs, query_masks, masks):
        """Each given mask takes the class distribution of the query mask with the highest IoU."""
        if len(masks) == 0:
            return np.zeros((0, query_probs.shape[1]))
        g = masks.reshape(len(masks), -1).astype(np.float32)
        q = query_masks.reshape(len(query_masks), -1).astype(np.float32)
        inter = g @ q.T
        union = g.sum(1)[:, None] + q.sum(1)[None] - inter
        return query_probs[(inter / np.maximum(union, 1)).argmax(1)]


def instances_of(masks, probs, thing_ids, topk):
    """Every (mask, thing class) pair scored by the class probability, the top ``topk``."""
    things = np.array(sorted(thing_ids))
    scores = probs[:, things]  # (P, T)
    flat = np.argsort(-scores, axis=None)[:topk]
    p, t = np.unravel_index(flat, scores.shape)
    inst = Instances(masks.shape[1:])
    inst.pred_masks = torch.as_tensor(masks[p])
    inst.pred_boxes = masks_to_boxes(inst.pred_masks)
    inst.scores = torch.as_tensor(scores[p, t], dtype=torch.float32)
    inst.pred_classes = torch.as_tensor(things[t])
    return inst


def export_sam_json(masks, path):
    """Masks as the automatic mask generator's output saved as JSON (COCO RLE segmentations)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    records = []
    for m in masks:
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        records.append({"segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                        "area": int(m.sum()), "bbox": [float(v) for v in mask_util.toBbox(rle)]})
    with open(path, "w") as f:
        json.dump(records, f)


def accuracy(probs, labels, num_classes, k):
    keep = labels < num_classes
    if not keep.any():
        return float("nan")
    ranked = np.argsort(-probs[keep, :num_classes], axis=1)[:, :k]
    return float((ranked == labels[keep, None]).any(1).mean() * 100)


def main(argv=None):
    args = parse_args(argv)
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    meta = MetadataCatalog.get(args.dataset)
    thing_ids = set(meta.thing_dataset_id_to_contiguous_id.values())
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    identity = {c: c for c in range(num_classes)}  # the evaluators map contiguous ids to the dataset's
    mp = cfg.INPUT.MASK_PROMPTS
    methods = Methods(cfg, args.classifier_weights, args.baseline_weights)
    dicts = DatasetCatalog.get(args.dataset)
    if args.max_images:
        dicts = dicts[: args.max_images]

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        evaluators, collected = {}, {}
        for method in ("baseline", "classifier"):
            for mask_set in ("clean", "perturbed"):
                key = (method, mask_set)
                evaluators[key] = (COCOPanopticEvaluator(args.dataset, os.path.join(tmp, f"{method}_{mask_set}")),
                                   COCOEvaluator(args.dataset, tasks=("segm",), distributed=False,
                                                 output_dir=os.path.join(tmp, f"{method}_{mask_set}_ap")))
                for e in evaluators[key]:
                    e.reset()
                collected[key] = ([], [])
        for n, d in enumerate(tqdm(dicts, desc="evaluate", unit="img")):
            image = read_image(d["file_name"], format="BGR")
            h, w = image.shape[:2]
            gt_masks, gt_classes = ground_truth(d)
            is_thing = [c in thing_ids for c in gt_classes]
            rng = np.random.RandomState(args.seed * 100003 + n)
            perturbed = np.stack([
                perturb_mask(m, mp.PERTURBATIONS[rng.randint(len(mp.PERTURBATIONS))], rng,
                             others=[o for j, o in enumerate(gt_masks) if j != i])
                for i, m in enumerate(gt_masks)]) if len(gt_masks) else gt_masks
            sets = {"clean": (gt_masks, gt_classes),
                    "perturbed": (perturbed, label_prompts(perturbed, gt_masks, gt_classes, is_thing, num_classes,
                                                           mp.MIN_PURITY, mp.MIN_COVERAGE))}
            if args.export_sam_json:
                export_sam_json(perturbed, os.path.join(args.export_sam_json, os.path.splitext(
                    os.path.basename(d["file_name"]))[0] + ".json"))
            tensor = methods.inputs(image)
            query_probs, query_masks = methods.baseline_queries(tensor, h, w)
            inputs = [{"file_name": d["file_name"], "image_id": d["image_id"], "height": h, "width": w}]
            for mask_set, (masks, labels) in sets.items():
                for method in ("baseline", "classifier"):
                    probs = (methods.best_iou(query_probs, query_masks, masks) if method == "baseline"
                             else methods.classify(tensor, masks, h, w))
                    seg, segments = panoptic_segmentation(masks, probs, thing_ids, identity)
                    pan, ap = evaluators[(method, mask_set)]
                    pan.process(inputs, [{"panoptic_seg": (torch.as_tensor(seg), segments)}])
                    ap.process(inputs, [{"instances": instances_of(masks, probs, thing_ids,
                                                                   cfg.TEST.DETECTIONS_PER_IMAGE)}])
                    collected[(method, mask_set)][0].append(probs)
                    collected[(method, mask_set)][1].append(labels)
        for (method, mask_set), (pan, ap) in evaluators.items():
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools / panopticapi print their tables
                pq = pan.evaluate()["panoptic_seg"]
                segm = ap.evaluate()["segm"]
            probs = np.concatenate(collected[(method, mask_set)][0])
            labels = np.concatenate(collected[(method, mask_set)][1])
            results.setdefault(mask_set, {})[method] = {
                "top1": accuracy(probs, labels, num_classes, 1), "top5": accuracy(probs, labels, num_classes, 5),
                "PQ": pq["PQ"], "SQ": pq["SQ"], "RQ": pq["RQ"], "AP": segm["AP"],
                "num_masks": int(len(labels)), "num_labelled": int((labels < num_classes).sum()),
            }
    print(f"\n{args.dataset}, {len(dicts)} images\n")
    print("| masks | method | top-1 | top-5 | PQ | SQ | RQ | mask AP | masks (labelled) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mask_set, by_method in results.items():
        for method, r in by_method.items():
            print(f"| {mask_set} | {method} | {r['top1']:.1f} | {r['top5']:.1f} | {r['PQ']:.1f} | {r['SQ']:.1f} | "
                  f"{r['RQ']:.1f} | {r['AP']:.1f} | {r['num_masks']} ({r['num_labelled']}) |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"dataset": args.dataset, "num_images": len(dicts), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
