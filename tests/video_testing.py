"""Helpers shared by the tests/test_video_*.py files: a tiny video model config and synthetic clips."""
import os

import torch
from detectron2.config import get_cfg
from detectron2.structures import Instances

from mask2former import add_maskformer2_config, add_maskformer2_video_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50_VIDEO_CONFIG = os.path.join(REPO, "configs/youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml")

TINY_OVERRIDES = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "GN",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.SEM_SEG_HEAD.MASK_DIM", 32, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 1, "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", 2,
    "MODEL.MASK_FORMER.HIDDEN_DIM", 32, "MODEL.MASK_FORMER.NHEADS", 2, "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 6, "MODEL.MASK_FORMER.DEC_LAYERS", 4,
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "SOLVER.AMP.ENABLED", False,
]


def tiny_video_cfg(*extra, base=R50_VIDEO_CONFIG):
    """The official YouTube-VIS R50 config shrunk to a tiny ResNet-18 model with 3 classes and 6 queries."""
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(base)
    opts = list(TINY_OVERRIDES) + list(extra)
    cfg.merge_from_list([v if isinstance(v, str) else str(v) for v in opts])
    return cfg


def box_masks(num_frames, height, width, boxes_per_frame):
    """(N, T, H, W) bool masks from per-instance lists of per-frame boxes (x0, y0, x1, y1) or None."""
    masks = torch.zeros((len(boxes_per_frame), num_frames, height, width), dtype=torch.bool)
    for n, boxes in enumerate(boxes_per_frame):
        for t, box in enumerate(boxes):
            if box is not None:
                x0, y0, x1, y1 = box
                masks[n, t, y0:y1, x0:x1] = True
    return masks


def clip_instances(masks, classes, ids):
    """Per-frame Instances (the "ytvis" mapper's format) for (N, T, H, W) masks."""
    out = []
    for t in range(masks.shape[1]):
        inst = Instances(tuple(masks.shape[-2:]))
        present = masks[:, t].flatten(1).any(1)
        inst.gt_ids = torch.where(present, torch.as_tensor(ids, dtype=torch.int64), torch.full((len(ids),), -1))
        inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        inst.gt_masks = masks[:, t]
        out.append(inst)
    return out
