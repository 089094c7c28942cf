"""
Video instance segmentation AP as YouTube-VIS defines it (our implementation).

A prediction is a track: one category, one score and a mask per frame. Its IoU with a ground-truth track
of the same video is spatio-temporal: the sum over frames of the intersections divided by the sum over
frames of the unions (a frame where one of the two is absent adds the other's area to the union). On these
IoUs, AP and AR are COCO's: per category, detections of all videos sorted by score (at most ``max_dets``
per video), greedily matched at each IoU threshold .50:.05:.95 to the unmatched ground truth of highest IoU
(crowd tracks can absorb several detections and are ignored), precision interpolated at 101 recall
points; AP is the mean over thresholds and categories with ground truth. Size ranges (APs/APm/APl) use a
track's mean visible area: small < 128^2 <= medium < 256^2 <= large.

:class:`YTVISEvaluator` collects the model's video outputs, writes them in the official results format
(``results.json``: a list of {"video_id", "category_id", "segmentations": per frame a compressed RLE or
None, "score"}) and, when the dataset's JSON has annotations, reports AP, AP50, AP75, APs, APm, APl, AR1
and AR10 (in percent).
"""
import copy
import itertools
import json
import logging
import os
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..utils.disk import atomic_write

__all__ = ["YTVISEvaluator", "video_output_to_results", "evaluate_ytvis", "track_iou", "YTVIS_METRICS"]

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1)
MAX_DETS = (1, 10, 100)
AREA_RANGES = OrderedDict(
    [("all", (0, 1e5 ** 2)), ("small", (0, 128 ** 2)), ("medium", (128 ** 2, 256 ** 2)),
     ("large", (256 ** 2, 1e5 ** 2))]
)
YTVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")


# ------------------------------------------------------------------------------------------------ results
def _encode(mask: np.ndarray) -> Optional[dict]:
    if not mask.any():
        return None
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def video_output_to_results(video_id, output: dict, contiguous_to_dataset_id: Optional[Dict[int, int]] = None
                            ) -> List[dict]:
    """
    The official results entries of one video: a list of {"video_id", "score", "category_id" (dataset id),
    "segmentations": per frame a compressed RLE (counts as str) or None where the mask is empty}.

    ``output`` is VideoMaskFormer's dict ("pred_scores", "pred_labels" and either "pred_masks", a list of
    (T, H, W) bool tensors, or "pred_rles", per instance a list of per-frame RLEs or None).
    """
    scores, labels = output["pred_scores"], output["pred_labels"]
    if "pred_rles" in output:
        tracks = []
        for rles in output["pred_rles"]:
            track = []
            for rle in rles:
                if rle is not None:
                    rle = dict(rle)
                    if isinstance(rle["counts"], bytes):
                        rle["counts"] = rle["counts"].decode("ascii")
                track.append(rle)
            tracks.append(track)
    else:
        tracks = []
        for masks in output["pred_masks"]:
            masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
            tracks.append([_encode(m) for m in masks])
    if not len(scores) == len(labels) == len(tracks):
        raise ValueError(f"video {video_id}: {len(scores)} scores, {len(labels)} labels, {len(tracks)} mask tracks")
    results = []
    for score, label, track in zip(scores, labels, tracks):
        label = int(label)
        if contiguous_to_dataset_id is not None:
            if label not in contiguous_to_dataset_id:
                raise ValueError(f"predicted class {label} has no dataset category id "
                                 f"(thing_dataset_id_to_contiguous_id knows {sorted(contiguous_to_dataset_id)})")
            label = contiguous_to_dataset_id[label]
        results.append({"video_id": video_id, "score": float(score), "category_id": label, "segmentations": track})
    return results


# ------------------------------------------------------------------------------------------------ IoU
def _frame_rle(segm, height: int, width: int) -> Optional[dict]:
    """A frame's segmentation (compressed / uncompressed RLE, polygons, or None) as a compressed RLE or None."""
    if segm is None or (isinstance(segm, list) and not segm):
        return None
    if isinstance(segm, list):  # polygons
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    if isinstance(segm.get("counts"), list):
        return mask_util.frPyObjects(segm, height, width)
    counts = segm["counts"]
    return {"size": list(segm["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _mean_area(track: Sequence[Optional[dict]]) -> float:
    areas = [float(mask_util.area(r)) for r in track if r is not None]
    areas = [a for a in areas if a > 0]
    return float(np.mean(areas)) if areas else 0.0


def track_iou(dt_tracks: Sequence[Sequence[Optional[dict]]],
              gt_tracks: Sequence[Sequence[Optional[dict]]]) -> np.ndarray:
    """(D, G) spatio-temporal IoUs: sum of per-frame intersections / sum of per-frame unions (0 if empty)."""
    ious = np.zeros((len(dt_tracks), len(gt_tracks)))
    for d, dt in enumerate(dt_tracks):
        for g, gt in enumerate(gt_tracks):
            if len(dt) != len(gt):
                raise ValueError(f"a predicted track has {len(dt)} frames but the ground-truth track has {len(gt)}")
            inter = union = 0.0
            for a, b in zip(dt, gt):
                area_a = float(mask_util.area(a)) if a is not None else 0.0
                area_b = float(mask_util.area(b)) if b is not None else 0.0
                common = float(mask_util.area(mask_util.merge([a, b], intersect=True))) if a and b else 0.0
                inter += common
                union += area_a + area_b - common
            ious[d, g] = inter / union if union > 0 else 0.0
    return ious


# ------------------------------------------------------------------------------------------------ AP
def _evaluate_video(ious, gt_crowd, gt_area, dt_scores, dt_area, area_range, max_det):
    """COCO's per-image matching for one (video, category, area range, max_det). ``ious`` (D, G) with the
    detections sorted by decreasing score. Returns None without ground truth and detections, else a dict."""
    num_t = len(IOU_THRESHOLDS)
    gt_ignore = np.array([c or not area_range[0] <= a <= area_range[1] for c, a in zip(gt_crowd, gt_area)], bool)
    gt_order = np.argsort(gt_ignore, kind="mergesort")  # non-ignored first
    gt_ignore, gt_crowd = gt_ignore[gt_order], np.asarray(gt_crowd, bool)[gt_order]
    num_dt = min(len(dt_scores), max_det)
    if len(gt_order) == 0 and num_dt == 0:
        return None
    ious = ious[:num_dt][:, gt_order] if len(gt_order) else np.zeros((num_dt, 0))
    gt_matched = np.zeros((num_t, len(gt_order)), bool)
    dt_matched = np.zeros((num_t, num_dt), bool)
    dt_ignore = np.zeros((num_t, num_dt), bool)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        for d in range(num_dt):
            best, match = min(threshold, 1 - 1e-10), -1
            for g in range(len(gt_order)):
                if gt_matched[t, g] and not gt_crowd[g]:
                    continue
                if match > -1 and not gt_ignore[match] and gt_ignore[g]:
                    break  # ignored ground truth comes last: a real match was found
                if ious[d, g] < best:
                    continue
                best, match = ious[d, g], g
            if match == -1:
                continue
            dt_ignore[t, d] = gt_ignore[match]
            dt_matched[t, d] = True
            gt_matched[t, match] = True
    out_of_range = np.array([not area_range[0] <= a <= area_range[1] for a in dt_area[:num_dt]], bool)
    dt_ignore |= ~dt_matched & out_of_range[None, :]
    return {"scores": np.asarray(dt_scores[:num_dt], float), "dt_matched": dt_matched, "dt_ignore": dt_ignore,
            "gt_ignore": gt_ignore}


def evaluate_ytvis(gt: dict, predictions: Sequence[dict]) -> Dict[str, float]:
    """
    AP/AR (in percent) of ``predictions`` (official results entries) against a YouTube-VIS format JSON ``gt``
    (dict with videos, annotations, categories). Returns YTVIS_METRICS and "AP-<category name>" per category
    with ground truth. Predictions of categories or videos absent from ``gt`` are ignored.
    """
    videos = {v["id"]: v for v in gt["videos"]}
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    cat_ids = [c["id"] for c in categories]
    gts, dts = defaultdict(list), defaultdict(list)
    for ann in gt.get("annotations") or []:
        v = videos[ann["video_id"]]
        track = [_frame_rle(s, v["height"], v["width"]) for s in ann["segmentations"]]
        gts[ann["video_id"], ann["category_id"]].append(
            {"track": track, "crowd": bool(ann.get("iscrowd", 0)), "area": _mean_area(track)})
    for p in predictions:
        if p["video_id"] not in videos or p["category_id"] not in cat_ids:
            continue
        v = videos[p["video_id"]]
        track = [_frame_rle(s, v["height"], v["width"]) for s in p["segmentations"]]
        dts[p["video_id"], p["category_id"]].append({"track": track, "score": float(p["score"]),
                                                     "area": _mean_area(track)})

    num_t, num_r, num_k = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(cat_ids)
    precision = -np.ones((num_t, num_r, num_k, len(AREA_RANGES), len(MAX_DETS)))
    recall = -np.ones((num_t, num_k, len(AREA_RANGES), len(MAX_DETS)))
    for k, cat in enumerate(cat_ids):
        per_video = []
        for vid in videos:
            g, d = gts.get((vid, cat), []), dts.get((vid, cat), [])
            if not g and not d:
                continue
            d = sorted(d, key=lambda x: -x["score"])[: MAX_DETS[-1]]  # stable: ties keep their order
            ious = np.zeros((len(d), len(g)))
            if g and d:
                ious = track_iou([x["track"] for x in d], [x["track"] for x in g])
            per_video.append((ious, [x["crowd"] for x in g], [x["area"] for x in g], [x["score"] for x in d],
                              [x["area"] for x in d]))
        for a, area_range in enumerate(AREA_RANGES.values()):
            for m, max_det in enumerate(MAX_DETS):
                evals = [e for e in (_evaluate_video(*v, area_range, max_det) for v in per_video) if e is not None]
                if not evals:
                    continue
                scores = np.concatenate([e["scores"] for e in evals])
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([e["dt_matched"] for e in evals], axis=1)[:, order]
                ignored = np.concatenate([e["dt_ignore"] for e in evals], axis=1)[:, order]
                num_gt = int(np.count_nonzero(~np.concatenate([e["gt_ignore"] for e in evals])))
                if num_gt == 0:
                    continue
                tps = np.cumsum(matched & ~ignored, axis=1).astype(float)
                fps = np.cumsum(~matched & ~ignored, axis=1).astype(float)
                for t in range(num_t):
                    tp, fp = tps[t], fps[t]
                    rc = tp / num_gt
                    pr = tp / (fp + tp + np.spacing(1))
                    recall[t, k, a, m] = rc[-1] if len(tp) else 0
                    pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr  # precision envelope
                    q = np.zeros(num_r)
                    idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                    valid = idx < len(pr)
                    q[valid] = pr[idx[valid]]
                    precision[t, :, k, a, m] = q

    def summarize(values, iou=None, area="all", max_det=100, per_category=False):
        a, m = list(AREA_RANGES).index(area), MAX_DETS.index(max_det)
        s = values[..., a, m]
        if iou is not None:
            s = s[np.where(np.isclose(IOU_THRESHOLDS, iou))[0]]
        if per_category:
            s = np.moveaxis(s, -1, 0).reshape(s.shape[-1], -1)
            return [float(np.mean(x[x > -1])) * 100 if (x > -1).any() else float("nan") for x in s]
        return float(np.mean(s[s > -1])) * 100 if (s > -1).any() else float("nan")

    results = {
        "AP": summarize(precision),
        "AP50": summarize(precision, iou=0.5),
        "AP75": summarize(precision, iou=0.75),
        "APs": summarize(precision, area="small"),
        "APm": summarize(precision, area="medium"),
        "APl": summarize(precision, area="large"),
        "AR1": summarize(recall, max_det=1),
        "AR10": summarize(recall, max_det=10),
    }
    for cat, ap in zip(categories, summarize(precision, per_category=True)):
        if not np.isnan(ap):
            results[f"AP-{cat['name']}"] = ap
    return results


# ------------------------------------------------------------------------------------------------ evaluator
class YTVISEvaluator(DatasetEvaluator):
    """
    Video instance segmentation evaluator of datasets in the YouTube-VIS format (metadata "json_file").

    ``process`` takes the inputs of the test loader ("video_id" per video) and VideoMaskFormer's outputs;
    ``evaluate`` writes ``output_dir/results.json`` (official results format, e.g. for the YouTube-VIS
    server) and returns {"segm": {AP, AP50, ...}} when the JSON has annotations, else {} (with a warning).
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._logger = logging.getLogger(__name__)
        meta = MetadataCatalog.get(dataset_name)
        self._json_file = meta.get("json_file", None)
        id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
        self._contiguous_to_dataset_id = {v: k for k, v in id_map.items()} if id_map else None
        self._predictions: List[dict] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "video_id" not in inp:
                raise KeyError(f"YTVISEvaluator: an input of '{self._dataset_name}' has no 'video_id' "
                               f"(keys: {sorted(inp)}); is the test mapper the 'ytvis' one?")
            self._predictions.extend(video_output_to_results(inp["video_id"], out, self._contiguous_to_dataset_id))

    def evaluate(self):
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "results.json")
            with atomic_write(path, "w") as f:  # never a truncated results.json (e.g. on a full disk)
                json.dump(predictions, f)
            self._logger.info(f"Wrote {len(predictions)} video predictions to {path}")
        if not self._json_file:
            self._logger.warning(f"Dataset '{self._dataset_name}' has no metadata 'json_file': AP not computed")
            return {}
        with PathManager.open(self._json_file) as f:
            gt = json.load(f)
        if not gt.get("annotations"):
            self._logger.warning(f"'{self._json_file}' has no annotations (a split evaluated by the official server): "
                                 "AP not computed; submit results.json instead")
            return {}
        results = evaluate_ytvis(gt, copy.deepcopy(predictions))
        self._logger.info("Video instance segmentation AP of '%s':\n%s", self._dataset_name,
                          "\n".join(f"  {k}: {results[k]:.2f}" for k in YTVIS_METRICS))
        return OrderedDict({"segm": results})
