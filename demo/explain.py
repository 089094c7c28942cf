"""Explain mode: what the decoder predicts layer by layer for the top queries, and where each layer looked.

Mask2Former predicts class logits and masks from the learnable queries ("init") and again after every
decoder layer. Layer j (1-based) cross-attends to one feature level of the pixel decoder, round-robin from
the coarsest (level (j - 1) mod 3), and only to the pixels inside the mask predicted before it: the attention
mask is ``attention_mask_from_masks`` of prediction j - 1 at that level's size.

``DecoderRecorder`` captures one forward pass with hooks (the model is unchanged), ``explain`` selects the
top queries by final score and derives their per-layer masks and attention regions, ``render_grid`` draws
them: rows are queries (a mask row and an attention row each), columns are "init", "layer 1 (1/32)", ...
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mask2former.modeling.transformer_decoder.mask2former_transformer_decoder import attention_mask_from_masks


class DecoderRecorder:
    """Context manager that records the decoder's inputs and predictions of the next forward passes.

    After a forward of ``model`` (batch of one image) inside the context:
        input_size: (h, w) of the resized image given to the model.
        padded_size: (H, W) of the padded batch the backbone saw.
        level_sizes: [(h_l, w_l)] of the feature levels the decoder attends to, in its order.
        num_levels: how many levels the decoder cycles through.
        predictions: [(class logits (Q, K+1), mask logits (Q, H/4, W/4))] for the first image:
            from the learnable queries, then after each decoder layer (the last is the model's output).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.predictor = model.sem_seg_head.predictor
        self.input_size = self.padded_size = None
        self.level_sizes: List[Tuple[int, int]] = []
        self.num_levels = 0
        self.predictions: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._handles = []

    def _on_model(self, module, args):
        self.input_size = tuple(args[0][0]["image"].shape[-2:])

    def _on_backbone(self, module, args):
        self.padded_size = tuple(args[0].shape[-2:])

    def _on_predictor(self, module, args, kwargs, output):
        features = args[0] if args else kwargs["x"]
        self.level_sizes = [tuple(f.shape[-2:]) for f in features]
        self.num_levels = getattr(module, "num_feature_levels", len(features))
        steps = list(output.get("aux_outputs", [])) + [output]
        self.predictions = [(s["pred_logits"][0].detach().cpu(), s["pred_masks"][0].detach().cpu()) for s in steps]

    def __enter__(self):
        self._handles = [
            self.model.register_forward_pre_hook(self._on_model),
            self.model.backbone.register_forward_pre_hook(self._on_backbone),
            self.predictor.register_forward_hook(self._on_predictor, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class QueryTrace:
    """One query across the columns of the grid."""

    query: int
    class_id: int  # final predicted class (contiguous id)
    class_name: str
    score: float  # final class probability
    mask_logits: List[torch.Tensor]  # per column: (H/4, W/4) over the padded input
    attention: List[Optional[torch.Tensor]]  # per column: None for "init", else (h_l, w_l) bool, True = may attend


@dataclass
class Explanation:
    columns: List[str]  # "init", "layer 1 (1/32)", ...
    levels: List[Optional[int]]  # feature level each column's layer attended to (None for "init")
    input_size: Tuple[int, int]
    padded_size: Tuple[int, int]
    queries: List[QueryTrace]


def explain(recorder: DecoderRecorder, class_names: Sequence[str], top_n: int = 5) -> Explanation:
    """The ``top_n`` queries by final score (highest class probability other than "no object") with their
    mask after every step and the attention region every layer used."""
    if not recorder.predictions:
        raise RuntimeError("the recorder saw no forward pass of the decoder")
    final_logits = recorder.predictions[-1][0]
    scores, classes = F.softmax(final_logits.float(), dim=-1)[:, :-1].max(-1)
    order = scores.argsort(descending=True)[: max(1, top_n)].tolist()
    padded_h = recorder.padded_size[0]

    columns, levels, attention = ["init"], [None], [None]
    for j in range(1, len(recorder.predictions)):
        level = (j - 1) % recorder.num_levels
        size = recorder.level_sizes[level]
        blocked = attention_mask_from_masks(recorder.predictions[j - 1][1][None].float(), size, num_heads=1)[0]
        attention.append(~blocked.view(-1, *size))  # (Q, h_l, w_l)
        columns.append(f"layer {j} (1/{round(padded_h / size[0])})")
        levels.append(level)

    def name(c):
        return class_names[c] if c < len(class_names) else f"class {c}"

    queries = [
        QueryTrace(
            query=q,
            class_id=int(classes[q]),
            class_name=name(int(classes[q])),
            score=float(scores[q]),
            mask_logits=[masks[q] for _, masks in recorder.predictions],
            attention=[None if a is None else a[q] for a in attention],
        )
        for q in order
    ]
    return Explanation(columns, levels, tuple(recorder.input_size), tuple(recorder.padded_size), queries)


def _to_display(x: torch.Tensor, exp: Explanation, out_hw: Tuple[int, int], mode: str) -> np.ndarray:
    """A map over the padded input -> the image area only, resized to out_hw (h, w)."""
    x = x[None, None].float()
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    x = F.interpolate(x, size=exp.padded_size, mode=mode, **kwargs)[0, 0, : exp.input_size[0], : exp.input_size[1]]
    x = F.interpolate(x[None, None], size=out_hw, mode=mode, **kwargs)[0, 0]
    return x.numpy()


def _text(img, text, org, scale=0.42, color=(0, 0, 0), max_width=None, thickness=1):
    font = cv2.FONT_HERSHEY_SIMPLEX
    while max_width and scale > 0.3 and cv2.getTextSize(text, font, scale, thickness)[0][0] > max_width:
        scale -= 0.02
    cv2.putText(img, text, org, font, scale, color, thickness, cv2.LINE_AA)


def _badge(img, text):
    """White text on a black box in the lower-left corner of a cell."""
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.38, 1)
    y = img.shape[0] - 3
    cv2.rectangle(img, (0, y - h - 4), (min(img.shape[1] - 1, w + 4), img.shape[0] - 1), (0, 0, 0), -1)
    _text(img, text, (2, y - 1), 0.38, (255, 255, 255))


def render_grid(image_rgb: np.ndarray, exp: Explanation, class_colors: Sequence[Sequence[int]],
                cell: int = 160) -> np.ndarray:
    """Draw the explanation over the (original size) RGB image: RGB uint8 grid.

    Mask cells: the mask probability in the class colour over the darkened image, white contour at 0.5.
    Attention cells: the image where the layer could attend, dark where it was blocked, at the resolution
    of its feature level, with the allowed share of the image ("all" when nothing was blocked, which is also
    the case when the previous mask was empty: the model then lets the query attend everywhere).
    """
    h0, w0 = image_rgb.shape[:2]
    s = cell / max(h0, w0)
    ch, cw = max(1, round(h0 * s)), max(1, round(w0 * s))
    small = cv2.resize(image_rgb, (cw, ch), interpolation=cv2.INTER_AREA).astype(np.float32)
    gap, label_w, header_h = 4, 170, 26
    ncols, nrows = len(exp.columns), 2 * len(exp.queries)
    grid = np.full((header_h + nrows * (ch + gap), label_w + ncols * (cw + gap), 3), 255, np.uint8)

    for c, title in enumerate(exp.columns):
        _text(grid, title, (label_w + c * (cw + gap) + 2, header_h - 8), 0.45, max_width=cw - 4)
    for r, trace in enumerate(exp.queries):
        top = header_h + 2 * r * (ch + gap)
        color = np.asarray(class_colors[trace.class_id] if trace.class_id < len(class_colors) else (255, 0, 0),
                           dtype=np.float32)
        cv2.line(grid, (0, top - gap // 2 - 1), (grid.shape[1], top - gap // 2 - 1), (160, 160, 160), 1)
        cv2.rectangle(grid, (4, top + 4), (14, top + 14), tuple(int(v) for v in color), -1)
        _text(grid, f"#{r + 1} {trace.class_name}", (18, top + 14), 0.48, max_width=label_w - 22)
        _text(grid, f"score {trace.score:.2f}", (6, top + 34))
        _text(grid, f"query {trace.query}", (6, top + 52))
        _text(grid, "mask", (6, top + ch - 6), 0.45, (90, 90, 90))
        _text(grid, "attention", (6, top + 2 * ch + gap - 6), 0.45, (90, 90, 90))
        for c in range(ncols):
            x = label_w + c * (cw + gap)
            prob = 1 / (1 + np.exp(-_to_display(trace.mask_logits[c], exp, (ch, cw), "bilinear")))
            alpha = 0.75 * prob[..., None]
            mask_cell = (small * 0.45 * (1 - alpha) + color * alpha).astype(np.uint8)
            contours, _ = cv2.findContours((prob >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(mask_cell, contours, -1, (255, 255, 255), 1)
            grid[top: top + ch, x: x + cw] = mask_cell

            att_top = top + ch + gap
            if trace.attention[c] is None:
                att_cell = np.full((ch, cw, 3), 225, np.uint8)
                _text(att_cell, "no attention yet", (4, ch // 2), 0.4, (90, 90, 90), max_width=cw - 8)
            else:
                allowed = _to_display(trace.attention[c], exp, (ch, cw), "nearest") > 0.5
                att_cell = np.where(allowed[..., None], small, small * 0.2).astype(np.uint8)
                _badge(att_cell, "all" if bool(trace.attention[c].all()) else f"{100 * allowed.mean():.0f}%")
            grid[att_top: att_top + ch, x: x + cw] = att_cell
    return grid
