#!/usr/bin/env python
"""
Peak memory of video inference, whole-video versus in overlapping clips, on synthetic videos.

    python tools/benchmark_video_memory.py [--frames 36 1000] [--whole-frames 36 144] [--clip-length 12]
        [--clip-overlap 4] [--height 96 --width 128] [--device cpu]

Every measurement runs in a fresh process (peak RSS, ``resource.getrusage(...).ru_maxrss``, cannot be reset):
it builds a tiny VideoMaskFormer (the shapes world video config shrunk to 32-d features, 10 queries, random
weights: memory does not depend on the values), runs it once on a 2-frame clip (warm-up, so that one-time
allocations count in the baseline), records the peak RSS as the baseline, then segments a synthetic video
(squares moving over noise, frames generated lazily) and reports the peak RSS again. "clips" streams the
frames through ``VideoMaskFormer.segment_long_video``; "whole" gives all frames at once to the model, as
the official inference does (frames included). On CUDA the peak allocated GPU memory is reported too.
Prints a Markdown table (the numbers of docs/PERFORMANCE.md, "Video: long-video memory").
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # runnable from a checkout without installing the package
CONFIG = os.path.join(REPO, "configs", "shapes_world", "video_maskformer2_R18_instance.yaml")
TINY = [
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", "2",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.NHEADS", "2", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10", "MODEL.MASK_FORMER.DEC_LAYERS", "4", "MODEL.WEIGHTS", "",
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def synthetic_frames(num_frames, height, width, seed=0):
    """Lazily generated uint8 (3, H, W) frames: 3 squares moving over noise."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    start = rng.uniform(0, [width, height], (3, 2))
    velocity = rng.uniform(-2, 2, (3, 2))
    for t in range(num_frames):
        frame = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        for k, (x, y) in enumerate(start + velocity * t):
            x, y = int(x) % width, int(y) % height
            frame[y: y + 16, x: x + 16] = (80 * (k + 1), 200, 255 - 60 * k)
        yield torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)))


def child(mode, num_frames, height, width, clip_length, clip_overlap, device):
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from mask2former import add_maskformer2_config, add_maskformer2_video_config

    torch.set_num_threads(1)
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY + ["MODEL.DEVICE", device])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model([{"image": list(synthetic_frames(2, height, width, seed=1))}])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = peak_rss_mb()
    start = time.perf_counter()
    with torch.no_grad():
        if mode == "clips":
            out = model.segment_long_video(synthetic_frames(num_frames, height, width), height, width,
                                           clip_length, clip_overlap)
            length = out["length"]
        else:
            (out,) = model([{"image": list(synthetic_frames(num_frames, height, width))}])
            length = out["pred_masks"][0].shape[0]
    seconds = time.perf_counter() - start
    result = {"mode": mode, "frames": num_frames, "length": length, "baseline_mb": baseline,
              "peak_mb": peak_rss_mb(), "seconds": seconds}
    if device.startswith("cuda"):
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--frames", type=int, nargs="+", default=[36, 1000], help="video lengths, clip inference")
    parser.add_argument("--whole-frames", type=int, nargs="*", default=[36, 144],
                        help="video lengths, whole-video inference (memory grows with the length)")
    parser.add_argument("--clip-length", type=int, default=12)
    parser.add_argument("--clip-overlap", type=int, default=4)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.height, args.width, args.clip_length, args.clip_overlap,
              args.device)
        return
    runs = [("clips", n) for n in args.frames] + [("whole", n) for n in args.whole_frames]
    rows = []
    for mode, n in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, str(n), "--height", str(args.height),
               "--width", str(args.width), "--clip-length", str(args.clip_length), "--clip-overlap",
               str(args.clip_overlap), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"measurement {mode} {n} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"done: {rows[-1]}", file=sys.stderr)
    cuda = any("cuda_peak_mb" in r for r in rows)
    print(f"Video {args.height}x{args.width}, clips of {args.clip_length} frames overlapping by {args.clip_overlap}, "
          f"device {args.device}\n")
    header = "| inference | frames | peak RSS (MiB) | RSS above baseline (MiB) | seconds |"
    print(header + (" CUDA peak (MiB) |" if cuda else ""))
    print("|---|---|---|---|---|" + ("---|" if cuda else ""))
    for r in rows:
        line = (f"| {r['mode']} | {r['frames']} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['baseline_mb']:.0f} | "
                f"{r['seconds']:.1f} |")
        print(line + (f" {r['cuda_peak_mb']:.0f} |" if cuda else ""))


if __name__ == "__main__":
    main()
