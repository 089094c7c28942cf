"""Training mapper of the mask classifier ("mask_classifier"): labelled mask prompts from any instance or
panoptic dataset.

The ground truth is read by the mapper INPUT.MASK_PROMPTS.SOURCE_MAPPER_NAME (augmented as that mapper
does); every ground-truth mask then becomes a prompt, unchanged with probability CLEAN_PROB, else perturbed
(mask2former/data/mask_prompts.py), and NUM_NEGATIVES negative prompts (background fragments, random blobs)
are added. Each prompt is labelled by :func:`label_prompts` (its ground-truth class, a stuff class, or "no
object" = K). Output: the source mapper's "image" (and "height", "width"), plus
"prompt_masks" bool (P, H, W) and "prompt_classes" int64 (P,).
"""
from typing import Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog

from ..mask_prompts import PERTURBATIONS, background_fragment, label_prompts, perturb_mask, random_blob
from .build import MAPPER_REGISTRY

__all__ = ["MaskClassifierDatasetMapper"]


@MAPPER_REGISTRY.register_as("mask_classifier")
class MaskClassifierDatasetMapper:
    @configurable
    def __init__(self, *, source, num_classes: int, thing_classes: Optional[Sequence[int]],
                 perturbations: Sequence[str] = PERTURBATIONS, clean_prob: float = 0.3, num_negatives: int = 4,
                 max_prompts: int = 48, min_purity: float = 0.5, min_coverage: float = 0.3, seed: Optional[int] = None):
        """
        Args:
            source: the mapper that reads the ground truth (its output has "image" and "instances").
            thing_classes: contiguous ids of the thing classes (None: every class is a thing).
            seed: a fixed seed (tests, evaluation); None draws from numpy's global generator, which
                detectron2 seeds per data-loader worker.
        """
        unknown = set(perturbations) - set(PERTURBATIONS)
        if unknown:
            raise ValueError(f"INPUT.MASK_PROMPTS.PERTURBATIONS has unknown {sorted(unknown)}; known: {PERTURBATIONS}")
        if not 0.0 <= clean_prob <= 1.0 or (clean_prob < 1.0 and not perturbations):
            raise ValueError("INPUT.MASK_PROMPTS.CLEAN_PROB must lie in [0, 1], and be 1 if PERTURBATIONS is empty")
        self.source = source
        self.num_classes = num_classes
        self.thing_classes = None if thing_classes is None else set(int(c) for c in thing_classes)
        self.perturbations = list(perturbations)
        self.clean_prob = clean_prob
        self.num_negatives = num_negatives
        self.max_prompts = max_prompts
        self.min_purity = min_purity
        self.min_coverage = min_coverage
        self.rng = np.random.RandomState(seed) if seed is not None else np.random  # same API

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        mp = cfg.INPUT.MASK_PROMPTS
        if mp.SOURCE_MAPPER_NAME == "mask_classifier" or mp.SOURCE_MAPPER_NAME not in MAPPER_REGISTRY:
            raise ValueError(f"INPUT.MASK_PROMPTS.SOURCE_MAPPER_NAME {mp.SOURCE_MAPPER_NAME!r} must name an instance "
                             "or panoptic dataset mapper, e.g. 'mask_former_panoptic' or 'mask_former_instance'")
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        meta = MetadataCatalog.get(names[0]) if len(names) else None
        thing_map = None if meta is None else meta.get("thing_dataset_id_to_contiguous_id", None)
        stuff_map = None if meta is None else meta.get("stuff_dataset_id_to_contiguous_id", None)
        # Panoptic metadata lists stuff ids too; instance datasets have things only.
        thing_classes = list(thing_map.values()) if thing_map and stuff_map else None
        return {
            # The source mapper always reads and augments the ground truth (training mode): prompts need it.
            "source": MAPPER_REGISTRY.get(mp.SOURCE_MAPPER_NAME)(cfg, is_train=True),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "thing_classes": thing_classes,
            "perturbations": mp.PERTURBATIONS,
            "clean_prob": mp.CLEAN_PROB,
            "num_negatives": mp.NUM_NEGATIVES,
            "max_prompts": mp.MAX_PROMPTS,
            "min_purity": mp.MIN_PURITY,
            "min_coverage": mp.MIN_COVERAGE,
        }

    def is_thing(self, class_id: int) -> bool:
        return self.thing_classes is None or int(class_id) in self.thing_classes

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        out = self.source(dataset_dict)
        if out is None:  # a bad item the source mapper skipped
            return None
        instances = out.pop("instances")
        out.pop("sem_seg", None)
        masks = instances.gt_masks.numpy().astype(bool)
        classes = instances.gt_classes.numpy()
        prompts = self.make_prompts(masks, classes)
        out["prompt_masks"] = torch.as_tensor(prompts)
        out["prompt_classes"] = torch.as_tensor(label_prompts(
            prompts, masks, classes, [self.is_thing(c) for c in classes], self.num_classes,
            self.min_purity, self.min_coverage))
        return out

    def make_prompts(self, masks: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(P, H, W) bool prompts from the ground-truth ``masks`` (N, H, W) with ``classes`` (N,)."""
        rng = self.rng
        h, w = masks.shape[1:]
        prompts = []
        order = rng.permutation(len(masks))[: self.max_prompts]
        for i in order:
            if rng.uniform() < self.clean_prob:
                prompts.append(masks[i])
            else:
                kind = self.perturbations[rng.randint(len(self.perturbations))]
                prompts.append(perturb_mask(masks[i], kind, rng, others=[masks[j] for j in range(len(masks)) if j != i]))
        # Negatives only inside the labelled area (not the padding the source mapper added).
        region = masks.any(0) if len(masks) else np.ones((h, w), dtype=bool)
        if not region.any():
            region = np.ones((h, w), dtype=bool)
        ys, xs = np.nonzero(region)
        box = np.zeros((h, w), dtype=bool)
        box[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1] = True
        things = np.zeros((h, w), dtype=bool)
        for m, c in zip(masks, classes):
            if self.is_thing(c):
                things |= m
        for k in range(max(0, min(self.num_negatives, self.max_prompts - len(prompts)))):
            neg = background_fragment(things, box, rng) if k % 2 == 0 else None
            if neg is None:
                neg = random_blob(box, rng)
            if neg is not None:
                prompts.append(neg)
        if not prompts:
            return np.zeros((0, h, w), dtype=bool)
        return np.stack(prompts)
