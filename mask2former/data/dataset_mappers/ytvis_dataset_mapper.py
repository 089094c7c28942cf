"""Video clip mapper ("ytvis"): samples a clip of a YouTube-VIS format video and augments all its frames alike.

Input: a dict of :func:`~mask2former.data.datasets.ytvis.load_ytvis_json` ("file_names", "height", "width",
"annotations" per frame, ...). Output (the data contract of ``VideoMaskFormer``)::

    "image":      list of T uint8 tensors (C, H, W) in INPUT.FORMAT
    "instances":  (training) list of T Instances, each listing the same N instances of the clip (sorted by
                  annotation id): gt_ids (N,) the annotation id, -1 where the instance is not visible in the
                  frame; gt_classes (N,) contiguous ids (the instance's class in every frame);
                  gt_masks (N, H, W) bool; gt_boxes (N, 4) around the masks
    "file_names", "frame_idx": the frames of the clip; "height", "width", "length", "video_id" as given

Training clips have INPUT.SAMPLING_FRAME_NUM frames: a random reference frame plus frames drawn from the
INPUT.SAMPLING_FRAME_RANGE frames on either side of it (without replacement when there are enough), in time
order unless INPUT.SAMPLING_FRAME_SHUFFLE. At test time the clip is the whole video.

One random draw of every augmentation is made per clip and applied to all its frames: the resize
(INPUT.MIN_SIZE_TRAIN with MIN_SIZE_TRAIN_SAMPLING "choice_by_clip"/"range_by_clip", or "choice"/"range",
which also give one size per clip here), the crop (INPUT.CROP), the flip (INPUT.RANDOM_FLIP "flip_by_clip",
"horizontal", "vertical" or "none") and INPUT.AUGMENTATIONS ("brightness", "contrast", "saturation",
"rotation"). Contrast and saturation blend each frame with its own mean or grey image.
"""
import numbers
from typing import List, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances
from fvcore.transforms.transform import Transform

from .augmentation import PhotometricTransform
from .build import MAPPER_REGISTRY
from .checks import (
    BadDatasetItemError,
    check_annotation_list,
    check_category_id,
    check_is_crowd,
    decode_segmentation,
    read_image,
)
from .mask_former_instance_dataset_mapper import render_instance_masks
from .base import MaskFormerMapperBase, _pad

__all__ = ["YTVISDatasetMapper", "build_clip_augmentations", "FrameBlendTransform", "RandomFrameBlend",
           "sample_clip_frames"]

AUGMENTATION_NAMES = ("brightness", "contrast", "saturation", "rotation")


class FrameBlendTransform(PhotometricTransform):
    """``weight * frame + (1 - weight) * reference`` where the reference is computed from the frame itself:
    its mean ("contrast") or its grey image ("saturation"). Geometry is unchanged."""

    def __init__(self, kind: str, weight: float, image_format: str = "RGB"):
        super().__init__()
        if kind not in ("contrast", "saturation"):
            raise ValueError(f"FrameBlendTransform kind must be 'contrast' or 'saturation', got {kind!r}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32)
        if self.kind == "contrast":
            reference = x.mean()
        else:
            luma = np.array([0.299, 0.587, 0.114], np.float32)
            if self.image_format == "BGR":
                luma = luma[::-1]
            reference = (x[..., :3] @ luma)[..., None]
        out = self.weight * x + (1.0 - self.weight) * reference
        return np.clip(out, 0, 255).astype(img.dtype) if img.dtype == np.uint8 else out


class RandomFrameBlend(T.Augmentation):
    """Samples :class:`FrameBlendTransform` with weight uniform in [intensity_min, intensity_max]."""

    def __init__(self, kind: str, intensity_min: float, intensity_max: float, image_format: str = "RGB"):
        super().__init__()
        self._init(locals())

    def get_transform(self, image) -> Transform:
        weight = float(np.random.uniform(self.intensity_min, self.intensity_max))
        return FrameBlendTransform(self.kind, weight, self.image_format)


def _by_clip(value: str, allowed: Sequence[str], key: str) -> str:
    base = value[: -len("_by_clip")] if value.endswith("_by_clip") else value
    if base not in allowed:
        options = ", ".join(f"'{a}', '{a}_by_clip'" for a in allowed)
        raise ValueError(f"{key} must be one of {options}, got {value!r}")
    return base


def build_clip_augmentations(cfg, is_train: bool) -> List[T.Augmentation]:
    """The augmentations of the video mapper (see the module docstring); test: ResizeShortestEdge only."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs = []
    if cfg.INPUT.CROP.ENABLED:  # as detectron2's DatasetMapper: crop, then resize
        augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    sampling = _by_clip(cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, ("choice", "range"), "INPUT.MIN_SIZE_TRAIN_SAMPLING")
    augs.append(T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, sampling))
    flip = cfg.INPUT.RANDOM_FLIP
    if flip == "flip_by_clip":
        flip = "horizontal"
    if flip not in ("horizontal", "vertical", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'flip_by_clip', 'horizontal', 'vertical' or 'none', got {flip!r}")
    if flip != "none":
        augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
    names = list(cfg.INPUT.AUGMENTATIONS)
    unknown = [n for n in names if n not in AUGMENTATION_NAMES]
    if unknown:
        raise ValueError(f"INPUT.AUGMENTATIONS has unknown entries {unknown}; known: {list(AUGMENTATION_NAMES)}")
    if "brightness" in names:
        augs.append(T.RandomBrightness(0.9, 1.1))  # blends with black: the same for every frame
    if "contrast" in names:
        augs.append(RandomFrameBlend("contrast", 0.9, 1.1, cfg.INPUT.FORMAT))
    if "saturation" in names:
        augs.append(RandomFrameBlend("saturation", 0.9, 1.1, cfg.INPUT.FORMAT))
    if "rotation" in names:
        augs.append(T.RandomRotation([-15, 15], expand=False, center=[(0.4, 0.4), (0.6, 0.6)], sample_style="range"))
    return augs


def sample_clip_frames(length: int, num_frames: int, frame_range: int, shuffle: bool) -> List[int]:
    """Training clip of ``num_frames`` frame indices of a ``length``-frame video (see the module docstring)."""
    ref = int(np.random.randint(length))
    candidates = list(range(max(0, ref - frame_range), ref)) + list(range(ref + 1, min(length, ref + frame_range + 1)))
    extra = []
    if num_frames > 1:
        if candidates:
            replace = len(candidates) < num_frames - 1
            extra = np.random.choice(candidates, num_frames - 1, replace=replace).tolist()
        else:  # a one-frame video (or no range): repeat the frame
            extra = [ref] * (num_frames - 1)
    selected = sorted(extra + [ref])
    if shuffle:
        np.random.shuffle(selected)
    return [int(i) for i in selected]


@MAPPER_REGISTRY.register_as("ytvis")
class YTVISDatasetMapper(MaskFormerMapperBase):
    """Maps a YouTube-VIS format video dict to a clip (see the module docstring)."""

    @configurable
    def __init__(self, *, sampling_frame_num: int, sampling_frame_range: int, sampling_frame_shuffle: bool, **kwargs):
        """
        Args:
            sampling_frame_num, sampling_frame_range, sampling_frame_shuffle: INPUT.SAMPLING_FRAME_* (training).
            kwargs: :class:`MaskFormerMapperBase` arguments.
        """
        super().__init__(with_boxes=True, **kwargs)
        if sampling_frame_num < 1:
            raise ValueError(f"INPUT.SAMPLING_FRAME_NUM must be >= 1, got {sampling_frame_num}")
        if sampling_frame_range < 0:
            raise ValueError(f"INPUT.SAMPLING_FRAME_RANGE must be >= 0, got {sampling_frame_range}")
        self.sampling_frame_num = sampling_frame_num
        self.sampling_frame_range = sampling_frame_range
        self.sampling_frame_shuffle = sampling_frame_shuffle

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return dict(
            cls.base_config(cfg, is_train),
            augmentations=build_clip_augmentations(cfg, is_train),
            sampling_frame_num=cfg.INPUT.SAMPLING_FRAME_NUM,
            sampling_frame_range=cfg.INPUT.SAMPLING_FRAME_RANGE,
            sampling_frame_shuffle=cfg.INPUT.SAMPLING_FRAME_SHUFFLE,
        )

    def map(self, dataset_dict: dict) -> dict:
        file_names = dataset_dict.get("file_names")
        video = f"video {dataset_dict.get('video_id', '?')}"
        if not isinstance(file_names, (list, tuple)):
            raise BadDatasetItemError(f"the dataset dict has no list 'file_names' (keys: {sorted(dataset_dict)})",
                                      video)
        if not file_names:
            raise BadDatasetItemError("the video has no frames ('file_names' is empty)", video)
        annotations = dataset_dict.pop("annotations", None)
        if self.is_train and annotations is None:
            raise ValueError(f"YTVISDatasetMapper needs 'annotations' to train, but the dict of {video} "
                             f"({file_names[0]}) has only {sorted(dataset_dict)}: is DATASETS.TRAIN a split "
                             "with ground truth?")
        if annotations is not None and not isinstance(annotations, list):
            raise BadDatasetItemError(f"'annotations' is a {type(annotations).__name__}; expected one list per frame",
                                      file_names[0])
        if annotations is not None and len(annotations) != len(file_names):
            raise BadDatasetItemError(f"'annotations' lists {len(annotations)} frames, 'file_names' "
                                      f"{len(file_names)}", file_names[0])
        if self.is_train:
            selected = sample_clip_frames(len(file_names), self.sampling_frame_num, self.sampling_frame_range,
                                          self.sampling_frame_shuffle)
        else:
            selected = list(range(len(file_names)))

        expected = None
        if "height" in dataset_dict and "width" in dataset_dict:
            expected = (dataset_dict["height"], dataset_dict["width"])
        images, transforms = [], None
        for idx in selected:
            image = read_image(file_names[idx], self.image_format, expected)
            expected = expected or image.shape[:2]  # no size given: every frame must match the first
            if transforms is None:
                image, _, transforms = self.augment(image)
            else:
                image = transforms.apply_image(image)
            images.append(image)
        dataset_dict.setdefault("height", expected[0])
        dataset_dict.setdefault("width", expected[1])
        h, w = images[0].shape[:2]
        size = self.padded_size(h, w)
        dataset_dict["image"] = [
            _pad(torch.as_tensor(np.ascontiguousarray(im.transpose(2, 0, 1))), size, self.image_pad_value)
            for im in images]
        dataset_dict["file_names"] = [file_names[i] for i in selected]
        dataset_dict["frame_idx"] = selected
        if self.is_train:
            dataset_dict["instances"] = self._clip_instances(
                [annotations[i] for i in selected], dataset_dict["file_names"], transforms, expected, (h, w), size)
        return dataset_dict

    def _clip_instances(self, frame_annos, file_names, transforms, input_hw, output_hw, padded) -> List[Instances]:
        """Per frame Instances listing every non-crowd instance of the clip (see the module docstring)."""
        per_frame, classes = [], {}
        for t, (annos, file_name) in enumerate(zip(frame_annos, file_names)):
            frame = {}
            for i, obj in enumerate(check_annotation_list(annos, f"the annotations of frame {t}", file_name)):
                where = f"annotation {i} (id {obj.get('id')!r})"
                if check_is_crowd(obj, where, file_name):
                    continue
                inst_id = obj.get("id")
                if isinstance(inst_id, bool) or not isinstance(inst_id, numbers.Integral):
                    raise BadDatasetItemError(f"{where} has instance id {inst_id!r}; expected an integer", file_name)
                if inst_id in frame:  # which of the two masks is the instance's would be a guess
                    raise BadDatasetItemError(f"{where}: instance {inst_id} is annotated twice in this frame",
                                              file_name)
                class_id = check_category_id(obj.get("category_id"), self.num_classes, where, file_name)
                if classes.setdefault(inst_id, class_id) != class_id:
                    raise BadDatasetItemError(f"{where} has category {class_id} but the same instance has category "
                                              f"{classes[inst_id]} in another frame", file_name)
                if "segmentation" not in obj:
                    raise BadDatasetItemError(f"{where} has no 'segmentation'", file_name)
                frame[inst_id] = decode_segmentation(obj["segmentation"], input_hw, where, file_name)
            per_frame.append(frame)
        ids = sorted(classes)
        gt_classes = torch.tensor([classes[i] for i in ids], dtype=torch.int64)
        out = []
        for frame in per_frame:
            masks = np.zeros((len(ids),) + tuple(output_hw), dtype=bool)
            gt_ids = torch.full((len(ids),), -1, dtype=torch.int64)
            for n, inst_id in enumerate(ids):
                if inst_id in frame:
                    kind, data = frame[inst_id]
                    masks[n] = render_instance_masks([(None, kind, data)], transforms, output_hw)[0]
                    if masks[n].any():
                        gt_ids[n] = inst_id
            instances = Instances(tuple(padded))
            instances.gt_ids = gt_ids
            instances.gt_classes = gt_classes.clone()
            instances.gt_masks = _pad(torch.from_numpy(masks), padded, False)
            instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
            out.append(instances)
        return out
