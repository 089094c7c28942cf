#!/usr/bin/env python
"""
Export the image network of a config (and its MODEL.WEIGHTS) for deployment:

    python tools/export_model.py --config-file CFG --format onnx --output DIR [KEY VALUE ...]

writes DIR/model.onnx (opset 17 by default) with dynamic height and width:

    input  image        (1, 3, H, W) float32, raw pixel values in INPUT.FORMAT (normalised inside the graph)
    output pred_logits  (1, Q, K+1) class logits (the last class is "no object")
           pred_masks   (1, Q, H'/4, W'/4) mask logits; H', W' = H, W padded up to a multiple of 32

Post-processing (semantic / panoptic / instance) is not in the graph; it is described in
mask2former/export.py and docs/MODEL_ZOO.md ("Export"). Without MODEL.WEIGHTS the graph has random weights
(useful to check the export only). ``--check`` runs onnxruntime on a random image and prints the largest
difference to PyTorch.
"""
import argparse
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_net import build_config  # noqa: E402  (first: imports mask2former, then detectron2 quietly)
from detectron2.modeling import build_model  # noqa: E402

from mask2former.export import ExportableMaskFormer, export_onnx  # noqa: E402
from mask2former.engine.checkpoint import MaskFormerCheckpointer  # noqa: E402

FORMATS = ("onnx",)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--height", type=int, default=512, help="height of the example input used to trace")
    parser.add_argument("--width", type=int, default=640, help="width of the example input used to trace")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--check", action="store_true", help="compare onnxruntime (CPU) with PyTorch on a random image")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config changes as KEY VALUE pairs")
    return parser


def build_exported_model(args):
    cfg, _ = build_config(argparse.Namespace(config_file=args.config_file, opts=args.opts))
    if cfg.MODEL.META_ARCHITECTURE != "MaskFormer":
        raise SystemExit(f"error: {args.config_file}: only the image model 'MaskFormer' is exported, got "
                         f"{cfg.MODEL.META_ARCHITECTURE!r}")
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        MaskFormerCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logging.getLogger("mask2former").warning("MODEL.WEIGHTS is empty: exporting random weights")
    return model.cpu()


def check_onnx(model, path: str, height: int, width: int) -> dict:
    """Largest absolute differences between onnxruntime (CPU) and PyTorch on a random image."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise SystemExit("error: --check needs onnxruntime: pip install onnxruntime") from e
    image = torch.rand(1, 3, height, width) * 255
    with torch.no_grad():
        expected = ExportableMaskFormer(model).eval()(image)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": image.numpy()})
    return {name: float((torch.from_numpy(g) - e).abs().max())
            for name, g, e in zip(("pred_logits", "pred_masks"), got, expected)}


def export(argv=None):
    """Parse ``argv``, build, export; returns (the exported PyTorch model, the ONNX path)."""
    args = get_parser().parse_args(argv)
    if args.opset < 17:
        raise SystemExit(f"error: --opset {args.opset}: the graph needs opset >= 17 (GridSample, LayerNormalization)")
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError as e:
        raise SystemExit("error: --format onnx needs the onnx package: pip install onnx (or `pip install -e .[export]`)") from e
    model = build_exported_model(args)
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "model.onnx")
    export_onnx(model, path, args.height, args.width, opset=args.opset)
    print(f"wrote {path}")
    if args.check:
        print("largest |onnxruntime - PyTorch|:", check_onnx(model, path, args.height, args.width))
    return model, path


if __name__ == "__main__":
    export()
