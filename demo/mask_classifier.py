"""Run a MaskClassifier on an image and its given masks (e.g. SAM's), and draw the labelled masks.

``MaskClassifierPredictor(cfg)`` builds the model, loads ``cfg.MODEL.WEIGHTS`` (refusing missing or mismatched
checkpoints) and maps (BGR image, (P, H, W) masks) to per-mask class probabilities; ``draw_labelled_masks``
draws the masks with their labels next to the image.
"""
from typing import Dict, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import mask2former  # noqa: F401  (first: registers models and datasets, imports detectron2 quietly)
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer

from mask2former.modeling.meta_arch.mask_former import dataset_metadata

from .predictor import DemoError, display_metadata, load_weights

__all__ = ["MaskClassifierPredictor", "draw_labelled_masks", "resize_masks"]


def resize_masks(masks: torch.Tensor, size) -> torch.Tensor:
    """(P, H, W) bool -> (P, h, w) bool, bilinear then >= 0.5; a mask that would vanish (thinner than a pixel
    of the new size) keeps every pixel it touches, so that no given mask reaches the model empty."""
    if len(masks) == 0:
        return masks.new_zeros((0,) + tuple(size))
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    resized = F.interpolate(masks[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0] >= 0.5
    vanished = ~resized.flatten(1).any(1)
    if vanished.any():
        resized[vanished] = F.adaptive_max_pool2d(masks[vanished].float(), tuple(size)) > 0
    return resized


class MaskClassifierPredictor:
    """A MaskClassifier with its test-time resize and dataset metadata."""

    def __init__(self, cfg, train_hint: str = ""):
        if cfg.MODEL.META_ARCHITECTURE != "MaskClassifier":
            raise DemoError(f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; classifying given masks "
                            "needs a 'MaskClassifier' config (e.g. configs/shapes_world/mask_classifier_R18_panoptic.yaml)")
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        load_weights(self.model, self.cfg.MODEL.WEIGHTS, train_hint)
        self.num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        self.dataset_metadata = dataset_metadata(self.cfg)
        self.metadata = display_metadata(self.dataset_metadata, self.num_classes)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    @torch.no_grad()
    def __call__(self, image: np.ndarray, masks: np.ndarray) -> Dict[str, np.ndarray]:
        """BGR uint8 (H, W, 3) and bool (P, H, W) -> {"class_probs": (P, K+1)} (+ "refined_masks" (P, H, W) with
        MODEL.MASK_CLASSIFIER.REFINE_MASKS), in the masks' order."""
        if image.shape[:2] != masks.shape[1:]:
            raise ValueError(f"masks are {masks.shape[1:]} but the image is {image.shape[:2]} (H, W)")
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        prompts = resize_masks(torch.as_tensor(masks, dtype=torch.bool), resized.shape[:2])
        inst = self.model([{"image": tensor, "prompt_masks": prompts, "height": height, "width": width}])[0]["instances"]
        out = {"class_probs": inst.class_probs.cpu().numpy()}
        if inst.has("refined_masks"):
            out["refined_masks"] = inst.refined_masks.cpu().numpy()
        return out

    def label_names(self, class_probs: np.ndarray) -> list:
        """Per mask "name score" of its best class, or "no object" where that is most probable."""
        names = self.metadata.stuff_classes
        labels = []
        for probs in class_probs:
            c = int(np.argmax(probs))
            labels.append("no object" if c == self.num_classes else f"{names[c]} {probs[c]:.0%}")
        return labels


def draw_labelled_masks(image_rgb: np.ndarray, masks: np.ndarray, class_probs: np.ndarray, metadata,
                        labels: Optional[Sequence[str]] = None, side_by_side: bool = True) -> np.ndarray:
    """RGB uint8 picture of the masks coloured by predicted class with their labels (image | masks when
    ``side_by_side``). Masks predicted as "no object" are drawn grey."""
    num_classes = class_probs.shape[1] - 1 if len(class_probs) else 0
    best = class_probs.argmax(1) if len(class_probs) else np.zeros(0, dtype=int)
    colors = [np.array(metadata.stuff_colors[c]) / 255.0 if c < num_classes else np.array([0.5, 0.5, 0.5])
              for c in best]
    vis = Visualizer(image_rgb, metadata, instance_mode=ColorMode.SEGMENTATION)
    # Larger masks first, so that small ones stay visible on top.
    order = np.argsort([-m.sum() for m in masks]) if len(masks) else []
    drawing = vis.overlay_instances(masks=[masks[i] for i in order], labels=[labels[i] for i in order] if labels else None,
                                    assigned_colors=[colors[i] for i in order], alpha=0.5).get_image()
    if drawing.shape[:2] != image_rgb.shape[:2]:
        drawing = cv2.resize(drawing, (image_rgb.shape[1], image_rgb.shape[0]), interpolation=cv2.INTER_AREA)
    return np.concatenate([image_rgb, drawing], axis=1) if side_by_side else drawing
