#!/usr/bin/env python
"""Benchmark multi-scale deformable attention at Mask2Former shapes; prints ratios measured side by side.

Compares the implementations of :func:`mask2former.ops.ms_deform_attn` on the same inputs: "pytorch" (the
pure-PyTorch ``grid_sample`` op, levels accumulated one at a time), the kernel of the device ("cpp" on the CPU,
"triton" on CUDA), and "stacked", the straightforward formulation that samples every level, stacks the samples
and reduces once (the layout of the original PyTorch fallback): forward time, forward+backward time, and peak
extra memory (each variant in a fresh subprocess: peak RSS minus RSS before the call on CPU,
torch.cuda.max_memory_allocated minus allocated before on GPU). Time runs alternate between the variants.

Default shapes: the 1/8, 1/16, 1/32 levels of a 1024x1024 image (128x128 + 64x64 + 32x32 = 21504 tokens),
8 heads x 32 channels, 4 points, one query per token with sampling locations near its own position.

    python tools/benchmark_ms_deform_attn.py [--device cpu|cuda] [--threads N] [--repeats R] [--dtype bfloat16]
    python tools/benchmark_ms_deform_attn.py --size 192 --batch 8 --heads 4   # a shapes-world training batch
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mask2former.ops import ms_deform_attn, ms_deform_attn_pytorch  # noqa: E402


def stacked_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """Baseline: sample all levels, stack (N*M, D, Lq, L, P), multiply by the weights and reduce once."""
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    grids = 2 * sampling_locations - 1
    samples = []
    for lvl, (value_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes.tolist())):
        value_l = value_l.flatten(2).transpose(1, 2).reshape(N * M, D, int(h), int(w))
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1).view(N, M * D, Lq)
    return out.transpose(1, 2).contiguous()


VARIANTS = {
    "pytorch": ms_deform_attn_pytorch,
    "cpp": lambda *args: ms_deform_attn(*args, impl="cpp"),
    "triton": lambda *args: ms_deform_attn(*args, impl="triton"),
    "stacked": stacked_ms_deform_attn,
}


def variants_for(device):
    return ["pytorch", "cpp" if device == "cpu" else "triton", "stacked"]


def make_inputs(args, device):
    g = torch.Generator().manual_seed(0)
    shapes = torch.as_tensor([[args.size // s, args.size // s] for s in (8, 16, 32)], device=device)
    S = int(shapes.prod(1).sum())
    M, D, L, P = args.heads, args.head_dim, len(shapes), args.points
    N = args.batch
    value = torch.randn(N, S, M, D, generator=g).to(device)
    # Each token queries around its own position on every level (as in the encoder): reference points at
    # the pixel centres, offsets of a few pixels.
    refs = []
    for h, w in shapes.tolist():
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        refs.append(torch.stack([xs.flatten() / w, ys.flatten() / h], -1))
    ref = torch.cat(refs).to(device)  # (S, 2)
    offsets = torch.randn(N, S, M, L, P, 2, generator=g).to(device) * 2.0 / shapes.flip(-1)[None, None, None, :, None, :]
    locations = ref[None, :, None, None, None, :] + offsets
    weights = torch.rand(N, S, M, L, P, generator=g).to(device)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, locations, weights


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args):
    """Runs in a child process: time and peak memory of one variant."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    fn = VARIANTS[args.variant]
    if args.dtype != "float32" and args.variant != "stacked":
        dtype = getattr(torch, args.dtype)
        if args.variant == "pytorch":  # as the layer runs it: the op in float32 on upcast values
            fn = lambda v, *rest: ms_deform_attn_pytorch(v.float(), *rest)  # noqa: E731
        else:
            fn = (lambda f: lambda v, *rest: f(v.to(dtype), *rest))(fn)
    value, shapes, locations, weights = make_inputs(args, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    if args.mode == "memory":
        if args.backward:
            for t in (value, locations, weights):
                t.requires_grad_(True)
        if device.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = fn(value, shapes, locations, weights)
            if args.backward:
                out.sum().backward()
            sync()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            before = rss_bytes()
            out = fn(value, shapes, locations, weights)
            if args.backward:
                out.sum().backward()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        return {"peak_extra_mb": peak / 2**20}

    times = {}
    for backward in (False, True):
        for t in (value, locations, weights):
            t.requires_grad_(backward)
        runs = []
        for i in range(args.repeats + 1):  # the first run is a warm-up
            sync()
            start = time.perf_counter()
            out = fn(value, shapes, locations, weights)
            if backward:
                out.sum().backward()
            sync()
            if i:
                runs.append(time.perf_counter() - start)
        times["fwd_bwd_s" if backward else "fwd_s"] = sorted(runs)[len(runs) // 2]
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024, help="image side; levels are size/8, /16, /32")
    parser.add_argument("--batch", type=int, default=1, help="images")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="value dtype for the kernels (the pytorch op runs on float32 copies)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process
        print(json.dumps(measure(args)))
        return

    names = variants_for(args.device)
    # All variants must compute the same thing before their speed is compared.
    small = argparse.Namespace(**{**vars(args), "size": 128})
    inputs = make_inputs(small, torch.device(args.device))
    for name in names[1:]:
        torch.testing.assert_close(VARIANTS[name](*inputs), ms_deform_attn_pytorch(*inputs), atol=1e-5, rtol=1e-5)

    tokens = sum((args.size // s) ** 2 for s in (8, 16, 32))
    print(f"ms_deform_attn benchmark: device={args.device} threads={args.threads} tokens=queries={tokens} "
          f"batch={args.batch} heads={args.heads} head_dim={args.head_dim} levels=3 points={args.points} "
          f"repeats={args.repeats} dtype={args.dtype}")
    base = [sys.executable, os.path.abspath(__file__)] + sys.argv[1:]

    def child(variant, mode, backward=False):
        cmd = base + ["--variant", variant, "--mode", mode] + (["--backward"] if backward else [])
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])

    results = {name: {"fwd_s": [], "fwd_bwd_s": []} for name in names}
    for _ in range(2):  # alternate the variants, so that drift of the machine hits them alike
        for name in names:
            t = child(name, "time")
            results[name]["fwd_s"].append(t["fwd_s"])
            results[name]["fwd_bwd_s"].append(t["fwd_bwd_s"])
    for name in names:
        r = results[name]
        r["fwd_s"], r["fwd_bwd_s"] = min(r["fwd_s"]), min(r["fwd_bwd_s"])
        r["peak_extra_mb_fwd"] = child(name, "memory")["peak_extra_mb"]
        r["peak_extra_mb_fwd_bwd"] = child(name, "memory", backward=True)["peak_extra_mb"]
    print(f"{'variant':10s} {'fwd ms':>10s} {'fwd+bwd ms':>12s} {'peak MB fwd':>12s} {'peak MB fwd+bwd':>16s}")
    for name, r in results.items():
        print(f"{name:10s} {r['fwd_s'] * 1e3:10.1f} {r['fwd_bwd_s'] * 1e3:12.1f} "
              f"{r['peak_extra_mb_fwd']:12.1f} {r['peak_extra_mb_fwd_bwd']:16.1f}")
    b = results["pytorch"]
    for name in names[1:]:
        a = results[name]
        print(f"speed-up pytorch/{name}: fwd {b['fwd_s'] / a['fwd_s']:.2f}x, fwd+bwd {b['fwd_bwd_s'] / a['fwd_bwd_s']:.2f}x; "
              f"peak memory {name}/pytorch: fwd {a['peak_extra_mb_fwd'] / max(b['peak_extra_mb_fwd'], 1e-9):.3f}, "
              f"fwd+bwd {a['peak_extra_mb_fwd_bwd'] / max(b['peak_extra_mb_fwd_bwd'], 1e-9):.3f}")

if __name__ == "__main__":
    main()
