#!/usr/bin/env python
"""Benchmark backbones side by side: DAT-T vs Swin-T (official architectures, random weights), batch 1.

For each image size and backbone: forward latency (eval, no grad), forward + backward latency (train mode,
loss = sum of the res2..res5 outputs), the median of ``--repeats`` runs after ``--warmup`` untimed ones,
all backbones in one process with their runs interleaved (A, B, A, B, ...), so that a change of the
machine's load during the measurement hits every backbone alike; peak extra memory
of one forward and of one forward + backward (each in a fresh subprocess: peak RSS minus RSS before the call
on the CPU, read from ``/proc/self/status`` VmHWM after resetting it, since ``ru_maxrss`` would include the
parent's peak; ``torch.cuda.max_memory_allocated`` minus allocated before on a GPU); and fvcore's FLOP count of
the forward (fvcore counts one multiply-add as one flop; ``grid_sample`` is counted as 4 multiply-adds per
output value, bilinear; softmax, normalisation and element-wise ops are not counted, for either backbone).

    python tools/benchmark_backbones.py [--device cpu|cuda] [--threads N] [--repeats R] [--sizes 512x512 800x1216]
    python tools/benchmark_backbones.py --backbones dat_tiny swin_tiny r18 --sizes 192x192   # shapes-world scale
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (config file or None, config overrides)
BACKBONES = {
    "dat_tiny": (None, ["MODEL.BACKBONE.NAME", "D2DAT"]),  # MODEL.DAT defaults are DAT-T
    "swin_tiny": (None, ["MODEL.BACKBONE.NAME", "D2SwinTransformer"]),  # MODEL.SWIN defaults are Swin-T
    "r18": ("configs/shapes_world/maskformer2_R18_panoptic.yaml", []),
    "dat_shapes_world": ("configs/shapes_world/dat/maskformer2_dat_panoptic.yaml", []),
}


def build_backbone(name: str):
    import mask2former  # noqa: F401  (first: registers the backbones and quiets detectron2's import warnings)
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone as d2_build_backbone
    from mask2former import add_maskformer2_config

    config_file, overrides = BACKBONES[name]
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    if config_file:
        cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), config_file))
    cfg.merge_from_list(overrides)
    torch.manual_seed(0)
    return d2_build_backbone(cfg)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes():
    """Peak RSS of this process since the last :func:`reset_peak_rss` (Linux VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory needs Linux")


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def run_once(model, x, backward):
    if backward:
        out = model(x)
        sum(o.sum() for o in out.values()).backward()
    else:
        with torch.no_grad():
            model(x)


def measure(args):
    """Runs in a child process: one size, one mode; memory: one backbone; time: all, interleaved."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    x = torch.randn(1, 3, h, w, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.mode == "time":
        names = args.backbone.split(",")
        models = {name: build_backbone(name).to(device) for name in names}
        runs = {(name, backward): [] for name in names for backward in (False, True)}
        for backward in (False, True):
            for model in models.values():
                model.train(backward)
            for i in range(args.repeats + args.warmup):
                for name, model in models.items():
                    model.zero_grad(set_to_none=True)
                    sync()
                    start = time.perf_counter()
                    run_once(model, x, backward)
                    sync()
                    if i >= args.warmup:
                        runs[(name, backward)].append(time.perf_counter() - start)
        median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        return {name: {"fwd_s": median(runs[(name, False)]), "fwd_bwd_s": median(runs[(name, True)])} for name in names}
    model = build_backbone(args.backbone).to(device)
    if args.mode == "memory":
        model.train(args.backward)
        if device.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run_once(model, x, args.backward)
            sync()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            reset_peak_rss()
            before = rss_bytes()
            run_once(model, x, args.backward)
            peak = peak_rss_bytes() - before
        return {"peak_mb": peak / 2**20}
    raise ValueError(f"unknown mode {args.mode}")


def grid_sample_flop(inputs, outputs):
    """Bilinear grid_sample: 4 multiply-adds per output value."""
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(outputs[0])
    n = 1
    for s in shape:
        n *= s
    return 4 * n


def flops(name, size, device):
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        raise SystemExit("fvcore is needed for the FLOP count: pip install fvcore")
    h, w = (int(v) for v in size.split("x"))
    model = build_backbone(name).to(device).eval()
    x = torch.randn(1, 3, h, w, device=device)
    analysis = FlopCountAnalysis(model, x).set_op_handle("aten::grid_sampler", grid_sample_flop)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        total = analysis.total()
    return total / 1e9, sorted(analysis.unsupported_ops())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    parser.add_argument("--sizes", nargs="+", default=["512x512", "800x1216"], help="HxW")
    parser.add_argument("--backbones", nargs="+", default=["dat_tiny", "swin_tiny"], choices=sorted(BACKBONES))
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backbone:  # child process
        print(json.dumps(measure(args)))
        return
    for size in args.sizes:
        if len(size.split("x")) != 2 or not all(v.isdigit() for v in size.split("x")):
            raise SystemExit(f"--sizes: {size!r} is not HxW, e.g. 800x1216")

    torch.set_num_threads(args.threads)
    print(f"backbone benchmark: device={args.device} threads={args.threads} batch=1 repeats={args.repeats} "
          f"warmup={args.warmup} torch={torch.__version__}")
    base = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--threads", str(args.threads),
            "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    def child(extra):
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(extra)}: the measurement failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.splitlines()[-1])

    results = {}
    for size in args.sizes:
        times = child(["--backbone", ",".join(args.backbones), "--size", size, "--mode", "time"])
        for name in args.backbones:
            r = dict(times[name])
            for backward in (False, True):
                out = child(["--backbone", name, "--size", size, "--mode", "memory"] + (["--backward"] if backward else []))
                r["peak_mb_fwd_bwd" if backward else "peak_mb_fwd"] = out["peak_mb"]
            if not args.no_flops:
                r["gflops"], r["unsupported"] = flops(name, size, args.device)
            results[(size, name)] = r
            print(f"  measured {name} at {size}", flush=True)

    print(f"{'size':>9s} {'backbone':12s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'peak MB fwd':>12s} "
          f"{'peak MB fwd+bwd':>16s} {'GFLOPs':>8s}")
    for (size, name), r in results.items():
        g = f"{r['gflops']:8.1f}" if "gflops" in r else f"{'-':>8s}"
        print(f"{size:>9s} {name:12s} {r['fwd_s'] * 1e3:9.0f} {r['fwd_bwd_s'] * 1e3:11.0f} {r['peak_mb_fwd']:12.0f} "
              f"{r['peak_mb_fwd_bwd']:16.0f} {g}")
    first = args.backbones[0]
    for size in args.sizes:
        a = results[(size, first)]
        for name in args.backbones[1:]:
            b = results[(size, name)]
            line = (f"{size}: {first}/{name}: fwd time {a['fwd_s'] / b['fwd_s']:.2f}, fwd+bwd time "
                    f"{a['fwd_bwd_s'] / b['fwd_bwd_s']:.2f}, "
                    f"peak memory fwd {a['peak_mb_fwd'] / max(b['peak_mb_fwd'], 1e-9):.2f}, "
                    f"fwd+bwd {a['peak_mb_fwd_bwd'] / max(b['peak_mb_fwd_bwd'], 1e-9):.2f}")
            if "gflops" in a:
                line += f", FLOPs {a['gflops'] / b['gflops']:.2f}"
            print(line)
    skipped = sorted({op for r in results.values() for op in r.get("unsupported", [])})
    if skipped:
        print("ops fvcore does not count (in any of the backbones above): " + ", ".join(skipped))


if __name__ == "__main__":
    main()
