#!/usr/bin/env python
"""
Convert Swin Transformer ImageNet weights to this project's Swin names (detectron2 .pkl):

    python tools/convert_swin_to_d2.py swin_tiny_patch4_window7_224.pth swin_tiny_patch4_window7_224.pkl
    python tools/convert_swin_to_d2.py --source timm model.safetensors swin_tiny_timm.pkl

``--source official`` (default): the Microsoft release (github.com/microsoft/Swin-Transformer), whose names
the official configs' ``MODEL.WEIGHTS swin_*.pkl`` files have; ``--source timm``: timm's ``swin_*`` models.
Names: mask2former/utils/backbone_conversion.py.
"""
import argparse
import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import convert_resnet_to_d2  # noqa: E402
from mask2former.utils.backbone_conversion import convert_swin  # noqa: E402


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    source = "official"
    if "--source" in argv:
        i = argv.index("--source")
        source = argv[i + 1]
        del argv[i:i + 2]
    if source not in ("official", "timm"):
        raise SystemExit(f"error: --source must be official or timm, got {source!r}")
    return convert_resnet_to_d2.main(argv, partial(convert_swin, source=source), f"{source} Swin", __doc__)


if __name__ == "__main__":
    main()
