#!/usr/bin/env python
"""Draw where DAT's deformable attention looks: for a few query positions, the sampled key points of one
deformable block of stage 3 and one of stage 4 over the input image, as in the DAT paper's figures.

DAT v1 samples the same Hk x Wk key points for every query of the map (one set per offset group); what
differs per query is the attention over them. Each panel shows a query (white star) and its ``--top-k``
most attended sample points (attention summed over heads, each head at its own group's positions), sized
and coloured by weight; the grey dots are all sample points of group 0. Positions are drawn in image
pixels: a point at map coordinate j (grid_sample, ``align_corners=True``) of a stride-s map is at
``(j + 0.5) * s``.

    python tools/visualize_dat_offsets.py --config-file configs/shapes_world/dat/maskformer2_dat_panoptic.yaml \\
        --input image.png --output dat_offsets.png [--queries 40,60 120,90] [--top-k 32] \\
        [--blocks stages.2.attns.1 stages.3.attns.1] [--opts MODEL.WEIGHTS model_final.pth]

MODEL.WEIGHTS may be a Mask2Former checkpoint or an official DAT ImageNet ``.pth``. With no weights
(``MODEL.WEIGHTS ""``) the tool draws a randomly initialised model and says so.
"""
import argparse
import logging
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mask2former import add_maskformer2_config  # noqa: E402
from mask2former.modeling.backbone.dat import D2DAT, DAttentionBaseline  # noqa: E402

logger = logging.getLogger("visualize_dat_offsets")


def default_blocks(backbone: D2DAT) -> List[str]:
    """The last deformable block of stage 3 and of stage 4."""
    names = {}
    for name, module in backbone.named_modules():
        if isinstance(module, DAttentionBaseline):
            names[name.split(".")[1]] = name
    return [names[s] for s in ("2", "3") if s in names]


@torch.no_grad()
def sampling_points(
    backbone: D2DAT, image: torch.Tensor, blocks: Sequence[str], queries: Sequence[Tuple[float, float]]
) -> Dict[str, Dict[str, np.ndarray]]:
    """Sample points and attention of ``blocks`` for query positions given in image pixels.

    Args:
        backbone: a DAT backbone (eval mode).
        image: (1, 3, H, W) normalised image.
        blocks: module names of deformable blocks, e.g. ``"stages.2.attns.1"``.
        queries: (x, y) image-pixel positions.

    Returns:
        per block: ``"points"`` (groups, Hk * Wk, 2) all sample points as (x, y) image pixels; ``"weights"``
        (len(queries), groups, Hk * Wk) attention of each query summed over the heads of each group;
        ``"queries"`` (len(queries), 2) the query positions snapped to the map's cell centres; ``"stride"``.
    """
    inputs = {}
    hooks = [
        backbone.get_submodule(name).register_forward_pre_hook(
            lambda m, args, name=name: inputs.__setitem__(name, args[0])
        )
        for name in blocks
    ]
    try:
        backbone.forward_stages(image)
    finally:
        for h in hooks:
            h.remove()
    result = {}
    for name in blocks:
        module = backbone.get_submodule(name)
        if not isinstance(module, DAttentionBaseline):
            raise ValueError(f"--blocks: {name} is a {type(module).__name__}, not a deformable (D) block")
        x = inputs[name]
        _, _, H, W = x.shape
        stride = backbone.patch_size * 2 ** int(name.split(".")[1])
        attn, pos = module.attention_weights(x)  # (1, heads, HW, Ns), (1, g, Hk, Wk, 2)
        g = module.n_groups
        cells = []
        for qx, qy in queries:
            i = min(max(int(qy // stride), 0), H - 1)
            j = min(max(int(qx // stride), 0), W - 1)
            cells.append((i, j))
        idx = torch.tensor([i * W + j for i, j in cells])
        weights = attn[0][:, idx]  # (heads, Q, Ns)
        weights = weights.reshape(g, module.n_group_heads, len(cells), -1).sum(1).permute(1, 0, 2)  # (Q, g, Ns)
        Hk, Wk = pos.shape[2:4]
        y = (pos[0, ..., 0] + 1) / 2 * (H - 1)  # map rows (align_corners=True)
        xx = (pos[0, ..., 1] + 1) / 2 * (W - 1)
        points = torch.stack(((xx + 0.5) * stride, (y + 0.5) * stride), dim=-1).reshape(g, Hk * Wk, 2)
        result[name] = {
            "points": points.float().numpy(),
            "weights": weights.float().numpy(),
            "queries": np.array([((j + 0.5) * stride, (i + 0.5) * stride) for i, j in cells], dtype=np.float32),
            "stride": stride,
        }
    return result


def draw(image_rgb: np.ndarray, data: Dict[str, Dict[str, np.ndarray]], top_k: int, path: str, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_blocks, n_queries = len(data), len(next(iter(data.values()))["queries"])
    fig, axes = plt.subplots(n_blocks, n_queries, figsize=(3.2 * n_queries, 3.2 * n_blocks), squeeze=False)
    for r, (name, d) in enumerate(data.items()):
        for c in range(n_queries):
            ax = axes[r][c]
            ax.imshow(image_rgb)
            ax.scatter(d["points"][0, :, 0], d["points"][0, :, 1], s=2, c="0.7", alpha=0.6)
            w = d["weights"][c]  # (g, Ns)
            flat = np.argsort(w.reshape(-1))[::-1][:top_k]
            gi, ni = np.unravel_index(flat, w.shape)
            pts, ws = d["points"][gi, ni], w[gi, ni]
            sizes = 10 + 120 * ws / max(ws.max(), 1e-12)
            ax.scatter(pts[:, 0], pts[:, 1], s=sizes, c=ws, cmap="autumn", edgecolors="k", linewidths=0.3)
            ax.scatter(*d["queries"][c], marker="*", s=160, c="white", edgecolors="k")
            ax.set_xlim(0, image_rgb.shape[1])
            ax.set_ylim(image_rgb.shape[0], 0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} (stride {d['stride']})", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build(config_file: str, opts: Sequence[str]):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from mask2former.engine.checkpoint import MaskFormerCheckpointer

    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.BACKBONE.NAME != "D2DAT":
        raise SystemExit(f"{config_file}: MODEL.BACKBONE.NAME is {cfg.MODEL.BACKBONE.NAME!r}; this tool needs 'D2DAT'")
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        if not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise SystemExit(f"MODEL.WEIGHTS = {cfg.MODEL.WEIGHTS!r}: no such file")
        MaskFormerCheckpointer(model).load(cfg.MODEL.WEIGHTS, checkpointables=[])
    else:
        logger.warning("MODEL.WEIGHTS is empty: drawing a randomly initialised model")
    return cfg, model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", required=True, help="an image file")
    parser.add_argument("--output", default="dat_offsets.png")
    parser.add_argument("--queries", nargs="*", default=None,
                        help="x,y image-pixel positions (default: 3 on a diagonal)")
    parser.add_argument("--blocks", nargs="*", default=None, help="deformable blocks (default: last of stages 3 and 4)")
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from detectron2.data.detection_utils import read_image

    try:
        image = read_image(args.input, format="RGB")
    except Exception as e:
        raise SystemExit(f"--input {args.input}: cannot read the image ({type(e).__name__}: {e})")
    cfg, model = build(args.config_file, args.opts)
    h, w = image.shape[:2]
    queries = [(w * f, h * f) for f in (0.25, 0.5, 0.75)]
    if args.queries:
        try:
            queries = [tuple(float(v) for v in q.split(",")) for q in args.queries]
            assert all(len(q) == 2 for q in queries)
        except (ValueError, AssertionError):
            raise SystemExit(f"--queries {args.queries}: expected x,y pairs such as 40,60")
    tensor = torch.as_tensor(image.astype("float32")).permute(2, 0, 1)
    if cfg.INPUT.FORMAT == "BGR":
        tensor = tensor.flip(0)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    backbone = model.backbone
    blocks = args.blocks or default_blocks(backbone)
    if not blocks:
        raise SystemExit(f"{args.config_file}: the backbone has no deformable (D) blocks (MODEL.DAT.STAGE_SPEC)")
    data = sampling_points(backbone, ((tensor - mean) / std)[None], blocks, queries)
    draw(image, data, args.top_k, args.output, title=os.path.basename(args.input))
    logger.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
