"""Segmenting a video in overlapping clips: clip schedule and association of queries across clips.

A video too long to segment in one pass is cut into clips of ``clip_length`` frames, consecutive clips
sharing at least ``overlap`` frames. Each clip is segmented on its own (each query = one instance of the
clip). :class:`ClipTracker` chains the queries of consecutive clips into video-level tracks: the queries
of a new clip are matched one-to-one to the tracks (Hungarian) by their mask IoU on the shared frames,
class probabilities are averaged over clips, and a frame predicted by several clips gets the mean of their
mask logits. Only the frames of one clip are held at a time: a frame is finalised (turned into
output-resolution masks, stored compressed as RLE) as soon as no later clip can cover it.
"""
from collections import deque
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["clip_windows", "iter_clips", "match_queries", "ClipTracker", "rle_from_counts"]


def _check_schedule(clip_length: int, overlap: int) -> None:
    if clip_length < 2:
        raise ValueError(f"MODEL.MASK_FORMER.TEST.CLIP_LENGTH must be >= 2 to segment in clips, got {clip_length}")
    if not 1 <= overlap < clip_length:
        raise ValueError(
            f"MODEL.MASK_FORMER.TEST.CLIP_OVERLAP must be in [1, CLIP_LENGTH - 1] = [1, {clip_length - 1}] "
            f"(clips must share frames to be associated), got {overlap}")


def clip_windows(num_frames: int, clip_length: int, overlap: int) -> List[Tuple[int, int]]:
    """[start, end) frame ranges of the clips of a ``num_frames`` video.

    Clips start every ``clip_length - overlap`` frames; when the last regular clip stops short of the end, one
    more clip holds the last ``clip_length`` frames (it overlaps its predecessor by more than ``overlap``).
    A video of at most ``clip_length`` frames is one clip.
    """
    _check_schedule(clip_length, overlap)
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num_frames <= clip_length:
        return [(0, num_frames)]
    stride = clip_length - overlap
    windows = [(s, s + clip_length) for s in range(0, num_frames - clip_length + 1, stride)]
    if windows[-1][1] < num_frames:
        windows.append((num_frames - clip_length, num_frames))
    return windows


def iter_clips(frames: Iterable, clip_length: int, overlap: int) -> Iterator[Tuple[int, list]]:
    """Yield (start, frames of the clip) for the windows of :func:`clip_windows`, reading ``frames`` lazily
    and holding at most ``clip_length`` of them. Raises ValueError for a video without frames."""
    _check_schedule(clip_length, overlap)
    stride = clip_length - overlap
    buffer = deque(maxlen=clip_length)
    num_read, next_end, last_end = 0, clip_length, 0
    for frame in frames:
        buffer.append(frame)
        num_read += 1
        if num_read == next_end:
            yield num_read - len(buffer), list(buffer)
            last_end, next_end = num_read, num_read + stride
    if num_read == 0:
        raise ValueError("the video has no frames")
    if num_read > last_end:
        yield num_read - len(buffer), list(buffer)


def match_queries(prev_masks: torch.Tensor, cur_masks: torch.Tensor) -> torch.Tensor:
    """One-to-one assignment of the current clip's queries to the previous clip's by mask IoU.

    Args:
        prev_masks, cur_masks: (Q, F, h, w) mask logits of both clips on their F shared frames.
    Returns:
        (Q,) int64 ``perm``: current query ``perm[i]`` continues previous query ``i``. Binary IoU (logit > 0)
        over all shared frames decides; the IoU of the soft masks breaks ties (e.g. between empty masks).
    """
    if prev_masks.shape != cur_masks.shape:
        raise ValueError(f"shared-frame masks differ in shape: {tuple(prev_masks.shape)} vs {tuple(cur_masks.shape)}")
    a, b = prev_masks.flatten(1).float(), cur_masks.flatten(1).float()

    def iou(x, y):
        inter = x @ y.T
        union = x.sum(1)[:, None] + y.sum(1)[None, :] - inter
        return torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(inter))

    score = iou((a > 0).float(), (b > 0).float()) + 1e-3 * iou(a.sigmoid(), b.sigmoid())
    rows, cols = linear_sum_assignment(-score.cpu().numpy())
    perm = torch.empty(len(rows), dtype=torch.int64)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.int64)
    return perm


def rle_from_counts(counts: Optional[bytes], height: int, width: int) -> Optional[dict]:
    """A COCO RLE dict from stored compressed counts (None stays None: an empty mask)."""
    return None if counts is None else {"size": [height, width], "counts": counts}


class ClipTracker:
    """Chains the predictions of overlapping clips into video-level tracks (one per query slot).

    Args:
        to_output_masks: (Q, h, w) mask logits of one frame (at the model's mask resolution) -> (Q, H, W)
            bool masks at the output resolution.
        height, width: the output resolution.

    Feed clips in order with :meth:`add_clip`, then call :meth:`finish`.
    """

    def __init__(self, to_output_masks: Callable[[torch.Tensor], torch.Tensor], height: int, width: int):
        self.to_output_masks = to_output_masks
        self.height, self.width = height, width
        self.prev: Optional[Tuple[int, torch.Tensor]] = None  # (start, (Q, T, h, w) logits in track order)
        self.pending = {}  # frame -> [sum of mask logits (Q, h, w), number of clips]
        self.num_final = 0  # frames [0, num_final) are finalised
        self.prob_sum: Optional[torch.Tensor] = None  # (Q, K) sum over clips of class probabilities
        self.num_clips = 0
        self.tracks: List[List[Optional[bytes]]] = []  # per track, per finalised frame: RLE counts or None

    def add_clip(self, start: int, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Add one clip's predictions: logits (Q, K+1), masks (Q, T, h, w) for frames [start, start + T).

        Returns the permutation applied (``perm[i]`` = query of this clip continuing track ``i``).
        """
        num_queries, length = masks.shape[:2]
        if logits.shape[0] != num_queries:
            raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} disagree on queries")
        if self.prev is None:
            if start != 0:
                raise ValueError(f"the first clip must start at frame 0, got {start}")
            perm = torch.arange(num_queries)
            self.tracks = [[] for _ in range(num_queries)]
        else:
            prev_start, prev_masks = self.prev
            prev_end = prev_start + prev_masks.shape[1]
            if not prev_start < start < prev_end:
                raise ValueError(
                    f"a clip starting at frame {start} does not overlap the previous clip "
                    f"[{prev_start}, {prev_end}) or does not advance past its start")
            if prev_masks.shape[0] != num_queries:
                raise ValueError(f"clips have {prev_masks.shape[0]} and {num_queries} queries")
            shared = min(prev_end, start + length) - start
            perm = match_queries(prev_masks[:, start - prev_start: start - prev_start + shared], masks[:, :shared])
            logits, masks = logits[perm.to(logits.device)], masks[perm.to(masks.device)]
        self._finalise(until=start)
        for j in range(length):
            entry = self.pending.setdefault(start + j, [0.0, 0])
            entry[0] = entry[0] + masks[:, j]
            entry[1] += 1
        probs = F.softmax(logits.float(), dim=-1)[:, :-1]
        self.prob_sum = probs if self.prob_sum is None else self.prob_sum + probs
        self.num_clips += 1
        self.prev = (start, masks)
        return perm

    def _finalise(self, until: int) -> None:
        for frame in sorted(f for f in self.pending if f < until):
            if frame != self.num_final:
                raise RuntimeError(f"frame {self.num_final} was never predicted (next pending frame: {frame})")
            total, count = self.pending.pop(frame)
            binary = self.to_output_masks(total / count).cpu().numpy()  # (Q, H, W) bool
            for track, mask in zip(self.tracks, binary):
                track.append(mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
                             if mask.any() else None)
            self.num_final += 1

    def finish(self, topk: int) -> dict:
        """Finalise the remaining frames and keep the ``topk`` (track, class) pairs.

        Returns {"image_size": (H, W), "length": frames, "pred_scores": [float], "pred_labels": [int],
        "pred_rles": per instance a list over frames of a COCO RLE dict, or None where the mask is empty},
        ordered by decreasing score. The score of a track and class is its class probability averaged over
        the clips (the video-level score of Mask2Former, which has no mask term).
        """
        if self.prev is None:
            raise ValueError("no clips were added")
        self._finalise(until=self.num_final + len(self.pending))
        probs = self.prob_sum / self.num_clips
        num_classes = probs.shape[1]
        k = min(topk, probs.numel())
        scores, index = probs.flatten().topk(k, sorted=True)
        tracks = torch.div(index, num_classes, rounding_mode="floor").tolist()
        return {
            "image_size": (self.height, self.width),
            "length": self.num_final,
            "pred_scores": scores.tolist(),
            "pred_labels": (index % num_classes).tolist(),
            "pred_rles": [[rle_from_counts(c, self.height, self.width) for c in self.tracks[t]] for t in tracks],
        }


def rles_to_masks(rles: Sequence[Optional[dict]], height: int, width: int) -> torch.Tensor:
    """Per-frame RLEs (None = empty) -> (T, H, W) bool tensor."""
    out = torch.zeros((len(rles), height, width), dtype=torch.bool)
    for t, rle in enumerate(rles):
        if rle is not None:
            out[t] = torch.from_numpy(mask_util.decode(rle).astype(bool))
    return out
