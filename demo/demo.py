#!/usr/bin/env python
"""
Run a trained Mask2Former image model on pictures, a video or a webcam, and draw or save what it predicts.

    python demo/demo.py --input photos/*.jpg --output out/ [--task panoptic|instance|semantic] [--save-raw]
    python demo/demo.py --input photo.jpg --output out/ --explain
    python demo/demo.py --video-input clip.mp4 --output out/clip.mp4
    python demo/demo.py --webcam
    ... [--config-file CONFIG.yaml] [--opts KEY VALUE ...]

With no --config-file it runs the model that ``python train_net.py --config-file
configs/shapes_world/maskformer2_R18_panoptic.yaml`` trains; MODEL.WEIGHTS defaults to OUTPUT_DIR/model_final.pth
of the config. A CUDA device in the config falls back to the CPU when no GPU is present.

Raw outputs (--save-raw), next to each picture ``NAME.ext``, for other programs:
    NAME_sem_seg.png     uint8 (uint16 beyond 256 classes) per-pixel class id (argmax of the semantic scores)
    NAME_panoptic.png    RGB segment ids, id = R + 256 G + 256^2 B (COCO panoptic), 0 = no segment
    NAME_panoptic.json   {"image", "file_name", "height", "width", "segments_info": [{"id", "category_id",
                         "category_name", "isthing", "area", "bbox" (XYWH)[, "dataset_category_id"]}]}
    NAME_instances.json  {"image", "height", "width", "instances": [{"category_id", "category_name", "score",
                         "bbox" (XYWH), "area", "segmentation" (COCO RLE: {"size": [h, w], "counts"})
                         [, "dataset_category_id"]}]}  (instances scoring >= --confidence-threshold)
``category_id`` is the model's contiguous class id (index into the dataset's class list). Only the outputs the
model produces (MODEL.MASK_FORMER.TEST.*_ON, plus the one --task needs) are written.

Exit status: 0 when every input was processed, 1 when some inputs could not be read (they are listed; the
others are processed), 2 for errors that stop the demo (config, checkpoint, video, webcam, output).
"""
import argparse
import glob
import json
import logging
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script: make the `demo` package importable
    sys.path.insert(0, REPO_ROOT)

from mask2former import add_maskformer2_config, add_maskformer2_video_config  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402  (after mask2former, which imports detectron2 quietly)
from mask2former.data.dataset_mappers.checks import read_image  # noqa: E402
from mask2former.data.datasets.register_folder import register_from_config  # noqa: E402
from mask2former.utils.cpu_memory import keep_freed_cpu_memory  # noqa: E402

from demo.explain import DecoderRecorder, explain, render_grid  # noqa: E402
from demo.predictor import DEFAULT_MAX_SIDE, TASKS, DemoError, VisualizationDemo  # noqa: E402

DEFAULT_CONFIG = os.path.join("configs", "shapes_world", "maskformer2_R18_panoptic.yaml")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
WINDOW = "Mask2Former"

logger = logging.getLogger("demo")


class _StderrHandler(logging.StreamHandler):
    """Writes each record to the sys.stderr of the moment (so redirection and test capture work)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging() -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s demo] %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _resolve_config(path: str) -> str:
    """Config paths are taken as given, else relative to the repository root (so the default works anywhere)."""
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    in_repo = os.path.join(REPO_ROOT, path)
    return in_repo if os.path.isfile(in_repo) else path


def _default_weights(cfg) -> str:
    return os.path.join(cfg.OUTPUT_DIR, "model_final.pth")


def _base_config():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    return cfg


def _default_weights_help() -> str:
    try:
        cfg = _base_config()
        cfg.merge_from_file(_resolve_config(DEFAULT_CONFIG))
        return os.path.normpath(_default_weights(cfg))
    except Exception:  # the help must print even with a broken default config
        return "OUTPUT_DIR/model_final.pth"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Mask2Former demo: semantic, instance and panoptic segmentation of pictures and videos.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"Default model: --config-file {DEFAULT_CONFIG}\nwith the weights {_default_weights_help()}\n"
            "(MODEL.WEIGHTS of the config, else its OUTPUT_DIR/model_final.pth), which\n"
            f"  python train_net.py --config-file {DEFAULT_CONFIG}\n"
            "writes when run from the repository root. Other weights: --opts MODEL.WEIGHTS /path/to/model.pth\n\n"
            + __doc__[__doc__.index("Raw outputs"):]),
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"model config (default: {DEFAULT_CONFIG})")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH",
                        help="image files or glob patterns (quoted), several allowed, e.g. 'photos/*.jpg'")
    source.add_argument("--video-input", metavar="FILE", help="a video file (read with OpenCV)")
    source.add_argument("--webcam", nargs="?", type=int, const=0, metavar="INDEX",
                        help="use the webcam (OpenCV device INDEX, default 0)")
    parser.add_argument("--output", metavar="PATH",
                        help="a folder (created if needed), or a file name for one image or a video "
                             f"(video: {', '.join(VIDEO_FOURCC)}). Without it, results are shown in a window.")
    parser.add_argument("--task", choices=TASKS,
                        help="what to draw; default: what the config enables, panoptic > instance > semantic")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of the instances drawn and saved (instance task; default 0.5)")
    parser.add_argument("--side-by-side", action="store_true", help="show the input left of the prediction")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIDE, metavar="PIXELS",
                        help="shrink pictures and frames whose longer side is larger to this first, which bounds "
                             f"memory (default {DEFAULT_MAX_SIDE}; 0: no limit)")
    parser.add_argument("--save-raw", action="store_true",
                        help="also write the raw predictions next to each picture (label PNG, panoptic PNG + "
                             "JSON, instance RLE JSON; formats below)")
    parser.add_argument("--explain", action="store_true",
                        help="for one image: also draw the top queries' masks after each decoder layer and the "
                             "masked-attention region each layer used (NAME_explain.png)")
    parser.add_argument("--explain-queries", type=int, default=5, metavar="N",
                        help="number of queries (rows) in the --explain grid (default 5)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config changes as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cpu")
    return parser


def setup_cfg(args) -> Tuple[object, str, str]:
    """-> (frozen config, task, hint on how to get weights)."""
    config_file = _resolve_config(args.config_file)
    if not os.path.isfile(config_file):
        raise DemoError(f"config file not found: {args.config_file}")
    cfg = _base_config()
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(args.opts)
    except Exception as e:
        flags = [o for o in args.opts if str(o).startswith("--")]
        hint = f" (--opts takes everything after it: put {flags[0]} before --opts)" if flags else ""
        raise DemoError(f"cannot use config {args.config_file} with the --opts given{hint}: "
                        f"{type(e).__name__}: {e}") from e
    if cfg.MODEL.META_ARCHITECTURE != "MaskFormer":
        raise DemoError(f"{args.config_file}: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; this demo "
                        "runs the image model 'MaskFormer' (videos are processed frame by frame)")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.info(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no GPU is available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    default_weights = not cfg.MODEL.WEIGHTS
    if default_weights:
        cfg.MODEL.WEIGHTS = _default_weights(cfg)
    hint = (f"Train it first with `python train_net.py --config-file {args.config_file}` (from the repository "
            f"root; it writes {_default_weights(cfg)}), or pass trained weights with "
            "--opts MODEL.WEIGHTS /path/to/model_final.pth.")
    if not default_weights:
        hint = "Pass an existing checkpoint with --opts MODEL.WEIGHTS /path/to/model_final.pth. " + hint

    test = cfg.MODEL.MASK_FORMER.TEST
    flags = {"panoptic": "PANOPTIC_ON", "instance": "INSTANCE_ON", "semantic": "SEMANTIC_ON"}
    task = args.task or next((t for t in TASKS if test[flags[t]]), None)
    if task is None:
        raise DemoError(f"{args.config_file} enables no output (MODEL.MASK_FORMER.TEST.*_ON); choose one with --task")
    if not test[flags[task]]:
        logger.info(f"--task {task}: turning on MODEL.MASK_FORMER.TEST.{flags[task]}")
        test[flags[task]] = True
    cfg.freeze()
    try:
        register_from_config(cfg)  # DATASETS.REGISTER: the class names of a custom folder
    except (OSError, ValueError) as e:
        raise DemoError(str(e)) from e
    return cfg, task, hint


# ----------------------------------------------------------------------------------------------------------
# Inputs and outputs
# ----------------------------------------------------------------------------------------------------------
def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """File names and glob patterns -> (files in order, [(name, problem)] for patterns matching nothing)."""
    files, problems = [], []
    for p in patterns:
        if glob.has_magic(p):
            matches = sorted(glob.glob(os.path.expanduser(p), recursive=True))
            matches = [m for m in matches if os.path.isfile(m)]
            if not matches:
                problems.append((p, "no file matches this pattern"))
            files.extend(matches)
        else:
            files.append(p)
    return files, problems


def image_output_paths(inputs: Sequence[str], output: str) -> List[str]:
    """Where each picture goes: ``output`` itself for one input and an output with an image extension,
    else ``output/<input file name>`` (made unique; .png added to names OpenCV cannot write)."""
    ext = os.path.splitext(output)[1].lower()
    if len(inputs) == 1 and ext and not os.path.isdir(output):
        if ext not in IMAGE_EXTS:
            raise DemoError(f"--output {output}: unsupported picture type {ext!r}; use one of {IMAGE_EXTS} or a folder")
        return [output]
    if ext in IMAGE_EXTS and not os.path.isdir(output):
        raise DemoError(f"--output {output} is a file name but there are {len(inputs)} inputs: give a folder")
    paths, used = [], set()
    for path in inputs:
        stem, ext = os.path.splitext(os.path.basename(path))
        ext = ext if ext.lower() in IMAGE_EXTS else ext + ".png"
        name, k = stem + ext, 1
        while name in used:
            k += 1
            name = f"{stem}-{k}{ext}"
        used.add(name)
        paths.append(os.path.join(output, name))
    return paths


def _write_image(path: str, rgb_or_gray: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image = rgb_or_gray[:, :, ::-1] if rgb_or_gray.ndim == 3 else rgb_or_gray
    try:
        ok = cv2.imwrite(path, np.ascontiguousarray(image))
    except cv2.error as e:
        raise DemoError(f"cannot write {path}: {e}") from e
    if not ok:
        raise DemoError(f"cannot write {path} (folder not writable, or a type OpenCV cannot encode)")


def _show(rgb: np.ndarray, wait_ms: int) -> bool:
    """Show a picture in a window; False when the user pressed Esc."""
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        cv2.imshow(WINDOW, np.ascontiguousarray(rgb[:, :, ::-1]))
        return cv2.waitKey(wait_ms) != 27
    except cv2.error as e:
        raise DemoError("cannot open a window to show the results (OpenCV without GUI support, or no display); "
                        "pass --output FOLDER to write files instead") from e


def _xywh(mask: np.ndarray) -> List[float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _dataset_ids(metadata, isthing: bool) -> Dict[int, int]:
    """contiguous id -> dataset id, from the metadata's maps (empty when it has none)."""
    key = "thing_dataset_id_to_contiguous_id" if isthing else "stuff_dataset_id_to_contiguous_id"
    mapping = metadata.get(key, None) or {}
    return {int(c): int(d) for d, c in mapping.items()}


def _category(metadata, class_id: int, isthing: bool) -> Dict:
    names = metadata.stuff_classes
    entry = {"category_id": int(class_id),
             "category_name": names[class_id] if class_id < len(names) else f"class {class_id}"}
    dataset_id = _dataset_ids(metadata, isthing).get(int(class_id))
    if dataset_id is None:
        dataset_id = _dataset_ids(metadata, not isthing).get(int(class_id))
    if dataset_id is not None:
        entry["dataset_category_id"] = dataset_id
    return entry


def save_raw(predictions: Dict, base: str, metadata, image_name: str) -> List[str]:
    """Write the raw predictions as ``base``_sem_seg.png / _panoptic.png + .json / _instances.json."""
    written = []
    if "sem_seg" in predictions:
        num_classes = predictions["sem_seg"].shape[0]
        labels = predictions["sem_seg"].argmax(dim=0).numpy()
        path = base + "_sem_seg.png"
        _write_image(path, labels.astype(np.uint8 if num_classes <= 256 else np.uint16))
        written.append(path)
    if "panoptic_seg" in predictions:
        seg, segments = predictions["panoptic_seg"]
        seg = seg.numpy().astype(np.int64)
        rgb = np.stack([seg % 256, seg // 256 % 256, seg // 256**2 % 256], axis=-1).astype(np.uint8)
        png = base + "_panoptic.png"
        _write_image(png, rgb)
        infos = []
        for s in segments:
            mask = seg == s["id"]
            infos.append({"id": int(s["id"]), **_category(metadata, s["category_id"], bool(s["isthing"])),
                          "isthing": bool(s["isthing"]), "area": int(mask.sum()), "bbox": _xywh(mask)})
        path = base + "_panoptic.json"
        with open(path, "w") as f:
            json.dump({"image": image_name, "file_name": os.path.basename(png), "height": seg.shape[0],
                       "width": seg.shape[1], "segments_info": infos}, f, indent=1)
        written += [png, path]
    if "instances" in predictions:
        inst = predictions["instances"]
        masks = inst.pred_masks.numpy().astype(np.uint8)
        entries = []
        for i in range(len(inst)):
            rle = mask_util.encode(np.asfortranarray(masks[i]))
            x0, y0, x1, y1 = inst.pred_boxes.tensor[i].tolist()
            entries.append({**_category(metadata, int(inst.pred_classes[i]), True), "score": float(inst.scores[i]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(masks[i].sum()),
                            "segmentation": {"size": [int(v) for v in rle["size"]],
                                             "counts": rle["counts"].decode("ascii")}})
        path = base + "_instances.json"
        h, w = inst.image_size
        with open(path, "w") as f:
            json.dump({"image": image_name, "height": int(h), "width": int(w), "instances": entries}, f, indent=1)
        written.append(path)
    return written


def _describe(predictions: Dict, task: str) -> str:
    if task == "panoptic":
        n, what = len(predictions["panoptic_seg"][1]), "segment"
    elif task == "instance":
        n, what = len(predictions["instances"]), "instance"
    else:
        n, what = len(torch.unique(predictions["sem_seg"].argmax(dim=0))), "class"
    return f"{n} {what}" + ("" if n == 1 else "es" if what == "class" else "s")


def _timing(times: List[float], unit: str) -> str:
    count = f"{len(times)} {unit}" + ("" if len(times) == 1 else "s")
    return (f"{count} in {sum(times):.2f} s: mean {statistics.mean(times):.3f} s/{unit}, "
            f"median {statistics.median(times):.3f} s/{unit}")


# ----------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------
def run_images(demo: VisualizationDemo, args) -> int:
    files, failures = expand_inputs(args.input)
    total = len(files) + len(failures)  # failures: so far the patterns that matched nothing
    if args.explain and total != 1:
        raise DemoError(f"--explain explains one image; --input gave {total} inputs")
    for pattern, why in failures:
        logger.error(f"--input {pattern}: {why}")
    outputs = image_output_paths(files, args.output) if args.output else [None] * len(files)
    times = []
    with logging_redirect_tqdm([logger]):
        for path, out in tqdm(list(zip(files, outputs)), unit="image", desc="images"):
            start = time.perf_counter()
            try:
                image = read_image(path, "BGR")  # EXIF orientation applied, 16-bit scaled, errors named
            except Exception as e:  # missing, not an image, truncated, ...
                logger.error(f"cannot read image {path}: {type(e).__name__}: {e}")
                failures.append((path, f"{type(e).__name__}: {e}"))
                continue
            image = demo.limit_size(image)
            recorder = DecoderRecorder(demo.model) if args.explain else None
            if recorder is not None:
                with recorder:
                    predictions, drawing = demo.run_on_image(image)
            else:
                predictions, drawing = demo.run_on_image(image)
            written = []
            if out is not None:
                _write_image(out, drawing)
                written.append(out)
                if args.save_raw:
                    written += save_raw(predictions, os.path.splitext(out)[0], demo.metadata, path)
            if recorder is not None:
                grid = render_grid(image[:, :, ::-1], explain(recorder, demo.metadata.stuff_classes,
                                                              args.explain_queries), demo.metadata.stuff_colors)
                if out is not None:
                    written.append(os.path.splitext(out)[0] + "_explain.png")
                    _write_image(written[-1], grid)
            times.append(time.perf_counter() - start)
            logger.info(f"{path}: {_describe(predictions, demo.task)} in {times[-1]:.2f} s"
                        + (f" -> {', '.join(written)}" if written else ""))
            if out is None:
                if not _show(drawing, 0) or (recorder is not None and not _show(grid, 0)):
                    break
    if times:
        logger.info("Done: " + _timing(times, "image"))
    if failures:
        listing = "; ".join(f"{name} ({why})" for name, why in failures)
        logger.error(f"{len(failures)} of {total} inputs could not be processed: {listing}")
        return 1
    return 0


def video_output_path(source_name: str, output: str) -> str:
    ext = os.path.splitext(output)[1].lower()
    if ext and not os.path.isdir(output):
        if ext not in VIDEO_FOURCC:
            raise DemoError(f"--output {output}: unsupported video type {ext!r}; use one of {tuple(VIDEO_FOURCC)}")
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(source_name))[0] + ".mp4")


def _stream(demo: VisualizationDemo, capture: cv2.VideoCapture, name: str, output: Optional[str]) -> List[float]:
    """Annotate the frames of an opened capture into a video file (same fps and frame size) or a window."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps or not np.isfinite(fps) or fps <= 0:
        logger.warning(f"{name}: no frame rate known, writing 30 frames per second")
        fps = 30.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    writer, times = None, []
    try:
        with logging_redirect_tqdm([logger]):
            last = time.perf_counter()
            for frame in tqdm(demo.run_on_video(capture), total=count if count > 0 else None, unit="frame",
                              desc="frames"):
                if output is None:
                    keep_going = _show(frame[:, :, ::-1], 1)
                else:
                    if writer is None:
                        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
                        fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[os.path.splitext(output)[1].lower()])
                        writer = cv2.VideoWriter(output, fourcc, fps, (frame.shape[1], frame.shape[0]), True)
                        if not writer.isOpened():
                            raise DemoError(f"cannot write the video {output} (folder not writable, or codec "
                                            "missing in this OpenCV build)")
                    writer.write(frame)
                    keep_going = True
                now = time.perf_counter()
                times.append(now - last)
                last = now
                if not keep_going:
                    break
    except KeyboardInterrupt:
        logger.info("interrupted")
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return times


def run_video(demo: VisualizationDemo, args) -> int:
    path = args.video_input
    if not os.path.isfile(path):
        raise DemoError(f"video not found: {path}")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DemoError(f"cannot open video {path}: OpenCV cannot read it (damaged file, or not a video)")
    output = video_output_path(path, args.output) if args.output else None
    times = _stream(demo, capture, path, output)
    if not times:
        raise DemoError(f"cannot read any frame of video {path} (empty or damaged file)")
    logger.info(f"Done: {_timing(times, 'frame')}" + (f" -> {output}" if output else ""))
    return 0


def run_webcam(demo: VisualizationDemo, args) -> int:
    capture = cv2.VideoCapture(args.webcam)
    if not capture.isOpened():
        raise DemoError(f"no webcam: cannot open camera {args.webcam} (none connected, or no permission); "
                        "choose another with --webcam INDEX")
    output = video_output_path("webcam", args.output) if args.output else None
    logger.info("reading the webcam" + (f" into {output}; Ctrl-C stops" if output else "; Esc stops"))
    times = _stream(demo, capture, f"camera {args.webcam}", output)
    if not times:
        raise DemoError(f"camera {args.webcam} opened but gave no frame")
    logger.info(f"Done: {_timing(times, 'frame')}" + (f" -> {output}" if output else ""))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    _setup_logging()
    try:
        if (args.save_raw or args.explain) and args.input is None:
            raise DemoError("--save-raw and --explain work on pictures (--input), not on videos or the webcam")
        if args.save_raw and not args.output:
            raise DemoError("--save-raw needs --output (a folder or a picture file name)")
        if args.explain_queries < 1:
            raise DemoError(f"--explain-queries must be at least 1, got {args.explain_queries}")
        cfg, task, hint = setup_cfg(args)
        keep_freed_cpu_memory()
        logger.info(f"task {task}, config {args.config_file}, weights {cfg.MODEL.WEIGHTS}, device {cfg.MODEL.DEVICE}")
        demo = VisualizationDemo(cfg, task, args.confidence_threshold, args.side_by_side, train_hint=hint,
                                 max_side=args.max_size)
        if args.input is not None:
            return run_images(demo, args)
        if args.video_input is not None:
            return run_video(demo, args)
        return run_webcam(demo, args)
    except DemoError as e:
        logger.error(str(e))
        return 2


if __name__ == "__main__":
    sys.exit(main())
