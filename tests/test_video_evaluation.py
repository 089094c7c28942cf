"""Video instance segmentation AP (YouTube-VIS definition): hand-computed cases, COCO cross-check, evaluator."""
import copy
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import MetadataCatalog

from mask2former.evaluation import YTVISEvaluator
from mask2former.evaluation.ytvis_evaluation import evaluate_ytvis, track_iou, video_output_to_results

H, W = 20, 30


def box(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def enc(mask):
    if mask is None or not mask.any():
        return None
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": r["counts"].decode("ascii")}


def dataset(tracks, num_frames=2, num_videos=1):
    """tracks: list of (video_id, category_id, [mask or None per frame])."""
    videos = [{"id": v, "file_names": [f"{v}/{t}.jpg" for t in range(num_frames)], "height": H, "width": W,
               "length": num_frames} for v in range(1, num_videos + 1)]
    anns = [{"id": i + 1, "video_id": v, "category_id": c, "iscrowd": 0, "segmentations": [enc(m) for m in masks],
             "areas": [None if m is None else int(m.sum()) for m in masks], "bboxes": [None] * num_frames}
            for i, (v, c, masks) in enumerate(tracks)]
    return {"videos": videos, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def pred(video_id, category, score, masks):
    return {"video_id": video_id, "category_id": category, "score": score, "segmentations": [enc(m) for m in masks]}


A = [box(0, 0, 10, 10), box(2, 0, 12, 10)]  # a 100-pixel box moving right
B = [box(15, 5, 25, 15), None]  # visible in frame 0 only


def test_spatio_temporal_iou_sums_over_frames():
    # frame 0: identical (I = U = 100); frame 1: prediction shifted by 4 px (I = 60, U = 140)
    shifted = [A[0], box(6, 0, 16, 10)]
    assert track_iou([[enc(m) for m in shifted]], [[enc(m) for m in A]])[0, 0] == pytest.approx(160 / 240)
    # a prediction in a frame where the instance is absent adds its area to the union
    extra = [B[0], box(0, 0, 5, 10)]
    assert track_iou([[enc(m) for m in extra]], [[enc(m) for m in B]])[0, 0] == pytest.approx(100 / 150)


def test_perfect_prediction_is_100():
    gt = dataset([(1, 1, A), (1, 2, B)])
    r = evaluate_ytvis(gt, [pred(1, 1, 0.9, A), pred(1, 2, 0.8, B)])
    for key in ("AP", "AP50", "AP75", "APs", "AR10"):
        assert r[key] == pytest.approx(100.0), key
    assert r["AR1"] == pytest.approx(100.0)  # one instance per category and video
    assert np.isnan(r["APm"]) and np.isnan(r["APl"])  # no ground truth of those sizes


def test_partial_overlap_counts_at_the_thresholds_below_its_iou():
    """IoU 160/240 = 0.667 (the mean of per-frame IoUs would be 0.71): a match at .50 .55 .60 .65 only."""
    gt = dataset([(1, 1, A)])
    r = evaluate_ytvis(gt, [pred(1, 1, 0.9, [A[0], box(6, 0, 16, 10)])])
    assert r["AP"] == pytest.approx(40.0) and r["AP50"] == pytest.approx(100.0) and r["AP75"] == pytest.approx(0.0)
    assert r["AR1"] == pytest.approx(40.0)


def test_missed_instance_halves_recall():
    gt = dataset([(1, 1, A), (1, 1, [box(20, 10, 30, 20), box(20, 10, 30, 20)])])
    r = evaluate_ytvis(gt, [pred(1, 1, 0.9, A)])
    assert r["AR10"] == pytest.approx(50.0)
    assert r["AP"] == pytest.approx(100 * 51 / 101)  # precision 1 up to recall .5: 51 of 101 recall points


def test_false_positives_lower_precision_by_rank():
    gt = dataset([(1, 1, A)])
    fp = pred(1, 1, 0.95, [box(20, 10, 30, 20), None])
    tp = pred(1, 1, 0.5, A)
    assert evaluate_ytvis(gt, [fp, tp])["AP"] == pytest.approx(50.0)  # the hit comes second: precision 1/2
    assert evaluate_ytvis(gt, [dict(fp, score=0.1), tp])["AP"] == pytest.approx(100.0)  # ranked after the hit
    # wrong class: a false positive of class 2 (no ground truth there) and a miss of class 1
    r = evaluate_ytvis(gt, [pred(1, 2, 0.9, A)])
    assert r["AP"] == pytest.approx(0.0) and "AP-b" not in r


def test_detections_per_video_are_counted_across_videos():
    gt = dataset([(1, 1, A), (2, 1, A)], num_videos=2)
    r = evaluate_ytvis(gt, [pred(1, 1, 0.9, A), pred(2, 1, 0.8, [None, None])])
    assert r["AP"] == pytest.approx(100 * 51 / 101) and r["AP-a"] == r["AP"]


def test_crowd_ground_truth_is_ignored():
    gt = dataset([(1, 1, A), (1, 1, B)])
    gt["annotations"][1]["iscrowd"] = 1
    r = evaluate_ytvis(gt, [pred(1, 1, 0.9, A), pred(1, 1, 0.95, B)])  # the crowd match is neither TP nor FP
    assert r["AP"] == pytest.approx(100.0)


def test_single_frame_videos_give_coco_ap():
    """With one frame per video, YouTube-VIS AP is COCO mask AP: compare with pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)

    def rect():
        m = np.zeros((H, W), np.uint8)
        y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
        m[y: y + rng.integers(3, 12), x: x + rng.integers(3, 14)] = 1
        return m

    tracks, preds, dets = [], [], []
    for v in range(1, 41):
        gts = [(rect(), int(rng.integers(1, 3))) for _ in range(rng.integers(0, 4))]
        tracks += [(v, c, [m]) for m, c in gts]
        for _ in range(rng.integers(0, 6)):
            if gts and rng.random() < 0.7:
                m, c = gts[rng.integers(len(gts))]
                m = np.roll(m, tuple(rng.integers(-1, 2, 2)), (0, 1))
            else:
                m, c = rect(), int(rng.integers(1, 3))
            score = float(rng.random())
            preds.append(pred(v, c, score, [m]))
            dets.append({"image_id": v, "category_id": c, "score": score, "segmentation": enc(m)})
    gt = dataset(tracks, num_frames=1, num_videos=40)
    ours = evaluate_ytvis(gt, preds)

    coco = COCO()
    coco.dataset = {
        "images": [{"id": v["id"], "height": H, "width": W} for v in gt["videos"]],
        "annotations": [{"id": a["id"], "image_id": a["video_id"], "category_id": a["category_id"], "iscrowd": 0,
                         "segmentation": a["segmentations"][0], "area": float(a["areas"][0]), "bbox": [0, 0, 1, 1]}
                        for a in gt["annotations"]],
        "categories": gt["categories"],
    }
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    expected = dict(zip(["AP", "AP50", "AP75", "AR1", "AR10"], 100 * ev.stats[[0, 1, 2, 6, 7]]))
    assert 5 < expected["AP"] < 95  # a non-trivial case
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key


def test_results_in_the_official_format():
    masks = torch.zeros((2, H, W), dtype=torch.bool)
    masks[0, :5, :5] = True
    out = {"pred_scores": [0.7], "pred_labels": [1], "pred_masks": [masks]}
    (r,) = video_output_to_results(4, out, {0: 3, 1: 8})
    assert set(r) == {"video_id", "score", "category_id", "segmentations"}
    assert r["video_id"] == 4 and r["category_id"] == 8 and r["score"] == pytest.approx(0.7)
    assert r["segmentations"][1] is None and isinstance(r["segmentations"][0]["counts"], str)
    assert mask_util.decode(r["segmentations"][0]).sum() == 25
    json.dumps(r)
    with pytest.raises(ValueError, match="no dataset category id"):
        video_output_to_results(4, out, {0: 3})


def test_evaluator_writes_results_and_reports_ap(tmp_path):
    gt = dataset([(1, 1, A), (1, 2, B)])
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps(gt))
    name = f"test_ytvis_eval_{tmp_path.name}"
    MetadataCatalog.get(name).set(json_file=str(json_file), thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
                                  evaluator_type="ytvis")
    evaluator = YTVISEvaluator(name, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    as_tensor = lambda ms: torch.as_tensor(np.stack([np.zeros((H, W), np.uint8) if m is None else m for m in ms]))
    evaluator.process([{"video_id": 1}], [{"pred_scores": [0.9, 0.3], "pred_labels": [0, 1],
                                          "pred_masks": [as_tensor(A) > 0, as_tensor(B) > 0]}])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["category_id"], r["score"]) for r in written] == [(1, 0.9), (2, 0.3)]
    # a split without public annotations: results are written, no AP
    json_file.write_text(json.dumps({k: v for k, v in gt.items() if k != "annotations"}))
    evaluator.reset()
    evaluator.process([{"video_id": 1}], [{"pred_scores": [], "pred_labels": [], "pred_masks": []}])
    assert evaluator.evaluate() == {}
