#!/usr/bin/env python
"""
Run a trained Mask2Former video model (VideoMaskFormer) on a video and write the annotated video.

    python demo/video_demo.py --config-file configs/shapes_world/video_maskformer2_R18_instance.yaml \\
        --input clip.mp4 --output out/clip.mp4 [--confidence-threshold 0.5] [--save-json out/clip.json]
    python demo/video_demo.py ... --input frames_folder/ --output out/frames/   (or --input 'frames/*.jpg')

The video is segmented in overlapping clips of --clip-length frames (default MODEL.MASK_FORMER.TEST.CLIP_LENGTH,
else 16) whose instances are associated across clips, so that memory does not grow with the video's length;
it is read twice (segmentation, then drawing), one clip / one frame at a time. Each instance keeps one colour
and one "class score" label over the whole video. --output is a video file (.mp4, .m4v, .mov, .mkv: mp4v;
.avi: MJPG) or a folder that receives one PNG per frame. --save-json writes the predictions in the official
YouTube-VIS results format (video_id 0; per frame a COCO RLE or null).

``run_video_demo(cfg, input, output, ...)`` does the same from Python (e.g. for demo/demo.py).
A video that stops decoding half-way (truncated or damaged file, unreadable frame file) is written up to the
frame before, and the error names the frame.
Exit status: 0 on success, 2 for errors the user must fix (config, checkpoint, input frames, output).
"""
import argparse
import glob
import itertools
import json
import logging
import os
import sys
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script: make the `demo` package importable
    sys.path.insert(0, REPO_ROOT)

from mask2former import add_maskformer2_config, add_maskformer2_video_config  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402  (after mask2former, which imports detectron2 quietly)
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402
from mask2former.evaluation.ytvis_evaluation import video_output_to_results  # noqa: E402

from demo.predictor import (  # noqa: E402
    DemoError,
    FrameDecodeError,
    display_metadata,
    frames_processed,
    load_weights,
    read_video_frames,
)

logger = logging.getLogger("demo.video")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
DEFAULT_CLIP_LENGTH = 16


# ------------------------------------------------------------------------------------------------ input
def frame_files(source: str) -> Optional[List[str]]:
    """The sorted frame files of a folder or glob pattern, or None if ``source`` is a video file."""
    if os.path.isdir(source):
        files = sorted(os.path.join(source, f) for f in os.listdir(source) if f.lower().endswith(IMAGE_EXTS))
        if not files:
            raise DemoError(f"the folder {source} holds no frames ({', '.join(IMAGE_EXTS)})")
        return files
    if any(c in source for c in "*?["):
        files = sorted(glob.glob(source))
        if not files:
            raise DemoError(f"no frame file matches {source}")
        return files
    if not os.path.isfile(source):
        raise DemoError(f"the input {source} does not exist")
    return None


def read_frames(source: str) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield (name, BGR uint8 frame) of a video file, a folder of frames or a glob, checking that every frame
    has the first frame's size (else DemoError naming the file). A frame that cannot be decoded raises
    :class:`FrameDecodeError` naming it, after the frames before it."""
    files = frame_files(source)
    size, count = None, 0
    if files is None:
        video = cv2.VideoCapture(source)
        if not video.isOpened():
            raise DemoError(f"cannot open the video {source}")
        try:
            for frame in read_video_frames(video, source):
                yield f"{source} frame {count}", frame
                count += 1
        finally:
            video.release()
    else:
        for path in files:
            frame = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.isfile(path) else None
            if frame is None:
                raise FrameDecodeError(f"the frame file {path} (frame {count} of {len(files)}) does not exist or "
                                       f"cannot be read as an image; {frames_processed(count)}", count)
            if size is not None and frame.shape[:2] != size:
                raise DemoError(f"the frame file {path} is {frame.shape[1]}x{frame.shape[0]} (width x height) but "
                                f"the video's first frame is {size[1]}x{size[0]}: all frames must have one size")
            size = frame.shape[:2]
            yield path, frame
            count += 1
    if count == 0:
        raise DemoError(f"the video {source} has no frames")


# ------------------------------------------------------------------------------------------------ model
def setup_cfg(config_file: str, opts: List[str]):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def segment_video(model, cfg, source: str, clip_length: int, clip_overlap: int,
                  stopped: Optional[List[FrameDecodeError]] = None) -> dict:
    """VideoMaskFormer.segment_long_video over the frames of ``source`` (resized as at test time). With
    ``stopped`` (a list), a frame that cannot be decoded ends the video there and its error is appended."""
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")

    def frames():  # read_frames checks that every frame has the first frame's size
        try:
            for _, bgr in read_frames(source):
                image = bgr[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else bgr
                image = resize.get_transform(image).apply_image(image)
                yield torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        except FrameDecodeError as e:
            if stopped is None:
                raise
            stopped.append(e)

    # the output size is the input frames' size: peek at the first frame
    _, frame0 = next(iter(read_frames(source)))
    height, width = frame0.shape[:2]
    return model.segment_long_video(frames(), height, width, clip_length, clip_overlap)


def draw_video(source: str, result: dict, metadata, output: str, threshold: float, fps: float) -> int:
    """Write the ``result["length"]`` frames of ``source`` that were segmented, with the instances scoring
    >= ``threshold``; returns the frame count."""
    keep = [i for i, s in enumerate(result["pred_scores"]) if s >= threshold]
    palette = np.random.default_rng(0).uniform(0.2, 1.0, (max(len(keep), 1), 3))
    ext = os.path.splitext(output)[1].lower()
    writer = None
    if ext:
        if ext not in VIDEO_FOURCC:
            raise DemoError(f"--output {output}: unknown video extension {ext}; use one of {list(VIDEO_FOURCC)} "
                            "or a folder")
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    else:
        os.makedirs(output, exist_ok=True)
    count = 0
    try:
        for t, (_, bgr) in enumerate(itertools.islice(read_frames(source), result["length"])):
            drawn = _draw_frame(bgr, t, result, keep, palette, metadata)
            if ext:
                if writer is None:
                    writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*VIDEO_FOURCC[ext]), fps,
                                             (drawn.shape[1], drawn.shape[0]))
                    if not writer.isOpened():
                        raise DemoError(f"cannot write the video {output} (OpenCV has no {VIDEO_FOURCC[ext]} "
                                        "encoder?)")
                writer.write(np.ascontiguousarray(drawn))
            elif not cv2.imwrite(os.path.join(output, f"{t:05d}.png"), drawn):
                raise DemoError(f"cannot write {os.path.join(output, f'{t:05d}.png')}")
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


def _draw_frame(bgr: np.ndarray, t: int, result: dict, keep: List[int], palette: np.ndarray, metadata) -> np.ndarray:
    """Frame ``t`` (BGR) with the masks and labels of the instances ``keep``; BGR."""
    vis = Visualizer(bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    masks, labels, colors = [], [], []
    for j, i in enumerate(keep):
        rle = result["pred_rles"][i][t]
        if rle is None:
            continue
        masks.append(mask_util.decode(rle).astype(bool))
        name = metadata.thing_classes[result["pred_labels"][i]]
        labels.append(f"{name} {result['pred_scores'][i]:.2f}")
        colors.append(palette[j])
    return vis.overlay_instances(masks=masks or None, labels=labels or None,
                                 assigned_colors=colors or None).get_image()[:, :, ::-1]


def run_video_demo(cfg, source: str, output: str, *, confidence_threshold: float = 0.5,
                   clip_length: Optional[int] = None, clip_overlap: Optional[int] = None,
                   save_json: Optional[str] = None, fps: Optional[float] = None) -> dict:
    """Segment the video ``source`` with the model of ``cfg`` and write the annotated video to ``output``.
    Returns the segmentation (``VideoMaskFormer.segment_long_video``'s dict). A video that stops decoding
    half-way is segmented, drawn and saved up to the frame before, then :class:`FrameDecodeError` names
    the frame."""
    if cfg.MODEL.META_ARCHITECTURE != "VideoMaskFormer":
        raise DemoError(f"the config's MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}: this demo needs a "
                        "video model (VideoMaskFormer); use demo/demo.py for image models")
    frame_files(source)  # input errors before the model is built
    model = build_model(cfg).eval()
    load_weights(model, cfg.MODEL.WEIGHTS)
    clip_length = clip_length or cfg.MODEL.MASK_FORMER.TEST.CLIP_LENGTH or DEFAULT_CLIP_LENGTH
    clip_overlap = clip_overlap or cfg.MODEL.MASK_FORMER.TEST.CLIP_OVERLAP
    if not 1 <= clip_overlap < clip_length:
        raise DemoError(f"--clip-overlap must be in [1, --clip-length - 1], got {clip_overlap} with clip length "
                        f"{clip_length}")
    stopped: List[FrameDecodeError] = []
    result = segment_video(model, cfg, source, clip_length, clip_overlap, stopped)
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    metadata = display_metadata(MetadataCatalog.get(names[0]) if names else None, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if fps is None:
        fps = 10.0
        if frame_files(source) is None:
            video = cv2.VideoCapture(source)
            fps = video.get(cv2.CAP_PROP_FPS) or fps
            video.release()
    count = draw_video(source, result, metadata, output, confidence_threshold, fps)
    kept = sum(s >= confidence_threshold for s in result["pred_scores"])
    logger.info(f"{source}: {count} frames, {kept} instances scoring >= {confidence_threshold} drawn into {output}")
    if save_json:
        os.makedirs(os.path.dirname(os.path.abspath(save_json)), exist_ok=True)
        id_map = metadata.get("thing_dataset_id_to_contiguous_id", None)
        inverse = {v: k for k, v in id_map.items()} if id_map else None
        with open(save_json, "w") as f:
            json.dump(video_output_to_results(0, result, inverse), f)
    if stopped:
        raise stopped[0]
    return result


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a VideoMaskFormer config")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="a video file, a folder of frames, or a quoted glob of frame files (sorted by name)")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help=f"annotated video file ({', '.join(VIDEO_FOURCC)}) or a folder for PNG frames")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score drawn (default 0.5)")
    parser.add_argument("--clip-length", type=int, help="frames per clip (default: MODEL.MASK_FORMER.TEST."
                                                        f"CLIP_LENGTH, else {DEFAULT_CLIP_LENGTH})")
    parser.add_argument("--clip-overlap", type=int, help="frames shared by consecutive clips (default: "
                                                         "MODEL.MASK_FORMER.TEST.CLIP_OVERLAP)")
    parser.add_argument("--fps", type=float, help="frame rate of the output video (default: the input's, else 10)")
    parser.add_argument("--save-json", metavar="FILE", help="also write the predictions (YouTube-VIS results format)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(levelname)s %(message)s")
    try:
        cfg = setup_cfg(args.config_file, args.opts)
        run_video_demo(cfg, args.input, args.output, confidence_threshold=args.confidence_threshold,
                       clip_length=args.clip_length, clip_overlap=args.clip_overlap, save_json=args.save_json,
                       fps=args.fps)
    except DemoError as e:
        logger.error(str(e))
        return 2
    except (FileNotFoundError, ValueError, KeyError) as e:  # config file / keys
        logger.error(f"{type(e).__name__}: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
