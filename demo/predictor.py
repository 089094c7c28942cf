"""Run a Mask2Former image model on pictures and video frames, and draw what it predicts.

``VisualizationDemo(cfg, task)`` builds the model, loads ``cfg.MODEL.WEIGHTS`` (refusing missing or mismatched
checkpoints) and offers ``run_on_image`` (BGR array -> predictions, RGB drawing) and ``run_on_video`` (a
generator over the annotated frames of an open ``cv2.VideoCapture``, one frame in memory at a time).
:func:`read_video_frames` reads a capture for both demos and reports a video that stops decoding half-way.
"""
import logging
import os
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import torch

import mask2former  # noqa: F401  (first: registers models and datasets, imports detectron2 quietly)
from mask2former.engine.checkpoint import MaskFormerCheckpointer
from detectron2.data import Metadata
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.colormap import colormap
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from mask2former.modeling.meta_arch.mask_former import dataset_metadata
from mask2former.utils.weights import WeightsUnavailableError, resolve_weights

TASKS = ("panoptic", "instance", "semantic")
# Longer side, in pixels, to which larger inputs are shrunk (memory: docs/RELIABILITY.md, "Large inputs").
DEFAULT_MAX_SIDE = 2048
logger = logging.getLogger("demo")
OUTPUT_KEY = {"panoptic": "panoptic_seg", "instance": "instances", "semantic": "sem_seg"}


class DemoError(Exception):
    """A problem the user must fix (config, checkpoint, input); the message says what and how."""


class FrameDecodeError(DemoError):
    """A video (or frame sequence) that stops decoding at frame ``index``; the frames before it decoded."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def frames_processed(index: int) -> str:
    """What was done with the ``index`` frames before the one that failed, for FrameDecodeError messages."""
    return f"frames 0-{index - 1} were processed" if index > 0 else "no frame was processed"


def read_video_frames(video: cv2.VideoCapture, name: str = "") -> Iterator[np.ndarray]:
    """
    Yield the BGR frames of an opened capture, one at a time. When it stops well before the frame count its
    container states (a truncated or damaged file), raise :class:`FrameDecodeError` naming the frame, after
    yielding every frame that decoded; ``name`` (the file) starts the message.
    """
    count = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) if hasattr(video, "get") else 0
    index = 0
    while True:
        ok, frame = video.read()
        if not ok:
            # A container's frame count can be an estimate off by a frame or two at the end; more missing
            # frames mean the video stopped decoding (truncated or damaged file).
            if count > 0 and index < count - max(2, count // 100):
                raise FrameDecodeError(f"{name + ': ' if name else ''}frame {index} of {count} cannot be decoded "
                                       f"(damaged or truncated video); {frames_processed(index)}", index)
            return
        yield frame
        index += 1


class _RecordingCheckpointer(MaskFormerCheckpointer):
    """MaskFormerCheckpointer that keeps the incompatible keys of the last load (fvcore only logs them)."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def _listing(title: str, items: List[str], limit: int = 12) -> str:
    shown = "".join(f"\n    {x}" for x in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):{shown}{more}"


def load_weights(model: torch.nn.Module, path: str, train_hint: str = "") -> None:
    """Load a detectron2 checkpoint (.pth / .pkl) into ``model``, or raise DemoError.

    Refuses a missing or unreadable file and any checkpoint whose keys or shapes do not match the model
    exactly (missing, unexpected or differently shaped parameters), listing the problems: the demo never
    runs with randomly initialised weights. ``train_hint`` is appended to the missing-file message.
    """
    if not path:
        raise DemoError("MODEL.WEIGHTS is empty: the demo needs trained weights. " + train_hint)
    if "://" not in path and not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (here: {os.path.abspath(path)})"
        raise DemoError(f"checkpoint not found: {path}{where}. {train_hint}".strip())
    try:
        path = resolve_weights(path)  # a URL is downloaded into detectron2's cache (once)
    except WeightsUnavailableError as e:
        raise DemoError(str(e)) from e
    checkpointer = _RecordingCheckpointer(model)
    # fvcore logs every mismatch as a warning; they are all reported below, in one message.
    checkpointer.logger = logging.getLogger("demo.checkpointer")
    checkpointer.logger.setLevel(logging.ERROR)
    try:
        checkpointer.load(path, checkpointables=[])
    except Exception as e:  # unreadable file, unpickling error, download failure ...
        raise DemoError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    bad = checkpointer.incompatible
    if bad is None:
        return
    problems = ""
    reshaped = {k for k, _, _ in bad.incorrect_shapes}
    missing = [k for k in bad.missing_keys if k not in reshaped]  # fvcore lists skipped (reshaped) keys as missing
    if missing:
        problems += _listing("parameters of the model missing from the checkpoint", missing)
    if bad.unexpected_keys:
        problems += _listing("checkpoint entries the model does not have", list(bad.unexpected_keys))
    if bad.incorrect_shapes:
        problems += _listing("shape mismatches (key: checkpoint shape vs model shape)",
                             [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in bad.incorrect_shapes])
    if problems:
        raise DemoError(f"checkpoint {path} does not match the model built from the config:{problems}\n"
                        "Use the config the checkpoint was trained with (same classes, sizes and layers).")


def display_metadata(metadata: Optional[Metadata], num_classes: int) -> Metadata:
    """Class names and RGB colours for every contiguous class id in [0, num_classes), as a Metadata that
    detectron2's (Video)Visualizer can index with any id, for any task: thing_classes == stuff_classes ==
    all names. Names and colours come from the dataset metadata (Mask2Former lists all classes in
    stuff_classes; an instance dataset lists them in thing_classes); missing ones become "class <id>" and a
    fixed palette colour."""
    def per_class(keys):
        # a list of exactly num_classes first: Cityscapes instance models predict its 8 thing_classes, while
        # its metadata also lists the 19 semantic classes in stuff_classes
        found = [metadata.get(key, None) if metadata is not None else None for key in keys]
        for values in sorted((v for v in found if v is not None and len(v) >= num_classes),
                             key=lambda v: len(v) != num_classes):
            return list(values)[:num_classes]
        return None

    names = per_class(["stuff_classes", "thing_classes"]) or [
        _partial(metadata, "thing_classes", i) or f"class {i}" for i in range(num_classes)]
    palette = colormap(rgb=True, maximum=255).astype(int).tolist()
    colors = per_class(["stuff_colors", "thing_colors"]) or [
        _partial(metadata, "thing_colors", i) or palette[i % len(palette)] for i in range(num_classes)]
    fields = dict(thing_classes=names, stuff_classes=names, thing_colors=colors, stuff_colors=colors)
    for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id", "label_divisor"):
        if metadata is not None and metadata.get(key, None) is not None:
            fields[key] = metadata.get(key)
    return Metadata(name=(metadata.name if metadata is not None else "demo") + "_display", **fields)


def _partial(metadata, key, i):
    values = metadata.get(key, None) if metadata is not None else None
    return values[i] if values is not None and i < len(values) else None


class VisualizationDemo:
    """A Mask2Former image model with its test-time resize, dataset metadata and drawing.

    Args:
        cfg: a config with MODEL.WEIGHTS pointing to a checkpoint of the model it describes.
        task: "panoptic", "instance" or "semantic": what to draw (the model must produce it).
        confidence_threshold: instances scoring below it are dropped (drawn and saved alike).
        side_by_side: pictures and frames show the input on the left, the prediction on the right.
    """

    def __init__(self, cfg, task: str, confidence_threshold: float = 0.5, side_by_side: bool = False,
                 train_hint: str = "", max_side: int = DEFAULT_MAX_SIDE):
        if task not in TASKS:
            raise DemoError(f"unknown task {task!r}; expected one of {TASKS}")
        self.cfg = cfg.clone()
        self.task = task
        self.confidence_threshold = confidence_threshold
        self.side_by_side = side_by_side
        try:
            self.model = build_model(self.cfg)
        except (ValueError, KeyError, AssertionError) as e:
            raise DemoError(f"cannot build the model from the config: {e}") from e
        self.model.eval()
        load_weights(self.model, self.cfg.MODEL.WEIGHTS, train_hint)
        self.metadata = display_metadata(dataset_metadata(self.cfg), self.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        self.max_side = max_side
        self._warned_size = False

    def limit_size(self, image: np.ndarray) -> np.ndarray:
        """
        Shrink an image whose longer side exceeds ``max_side`` (keeping its aspect ratio) before anything else:
        the predictions are made at the input's size (one float map per query or class of H x W pixels), so
        this bounds memory (docs/RELIABILITY.md, "Large inputs"); 0 = no limit.
        """
        h, w = image.shape[:2]
        if self.max_side <= 0 or max(h, w) <= self.max_side:
            return image
        scale = self.max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if not self._warned_size:
            logger.warning(f"input of {w}x{h} pixels shrunk to {size[0]}x{size[1]} (longer side at most "
                           f"--max-size {self.max_side}, which bounds memory; outputs are at this size)")
            self._warned_size = True
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def _model_input_size(self, h: int, w: int) -> Tuple[int, int]:
        """detectron2's ResizeShortestEdge size, but never 0 pixels (a 1 x 10000 image stays 1 pixel high)."""
        size, max_size = self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST
        scale = size * 1.0 / min(h, w)
        newh, neww = (size, scale * w) if h < w else (scale * h, size)
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh, neww = newh * scale, neww * scale
        return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> Dict:
        """BGR uint8 (H, W, 3) -> the model's outputs for it, on the CPU, at (H, W); instances below the
        confidence threshold removed."""
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(height, width) < 1:
            raise DemoError(f"expected a uint8 (H, W, 3) image with H, W >= 1, got {image.dtype} {image.shape}")
        resized = T.ResizeTransform(height, width, *self._model_input_size(height, width)).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        out = self.model([{"image": tensor, "height": height, "width": width}])[0]
        result = {}
        if "sem_seg" in out:
            result["sem_seg"] = out["sem_seg"].cpu()
        if "panoptic_seg" in out:
            seg, info = out["panoptic_seg"]
            result["panoptic_seg"] = (seg.cpu(), info)
        if "instances" in out:
            instances = out["instances"].to("cpu")
            result["instances"] = instances[instances.scores >= self.confidence_threshold]
        if OUTPUT_KEY[self.task] not in result:
            raise DemoError(f"the model produced no {OUTPUT_KEY[self.task]!r} output for task {self.task!r}")
        return result

    def draw(self, image: np.ndarray, predictions: Dict, video_visualizer: Optional[VideoVisualizer] = None
             ) -> np.ndarray:
        """BGR input + predictions -> RGB uint8 drawing of the task (input | drawing when side_by_side).

        With a VideoVisualizer, instance colours follow the objects from frame to frame."""
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        if video_visualizer is not None:
            vis = video_visualizer
            if self.task == "panoptic":
                out = vis.draw_panoptic_seg_predictions(rgb, *predictions["panoptic_seg"])
            elif self.task == "instance":
                out = vis.draw_instance_predictions(rgb, predictions["instances"])
            else:
                out = vis.draw_sem_seg(rgb, predictions["sem_seg"].argmax(dim=0))
        else:
            vis = Visualizer(rgb, self.metadata, instance_mode=ColorMode.SEGMENTATION)
            if self.task == "panoptic":
                out = vis.draw_panoptic_seg(*predictions["panoptic_seg"])
            elif self.task == "instance":
                out = vis.draw_instance_predictions(predictions["instances"])
            else:
                out = vis.draw_sem_seg(predictions["sem_seg"].argmax(dim=0))
        drawing = out.get_image()
        if drawing.shape[:2] != rgb.shape[:2]:
            drawing = cv2.resize(drawing, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_AREA)
        return np.concatenate([rgb, drawing], axis=1) if self.side_by_side else drawing

    def run_on_image(self, image: np.ndarray) -> Tuple[Dict, np.ndarray]:
        """BGR uint8 (H, W, 3) -> (predictions, RGB drawing)."""
        image = self.limit_size(image)
        predictions = self.predict(image)
        return predictions, self.draw(image, predictions)

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[np.ndarray]:
        """Yield the annotated BGR frames of an opened capture, reading one frame at a time; a video that stops
        decoding raises :class:`FrameDecodeError` after its decoded frames (:func:`read_video_frames`)."""
        visualizer = VideoVisualizer(self.metadata, ColorMode.IMAGE)
        for frame in read_video_frames(video):
            frame = self.limit_size(frame)
            drawing = self.draw(frame, self.predict(frame), visualizer)
            yield np.ascontiguousarray(drawing[:, :, ::-1])
