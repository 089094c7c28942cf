#!/usr/bin/env python
"""
HuggingFace Mask2Former (Swin backbone) <-> this project:

    # HF folder (config.json + model.safetensors / pytorch_model.bin) -> OUT/config.yaml + OUT/model_final.pth
    python tools/convert_hf_mask2former.py --from-hf HF_FOLDER --output OUT [--base-config CFG]
    python demo/demo.py --config-file OUT/config.yaml --input photo.jpg --output out/ --opts MODEL.WEIGHTS OUT/model_final.pth

    # our config + checkpoint -> an HF folder that Mask2FormerForUniversalSegmentation.from_pretrained loads
    python tools/convert_hf_mask2former.py --to-hf --config-file CFG --weights model_final.pth --output HF_FOLDER

--base-config (default: the official Swin-T COCO panoptic config) supplies what config.json does not say: the
dataset (class names, evaluation), the test-time sizes and the outputs (TEST.*_ON). Mapping and differences:
mask2former/utils/hf_conversion.py, docs/MODEL_ZOO.md.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mask2former.utils.hf_conversion import hf_config_to_opts, hf_to_ours, read_hf_folder, write_hf_folder  # noqa: E402
from mask2former.engine.checkpoint import MaskFormerCheckpointer  # noqa: E402
from train_net import build_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml")


def from_hf(folder: str, output: str, base_config: str = BASE, opts=()):
    """Write OUT/config.yaml and OUT/model_final.pth; returns (config, state dict)."""
    config, state_dict = read_hf_folder(folder)
    hf_opts = [str(v) if not isinstance(v, str) else v for v in hf_config_to_opts(config)]
    cfg, _ = build_config(argparse.Namespace(config_file=base_config,
                                             opts=hf_opts + ["MODEL.WEIGHTS", ""] + list(opts)))
    ours = hf_to_ours(state_dict)
    os.makedirs(output, exist_ok=True)
    torch.save({"model": ours, "__author__": "HuggingFace Mask2Former"}, os.path.join(output, "model_final.pth"))
    with open(os.path.join(output, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    return cfg, ours


def to_hf(config_file: str, weights: str, output: str, opts=()):
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    cfg, _ = build_config(argparse.Namespace(config_file=config_file, opts=["MODEL.DEVICE", "cpu", *opts]))
    model = build_model(cfg).eval()
    MaskFormerCheckpointer(model).load(weights)
    names = list(cfg.DATASETS.TRAIN) or list(cfg.DATASETS.TEST)
    classes = MetadataCatalog.get(names[0]).get("stuff_classes", None) if names else None
    id2label = {i: n for i, n in enumerate(classes)} if classes and len(classes) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES else None
    return write_hf_folder(cfg, model.state_dict(), output, id2label)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--from-hf", metavar="HF_FOLDER")
    group.add_argument("--to-hf", action="store_true")
    parser.add_argument("--output", required=True)
    parser.add_argument("--base-config", default=BASE)
    parser.add_argument("--config-file")
    parser.add_argument("--weights")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.from_hf:
        from_hf(args.from_hf, args.output, args.base_config, args.opts)
        print(f"wrote {args.output}/config.yaml and {args.output}/model_final.pth")
    else:
        if not (args.config_file and args.weights):
            parser.error("--to-hf needs --config-file and --weights")
        to_hf(args.config_file, args.weights, args.output, args.opts)
        print(f"wrote the HuggingFace folder {args.output}")


if __name__ == "__main__":
    main()
