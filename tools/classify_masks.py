#!/usr/bin/env python
"""
Give classes to class-agnostic masks (Segment Anything's, or any) with a trained MaskClassifier.

    python tools/classify_masks.py --config-file configs/shapes_world/mask_classifier_R18_panoptic.yaml \\
        --input IMAGES --masks JSONS --output DIR [--skip-bad-masks] [KEY VALUE ...]
    python tools/classify_masks.py ... --input IMAGES --sam-checkpoint sam_vit_h.pth --output DIR

IMAGES and JSONS are files or folders; an image ``NAME.ext`` takes its masks from ``NAME.json`` (SAM's
automatic mask generator output saved as JSON, or an SA-1B annotation file; mask2former/data/sam_masks.py).
With ``--sam-checkpoint`` (needs ``pip install segment-anything``) images without a JSON get their masks from
SAM's automatic mask generator first. Trailing KEY VALUE pairs override the config (e.g. MODEL.WEIGHTS).

Writes into DIR:
    instances.json       COCO results, one entry per given mask in input order: "id" (the mask's id),
                         "image_id", "category_id" (dataset id), "score", "no_object_score", "segmentation"
                         (RLE), "area", "bbox", and "sam" (SAM's per-mask fields, as given)
    panoptic.json        COCO panoptic annotations (+ "categories"); overlaps go to the higher score, masks
                         labelled "no object" are left out; segments list the "mask_ids" they come from
    panoptic/NAME.png    the segment ids, RGB-coded (id = R + 256 G + 256^2 B)
    pictures/NAME.png    the image next to its masks drawn with their labels (unless --no-pictures)
    summary.json         per image: masks read, classified, skipped (index, id, reason)

Bad masks (of another size than the image, empty, invalid RLE) and files in neither SAM layout stop the tool
with an error naming the file and the mask index; with --skip-bad-masks bad masks are skipped, counted,
listed in summary.json and reported at the end. Exit status: 0 on success, 2 on an error.
"""
import argparse
import glob
import json
import os
import sys

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script: make `demo` importable
    sys.path.insert(0, REPO_ROOT)

from mask2former import add_maskformer2_config  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from panopticapi.utils import id2rgb  # noqa: E402

from demo.mask_classifier import MaskClassifierPredictor, draw_labelled_masks  # noqa: E402
from demo.predictor import DemoError  # noqa: E402
from mask2former.data.sam_masks import MaskInputError, read_given_masks  # noqa: E402
from mask2former.evaluation.labelled_masks import (  # noqa: E402
    coco_instance_records, contiguous_to_dataset_ids, panoptic_segmentation)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SAM_INSTALL_HINT = ("--sam-checkpoint needs Segment Anything: pip install segment-anything "
                    "(or pip install 'mask2former[sam]')")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="a MaskClassifier config")
    p.add_argument("--input", nargs="+", required=True, help="images, or folders of images")
    p.add_argument("--masks", nargs="*", default=[], help="SAM JSON files, or folders of them (NAME.json per image)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--sam-checkpoint", default="", help="run SAM's automatic mask generator on images without JSON")
    p.add_argument("--sam-model-type", default="vit_h", help="SAM model type of --sam-checkpoint (vit_h, vit_l, vit_b)")
    p.add_argument("--skip-bad-masks", action="store_true",
                   help="skip (and count, and list in summary.json) bad masks instead of stopping")
    p.add_argument("--min-score", type=float, default=0.0, help="panoptic output: leave out masks scoring below")
    p.add_argument("--no-pictures", action="store_true", help="do not draw pictures")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def list_files(paths, extensions):
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(extensions))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise DemoError(f"input not found: {path}")
    return files


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def build_sam_generator(checkpoint, model_type, device):
    """SAM's automatic mask generator; segment_anything is imported only here (an optional dependency)."""
    try:
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
    except ImportError:
        raise DemoError(SAM_INSTALL_HINT) from None
    if not os.path.isfile(checkpoint):
        raise DemoError(f"--sam-checkpoint {checkpoint} does not exist")
    if model_type not in sam_model_registry:
        raise DemoError(f"--sam-model-type {model_type!r} is not one of {sorted(sam_model_registry)}")
    sam = sam_model_registry[model_type](checkpoint=checkpoint)
    return SamAutomaticMaskGenerator(sam.to(device))


def categories(predictor, dataset_ids):
    things = set((predictor.dataset_metadata.get("thing_dataset_id_to_contiguous_id", None) or {}).values()) \
        if predictor.dataset_metadata is not None else set(range(predictor.num_classes))
    names = predictor.metadata.stuff_classes
    return [{"id": dataset_ids[c], "name": names[c], "isthing": int(c in things)} for c in range(predictor.num_classes)], things


def run(args):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    images = list_files(args.input, IMAGE_EXTENSIONS)
    if not images:
        raise DemoError(f"no images in {args.input} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    jsons = {}
    for f in list_files(args.masks, (".json",)):
        if stem(f) in jsons:
            raise DemoError(f"two mask files for images named {stem(f)!r}: {jsons[stem(f)]} and {f}")
        jsons[stem(f)] = f
    missing = [im for im in images if stem(im) not in jsons]
    if missing and not args.sam_checkpoint:
        raise DemoError(f"{len(missing)} image(s) have no mask file NAME.json in --masks, e.g. {missing[0]} "
                        f"(expected {stem(missing[0])}.json); give one, or --sam-checkpoint to run SAM")
    predictor = MaskClassifierPredictor(cfg, train_hint="Train one with train_net.py and the MaskClassifier config.")
    generator = build_sam_generator(args.sam_checkpoint, args.sam_model_type, cfg.MODEL.DEVICE) if missing else None
    dataset_ids = contiguous_to_dataset_ids(predictor.dataset_metadata or {}, predictor.num_classes)
    cats, things = categories(predictor, dataset_ids)

    os.makedirs(os.path.join(args.output, "panoptic"), exist_ok=True)
    if not args.no_pictures:
        os.makedirs(os.path.join(args.output, "pictures"), exist_ok=True)
    instances, panoptic, summary = [], [], []
    for path in tqdm(images, desc="classify masks", unit="img"):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:
            raise DemoError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
        hw = image.shape[:2]
        if stem(path) in jsons:
            given = read_given_masks(jsons[stem(path)], hw, skip_bad=args.skip_bad_masks)
        else:
            records = generator.generate(np.ascontiguousarray(image[:, :, ::-1]))
            given = read_given_masks(records, hw, source=f"SAM output for {path}", skip_bad=args.skip_bad_masks)
        info = given.image_info or {}
        image_id = info.get("image_id", stem(path))
        out = predictor(image, given.masks)
        probs = out["class_probs"]
        instances += coco_instance_records(image_id, given.ids, given.masks, probs, dataset_ids, given.records)
        seg, segments = panoptic_segmentation(given.masks, probs, things, dataset_ids, given.ids, args.min_score)
        png = stem(path) + ".png"
        Image.fromarray(id2rgb(seg)).save(os.path.join(args.output, "panoptic", png))
        panoptic.append({"image_id": image_id, "file_name": png, "segments_info": segments})
        if not args.no_pictures:
            picture = draw_labelled_masks(np.ascontiguousarray(image[:, :, ::-1]), given.masks, probs,
                                          predictor.metadata, predictor.label_names(probs))
            cv2.imwrite(os.path.join(args.output, "pictures", png), picture[:, :, ::-1])
        summary.append({"image": path, "masks": given.source, "image_id": image_id,
                        "num_read": len(given.ids) + len(given.skipped), "num_classified": len(given.ids),
                        "skipped": [{"index": i, "id": mid, "reason": r} for i, mid, r in given.skipped]})
    with open(os.path.join(args.output, "instances.json"), "w") as f:
        json.dump(instances, f)
    with open(os.path.join(args.output, "panoptic.json"), "w") as f:
        json.dump({"annotations": panoptic, "categories": cats}, f)
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    num_skipped = sum(len(s["skipped"]) for s in summary)
    print(f"{len(images)} image(s), {len(instances)} mask(s) classified -> {args.output}"
          + (f"; {num_skipped} bad mask(s) skipped (listed in summary.json)" if num_skipped else ""))
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (DemoError, MaskInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
