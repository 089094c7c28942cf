#!/usr/bin/env python
"""
CPU latency of the exported graph in onnxruntime against the same network in PyTorch, side by side:

    python tools/benchmark_onnx.py --config-file CFG [--height 512 --width 640 --threads 2 --repeats 5] [KEY VALUE ...]

Both run ExportableMaskFormer (normalise, pad, backbone, pixel decoder, transformer decoder; no post-processing)
on the same random image with the same number of threads; prints the median seconds and the ratio. Without
MODEL.WEIGHTS the weights are random (latency does not depend on them). Results: docs/PERFORMANCE.md, "ONNX".
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from export_model import build_exported_model  # noqa: E402
from mask2former.export import ExportableMaskFormer, export_onnx  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    model = build_exported_model(args)
    wrapper = ExportableMaskFormer(model).eval()
    image = torch.rand(1, 3, args.height, args.width) * 255
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        export_onnx(model, path, args.height, args.width)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {"image": image.numpy()}
        with torch.no_grad():
            t_torch = median_seconds(lambda: wrapper(image), args.repeats)
        t_ort = median_seconds(lambda: session.run(None, feed), args.repeats)
    print(f"{os.path.relpath(args.config_file)} {args.height}x{args.width}, {args.threads} threads, "
          f"median of {args.repeats}; torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(f"PyTorch      {t_torch:.3f} s")
    print(f"onnxruntime  {t_ort:.3f} s   ({t_torch / t_ort:.2f}x PyTorch's speed)")


if __name__ == "__main__":
    main()
