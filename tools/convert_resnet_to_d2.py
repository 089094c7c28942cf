#!/usr/bin/env python
"""
Convert torchvision or timm ResNet ImageNet weights to detectron2's format (as its model zoo R-50.pkl):

    python tools/convert_resnet_to_d2.py resnet50-0676ba61.pth R-50.pkl     # torchvision or timm, .pth
    python tools/convert_resnet_to_d2.py model.safetensors R-101.pkl        # timm, safetensors

then ``MODEL.WEIGHTS R-50.pkl`` with the official R50/R101 configs (which set STRIDE_IN_1X1 False, RGB input and
torchvision's pixel mean/std). Names: mask2former/utils/backbone_conversion.py.
"""
import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mask2former.utils.backbone_conversion import convert_resnet, to_detectron2_pkl  # noqa: E402
from mask2former.utils.safe_load import load_torch  # noqa: E402


def read_state_dict(path: str) -> dict:
    """A state dict from a .pth/.pt/.bin (torch.load, weights only) or .safetensors file; unwraps
    {"model": ...} / {"state_dict": ...}."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise SystemExit("error: reading .safetensors needs the safetensors package: pip install safetensors") from e
        return load_file(path)
    data = load_torch(path)
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            return data[key]
    return data


def main(argv=None, convert=convert_resnet, author="torchvision/timm ResNet", description=__doc__):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output", help="the detectron2 .pkl to write")
    args = parser.parse_args(argv)
    converted = convert(read_state_dict(args.input))
    with open(args.output, "wb") as f:
        pickle.dump(to_detectron2_pkl(converted, author), f)
    print(f"wrote {args.output}: {len(converted)} arrays")
    return args.output


if __name__ == "__main__":
    main()
