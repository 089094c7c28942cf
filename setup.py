#!/usr/bin/env python
"""Mask2Former for detectron2: ``pip install -e .`` (detectron2 itself: see tools/install_detectron2.py)."""
from setuptools import find_packages, setup

setup(
    name="mask2former",
    version="0.1.0",
    description="Mask2Former (image and video segmentation) as a detectron2 plugin, runnable on CPU",
    packages=find_packages(include=["mask2former", "mask2former.*"]),
    package_data={"mask2former": ["data/metadata/*.json", "ops/csrc/*.cpp"]},
    python_requires=">=3.9",
    install_requires=[
        # torch/torchvision and detectron2 are installed by tools/setup.sh (see README: Dependencies).
        "torch>=2.0",
        "torchvision",
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "pycocotools>=2.0.2",
        "scipy>=1.7",
        "opencv-python-headless>=4.5",
        "numpy",
        "Pillow",
        "matplotlib",
        "tqdm",
        "termcolor",
        "tabulate",
        "yacs",
        "cloudpickle",
        "omegaconf>=2.1",
        "hydra-core>=1.1",
        "tensorboard",
        "shapely",
        # builds the C++ deformable-attention kernel on first use (mask2former/ops/ms_deform_attn_cpp.py)
        "ninja",
    ],
    extras_require={
        # optional: weights from other libraries, export and SAM (each imported only where used, with an install hint)
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        "convert": ["timm>=1.0", "safetensors>=0.4"],
        "hf": ["transformers>=4.40", "safetensors>=0.4"],
        # tools/classify_masks.py --sam-checkpoint runs Segment Anything's automatic mask generator
        "sam": ["segment-anything"],
        "test": ["pytest", "hypothesis", "onnx>=1.16", "onnxruntime>=1.18", "timm>=1.0", "safetensors>=0.4",
                 "transformers>=4.40"],
    },
)
