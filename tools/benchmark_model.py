#!/usr/bin/env python
"""Full-model inference latency, split into backbone, pixel decoder, transformer decoder and post-processing.

Builds a config (default: the official R50 COCO panoptic config, random weights) and times each stage on
random images of the given sizes with 1 and 2 threads (median of --repeats runs after one warm-up), then
prints the per-stage times and shares side by side.

    python tools/benchmark_model.py [--config-file F] [--sizes 512x640 800x1216] [--threads 1 2] [--repeats 3] \
        [--deform-attn-impls pytorch cpp]

With ``--deform-attn-impls`` the runs alternate between those deformable-attention implementations on the same
model and image, a row per implementation, and the outputs of the implementations are compared.

The process keeps freed CPU memory for reuse as ``train_net.py`` does (``mask2former.utils.cpu_memory``);
``--cpu-alloc keep system`` compares that with glibc's default allocation: each measurement runs in a new process
(the setting is process-wide), the two settings alternating, and the outputs of the two are checked to be
bit-identical.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_net import build_config  # noqa: E402  (imports mask2former, then detectron2 quietly)
from detectron2.modeling import build_model  # noqa: E402

from mask2former.modeling.pixel_decoder.deformable_attention import MSDeformAttn  # noqa: E402
from mask2former.utils.cpu_memory import ENV_VAR, keep_freed_cpu_memory  # noqa: E402

STAGES = ("backbone", "pixel_decoder", "transformer_decoder", "postprocess")


def set_deform_attn_impl(model, impl):
    for m in model.modules():
        if isinstance(m, MSDeformAttn):
            m.impl = impl


def run_stages(model, image):
    """One inference split into stages; returns seconds per stage."""
    times = {}
    height, width = image.shape[-2:]
    start = time.perf_counter()
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    times["backbone"] = time.perf_counter() - start

    start = time.perf_counter()
    head = model.sem_seg_head
    pixel_outputs = head.pixel_decoder.forward_features(features)
    times["pixel_decoder"] = time.perf_counter() - start

    start = time.perf_counter()
    outputs = head.decode(features, *pixel_outputs)
    times["transformer_decoder"] = time.perf_counter() - start

    start = time.perf_counter()
    # as MaskFormer.forward does: the decoder's masks with the padded size, each task upsamples what it keeps
    model.inference_single(outputs["pred_logits"][0], outputs["pred_masks"][0], images.image_sizes[0], height, width,
                           padded_size=images.tensor.shape[-2:])
    times["postprocess"] = time.perf_counter() - start
    return times


def print_median_rows(size, threads, runs, note=""):
    """Print a row of median stage times per key of ``runs`` (key -> list of per-stage dicts) and, with several
    keys, each one's speed-up against the first, followed by ``note``."""
    totals = {}
    for key, rows in runs.items():
        med = {s: sorted(r[s] for r in rows)[len(rows) // 2] for s in STAGES}
        total = totals[key] = sum(med.values())
        cells = " ".join(f"{med[s]:8.3f}s ({med[s] / total:5.1%})" for s in STAGES)
        print(f"{size:>9s} {threads:7d} {key or 'config':>8s} {cells} {total:8.3f}s", flush=True)
    keys = list(runs)
    if len(keys) > 1:
        print(f"{size:>9s} {threads:7d} speed-up vs {keys[0]}: " + ", ".join(
            f"{k} {totals[keys[0]] / totals[k]:.2f}x" for k in keys[1:]) + note, flush=True)


def output_digest(output):
    """SHA-1 of an inference output's tensors (semantic logits, panoptic ids, instance masks and scores)."""
    h = hashlib.sha1()
    tensors = [output["sem_seg"], output["panoptic_seg"][0], output["instances"].pred_masks,
               output["instances"].scores]
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def measure_in_process(model, size, threads):
    """The child of --cpu-alloc comparisons: a warm-up, one timed run, and the output's digest, as JSON."""
    h, w = (int(v) for v in size.lower().split("x"))
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    torch.set_num_threads(threads)
    with torch.no_grad():
        digest = output_digest(model([{"image": image}])[0])
        times = run_stages(model, image)
    print(json.dumps({"times": times, "digest": digest}))


def compare_allocators(args):
    """Alternate new processes with each --cpu-alloc setting; print a row per setting and their ratio."""
    modes = args.cpu_alloc
    print(f"config: {args.config_file} (random weights, CPU); one process per measurement, settings alternating; "
          f"median of {args.repeats}")
    print(f"{'size':>9s} {'threads':>7s} {'alloc':>8s} " + " ".join(f"{s:>20s}" for s in STAGES) + f" {'total':>9s}")
    for size in args.sizes:
        for threads in args.threads:
            runs, digests = {m: [] for m in modes}, {m: set() for m in modes}
            for _ in range(args.repeats):
                for mode in modes:
                    cmd = [sys.executable, os.path.abspath(__file__), "--config-file", args.config_file,
                           "--sizes", size, "--threads", str(threads), "--child", *args.opts]
                    out = subprocess.run(cmd, env=dict(os.environ, **{ENV_VAR: mode}), check=True,
                                         stdout=subprocess.PIPE, text=True).stdout
                    result = json.loads(out.strip().splitlines()[-1])
                    runs[mode].append(result["times"])
                    digests[mode].add(result["digest"])
            same = len(set().union(*digests.values())) == 1
            print_median_rows(size, threads, runs, note=f"; outputs bit-identical: {same}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml")
    parser.add_argument("--sizes", nargs="+", default=["512x640", "800x1216"], help="HxW")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deform-attn-impls", nargs="+", choices=["auto", "pytorch", "cpp", "triton"])
    parser.add_argument("--cpu-alloc", nargs="+", choices=["keep", "system"],
                        help="CPU memory allocation (default: as MASK2FORMER_CPU_ALLOC says, else keep); two "
                             "values compare them")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    if args.cpu_alloc and len(args.cpu_alloc) > 1:
        if args.deform_attn_impls:
            parser.error("--cpu-alloc with two settings and --deform-attn-impls: compare one thing at a time")
        return compare_allocators(args)
    if args.cpu_alloc:
        os.environ[ENV_VAR] = args.cpu_alloc[0]
    keep_freed_cpu_memory()

    cfg, _ = build_config(argparse.Namespace(config_file=args.config_file,
                                             opts=["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"] + args.opts))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.child:
        return measure_in_process(model, args.sizes[0], args.threads[0])
    test = cfg.MODEL.MASK_FORMER.TEST
    print(f"config: {args.config_file} (random weights, CPU); semantic={test.SEMANTIC_ON} "
          f"instance={test.INSTANCE_ON} panoptic={test.PANOPTIC_ON}; median of {args.repeats} runs")
    impls = args.deform_attn_impls or [None]
    header = f"{'size':>9s} {'threads':>7s} {'impl':>8s} " + " ".join(f"{s:>20s}" for s in STAGES) + f" {'total':>9s}"
    print(header)
    for size in args.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
        if len(impls) > 1:
            outs = {}
            with torch.no_grad():
                for impl in impls:
                    set_deform_attn_impl(model, impl)
                    outs[impl] = model([{"image": image}])[0]
            ref = outs[impls[0]]
            for impl in impls[1:]:
                o = outs[impl]
                print(f"{size}: outputs {impl} vs {impls[0]}: sem_seg max abs diff "
                      f"{(o['sem_seg'] - ref['sem_seg']).abs().max():.2e}, panoptic ids equal "
                      f"{torch.equal(o['panoptic_seg'][0], ref['panoptic_seg'][0])}, instance masks equal "
                      f"{torch.equal(o['instances'].pred_masks, ref['instances'].pred_masks)}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            runs = {impl: [] for impl in impls}
            with torch.no_grad():
                for i in range(args.repeats + 1):
                    for impl in impls:  # alternate, so that drift of the machine hits them alike
                        if impl:
                            set_deform_attn_impl(model, impl)
                        t = run_stages(model, image)
                        if i:
                            runs[impl].append(t)
            print_median_rows(size, threads, runs)


if __name__ == "__main__":
    main()
