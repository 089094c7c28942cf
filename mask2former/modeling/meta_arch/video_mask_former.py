"""The ``VideoMaskFormer`` meta-architecture: Mask2Former for video instance segmentation.

The image model with a time axis: the backbone and pixel decoder run on every frame, the video transformer
decoder (:class:`VideoMultiScaleMaskedTransformerDecoder`) lets each query attend to all frames of a clip
and predicts one class and one (T, H, W) mask per query, and the shared matcher and criterion train
spatio-temporal masks. Parameter names are those of the image model, so image checkpoints initialise it.
"""
from typing import Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList

from ..transformer_decoder import video_mask2former_transformer_decoder  # noqa: F401  (registers the decoder)
from .mask_former import MaskFormer
from ..tracking.clip_tracker import ClipTracker, iter_clips, rles_to_masks

__all__ = ["VideoMaskFormer"]


@META_ARCH_REGISTRY.register()
class VideoMaskFormer(MaskFormer):
    """Mask2Former for videos.

    Input: a list of videos, each a dict with
        "image": list of T (C, H, W) frames in INPUT.FORMAT (one size for the whole video),
        "height", "width": the output size (default: the frames' size),
        in training "instances": list of T Instances (one per frame) with the same N rows in each: gt_ids
            (N,) (-1 where the instance is absent from the frame), gt_classes (N,) and gt_masks (N, H, W).
    Output in training: dict of weighted losses (clips of INPUT.SAMPLING_FRAME_NUM frames).
    In inference (one video per batch): a list with one dict {"image_size": (height, width),
        "pred_scores": [float], "pred_labels": [int] (contiguous ids), "pred_masks": [(T, height, width) bool]}
        for the top MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO (query, class) pairs.
    """

    @configurable
    def __init__(self, *, num_frames: int, test_topk_per_video: int, clip_length: int = 0, clip_overlap: int = 2,
                 **kwargs):
        """
        Args:
            num_frames: frames per training clip (INPUT.SAMPLING_FRAME_NUM).
            test_topk_per_video: instances kept per video in inference.
            clip_length, clip_overlap: in inference, videos longer than ``clip_length`` frames are segmented
                in clips of that length overlapping by ``clip_overlap`` frames (0: in one pass).
            kwargs: the arguments of :class:`MaskFormer`.
        """
        super().__init__(**kwargs)
        if test_topk_per_video < 1:
            raise ValueError(f"MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO must be >= 1, got {test_topk_per_video}")
        if clip_length < 0 or clip_length == 1:
            raise ValueError(f"MODEL.MASK_FORMER.TEST.CLIP_LENGTH must be 0 (off) or >= 2, got {clip_length}")
        if clip_length and not 1 <= clip_overlap < clip_length:
            raise ValueError(f"MODEL.MASK_FORMER.TEST.CLIP_OVERLAP must be in [1, CLIP_LENGTH - 1] = "
                             f"[1, {clip_length - 1}], got {clip_overlap}")
        self.num_frames = num_frames
        self.test_topk_per_video = test_topk_per_video
        self.clip_length = clip_length
        self.clip_overlap = clip_overlap

    @classmethod
    def from_config(cls, cfg):
        if cfg.MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT > 0:
            raise ValueError("MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT > 0 is for image models; the video model "
                             "classifies each instance over all its frames (set it to 0)")
        ret = MaskFormer.from_config(cfg)
        test = cfg.MODEL.MASK_FORMER.TEST
        ret.update({
            "num_frames": cfg.INPUT.SAMPLING_FRAME_NUM,
            "test_topk_per_video": test.DETECTIONS_PER_VIDEO,
            "clip_length": test.CLIP_LENGTH,
            "clip_overlap": test.CLIP_OVERLAP,
        })
        return ret

    # ------------------------------------------------------------------------------------------ common
    def preprocess_frames(self, frames: Sequence[torch.Tensor]) -> ImageList:
        """Normalise frames (C, H, W) and pad them to a common size divisible by ``size_divisibility``."""
        return self.normalize_and_pad(frames)

    def predict(self, frames: Sequence[torch.Tensor], training_batch: bool = False):
        """Run backbone, pixel decoder (per frame) and video decoder. Returns (decoder outputs, ImageList)."""
        images = self.preprocess_frames(frames)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        return outputs, images

    def forward(self, batched_inputs):
        for i, video in enumerate(batched_inputs):
            if "image" not in video or not isinstance(video["image"], (list, tuple)) or not video["image"]:
                raise ValueError(
                    f"VideoMaskFormer: input {i} needs 'image', a non-empty list of (C, H, W) frames (is "
                    "INPUT.DATASET_MAPPER_NAME a video mapper such as 'ytvis'?)")
        if self.training:
            return self.forward_train(batched_inputs)
        if len(batched_inputs) != 1:
            raise ValueError(f"VideoMaskFormer segments one video per batch in inference, got {len(batched_inputs)}")
        video = batched_inputs[0]
        frames = video["image"]
        _check_frame_sizes(frames, video.get("file_names"))
        height = video.get("height", frames[0].shape[-2])
        width = video.get("width", frames[0].shape[-1])
        if self.clip_length and len(frames) > self.clip_length:
            result = self.segment_long_video(frames, height, width)
            result["pred_masks"] = [rles_to_masks(r, height, width) for r in result.pop("pred_rles")]
            result.pop("length")
            return [result]
        outputs, images = self.predict(frames)
        return [self.inference_video(outputs["pred_logits"][0], outputs["pred_masks"][0],
                                     images.image_sizes[0], images.tensor.shape[-2:], height, width)]

    # ---------------------------------------------------------------------------------------- training
    def forward_train(self, batched_inputs):
        frames = []
        for i, video in enumerate(batched_inputs):
            if len(video["image"]) != self.num_frames:
                raise ValueError(f"VideoMaskFormer: training video {i} has {len(video['image'])} frames, expected "
                                 f"INPUT.SAMPLING_FRAME_NUM = {self.num_frames}")
            if "instances" not in video or len(video["instances"]) != self.num_frames:
                raise ValueError(f"VideoMaskFormer: training video {i} needs 'instances', one Instances per frame "
                                 "(check INPUT.DATASET_MAPPER_NAME)")
            frames.extend(video["image"])
        outputs, images = self.predict(frames)
        targets = self.prepare_targets(batched_inputs, images)
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        return {k: v * weights[k] for k, v in losses.items() if k in weights}

    def prepare_targets(self, batched_inputs, images):
        """Per video {"labels" (N,), "ids" (N, T), "masks" (N, T, H', W') bool padded to the batch size} for
        the N instances present in at least one frame of the clip."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for video in batched_inputs:
            frames = [inst.to(self.device) for inst in video["instances"]]
            n = len(frames[0])
            if any(len(f) != n for f in frames):
                raise ValueError("VideoMaskFormer: every frame's Instances must list the same instances (got "
                                 f"{[len(f) for f in frames]} rows)")
            masks = torch.zeros((n, len(frames), h_pad, w_pad), dtype=torch.bool, device=self.device)
            for t, inst in enumerate(frames):
                m = inst.gt_masks.tensor if hasattr(inst.gt_masks, "tensor") else inst.gt_masks
                masks[:, t, : m.shape[1], : m.shape[2]] = m
            ids = torch.stack([f.gt_ids for f in frames], dim=1)  # (N, T)
            classes = torch.stack([f.gt_classes for f in frames], dim=1)  # (N, T)
            present = ids != -1
            valid = present.any(dim=1)
            # the class of each instance from a frame where it is present (absent frames may carry -1)
            first = present.float().argmax(dim=1)
            labels = classes.gather(1, first[:, None])[:, 0]
            targets.append({"labels": labels[valid], "ids": ids[valid], "masks": masks[valid]})
        return targets

    # --------------------------------------------------------------------------------------- inference
    @staticmethod
    def upsample_masks(mask_logits, padded_size, image_size, height, width):
        """(N, T, h, w) mask logits at the model's resolution -> (N, T, height, width) at the output size:
        upsampled to the padded input, cropped to the frames, resized to the output (as the official code)."""
        x = F.interpolate(mask_logits, size=tuple(padded_size), mode="bilinear", align_corners=False)
        x = x[:, :, : image_size[0], : image_size[1]]
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)

    def inference_video(self, mask_cls, mask_pred, image_size, padded_size, height, width):
        """One video's top-k (query, class) pairs: mask_cls (Q, K+1), mask_pred (Q, T, h, w) logits.

        The score is the class probability (the official video score, without a mask term).
        """
        num_classes = mask_cls.shape[-1] - 1
        scores = F.softmax(mask_cls, dim=-1)[:, :-1]
        k = min(self.test_topk_per_video, scores.numel())
        top_scores, index = scores.flatten().topk(k, sorted=True)
        queries = torch.div(index, num_classes, rounding_mode="floor")
        masks = self.upsample_masks(mask_pred[queries], padded_size, image_size, height, width) > 0
        return {
            "image_size": (height, width),
            "pred_scores": top_scores.tolist(),
            "pred_labels": (index % num_classes).tolist(),
            "pred_masks": [m.cpu() for m in masks],
        }

    @torch.no_grad()
    def segment_long_video(self, frames: Iterable[torch.Tensor], height: int, width: int,
                           clip_length: Optional[int] = None, clip_overlap: Optional[int] = None) -> dict:
        """Segment a video of any length in overlapping clips, holding one clip at a time.

        Args:
            frames: iterable (read lazily) of (C, H, W) frames in INPUT.FORMAT, all of one size.
            height, width: output size.
            clip_length, clip_overlap: default MODEL.MASK_FORMER.TEST.CLIP_LENGTH / CLIP_OVERLAP.
        Returns:
            :meth:`ClipTracker.finish`'s dict: image_size, length, pred_scores, pred_labels and pred_rles (per
            instance, per frame a COCO RLE or None).
        """
        clip_length = clip_length or self.clip_length
        clip_overlap = clip_overlap or self.clip_overlap
        if not clip_length:
            raise ValueError("segment_long_video needs a clip length (MODEL.MASK_FORMER.TEST.CLIP_LENGTH > 0)")
        tracker, frame_size, geometry = None, None, {}

        def to_output(mask_logits):  # (Q, h, w) -> (Q, height, width) bool
            up = self.upsample_masks(mask_logits[:, None], geometry["padded"], geometry["image"], height, width)
            return up[:, 0] > 0

        for start, clip in iter_clips(frames, clip_length, clip_overlap):
            for j, frame in enumerate(clip):
                if frame_size is None:
                    frame_size = tuple(frame.shape[-2:])
                elif tuple(frame.shape[-2:]) != frame_size:
                    raise ValueError(f"frame {start + j} is {frame.shape[-1]}x{frame.shape[-2]} (width x height), "
                                     f"frame 0 is {frame_size[1]}x{frame_size[0]}: all frames of a video must "
                                     "have one size")
            outputs, images = self.predict(clip)
            geometry.update(padded=images.tensor.shape[-2:], image=images.image_sizes[0])
            if tracker is None:
                tracker = ClipTracker(to_output, height, width)
            tracker.add_clip(start, outputs["pred_logits"][0], outputs["pred_masks"][0])
            del outputs, images
        return tracker.finish(self.test_topk_per_video)


def _check_frame_sizes(frames: List[torch.Tensor], file_names: Optional[Sequence[str]] = None) -> None:
    size = tuple(frames[0].shape[-2:])
    for t, frame in enumerate(frames):
        if tuple(frame.shape[-2:]) != size:
            name = f" ({file_names[t]})" if file_names and t < len(file_names) else ""
            raise ValueError(f"frame {t}{name} is {frame.shape[-1]}x{frame.shape[-2]} (width x height) but frame 0 "
                             f"is {size[1]}x{size[0]}: all frames of a video must have one size")
