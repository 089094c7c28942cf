"""Long videos: clip schedule, association of queries across clips, clip-wise inference, memory tool, demo."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.modeling import build_model

from mask2former.modeling.tracking.clip_tracker import ClipTracker, clip_windows, iter_clips, match_queries

from video_testing import REPO, tiny_video_cfg


def test_clip_windows():
    assert clip_windows(5, 8, 2) == [(0, 5)]
    assert clip_windows(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert clip_windows(11, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]  # the last clip is shifted back
    for n in range(1, 40):
        windows = clip_windows(n, 6, 2)
        assert windows[0][0] == 0 and windows[-1][1] == n
        assert all(b - a == min(6, n) for a, b in windows)
        assert all(a2 < b1 and b1 - a2 >= 2 for (_, b1), (a2, _) in zip(windows, windows[1:]))  # overlaps
        starts = [s for s, frames in iter_clips(iter(range(n)), 6, 2)]
        assert starts == [a for a, _ in windows]
    clips = list(iter_clips(iter(range(11)), 4, 2))
    assert [c for _, c in clips][-1] == [7, 8, 9, 10]
    with pytest.raises(ValueError, match="no frames"):
        list(iter_clips(iter([]), 4, 2))
    with pytest.raises(ValueError, match="CLIP_OVERLAP"):
        clip_windows(10, 4, 4)


def test_match_queries_recovers_a_permutation():
    g = torch.Generator().manual_seed(0)
    masks = torch.randn(6, 3, 8, 8, generator=g) * 5
    perm = torch.randperm(6, generator=g)
    found = match_queries(masks, masks[perm])  # found[i]: the query of the new clip continuing query i
    assert torch.equal(found, torch.argsort(perm))
    assert torch.equal(masks[perm][found], masks)


def _oracle_video(num_frames, num_tracks, h, w, seed):
    """Ground-truth tracks: boxes moving across the frames, one class each; -> logits (Q, K+1), (Q, T, h, w)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.full((num_tracks, num_frames, h, w), -8.0)
    for q in range(num_tracks):
        x, y = torch.randint(0, w - 6, (1,), generator=g).item(), torch.randint(0, h - 6, (1,), generator=g).item()
        vx = 1 if q % 2 else -1
        for t in range(num_frames):
            xx = (x + vx * t) % (w - 6)
            masks[q, t, y: y + 5, xx: xx + 5] = 8.0
    logits = torch.full((num_tracks, 4), -5.0)
    logits[torch.arange(num_tracks), torch.arange(num_tracks) % 3] = 5.0
    return logits, masks


def test_tracker_chains_permuted_clips_into_the_original_tracks():
    num_frames, clip, overlap, q = 23, 6, 2, 5
    logits, masks = _oracle_video(num_frames, q, 12, 16, seed=1)
    g = torch.Generator().manual_seed(2)
    tracker = ClipTracker(lambda m: m > 0, 12, 16)
    for start, end in clip_windows(num_frames, clip, overlap):
        perm = torch.randperm(q, generator=g)  # each clip lists the instances in another order
        noise = 0.1 * torch.randn(q, end - start, 12, 16, generator=g)
        tracker.add_clip(start, logits[perm], masks[perm, start:end] + noise)
    result = tracker.finish(topk=q)
    assert result["length"] == num_frames and len(result["pred_rles"]) == q
    for score, label, rles in zip(result["pred_scores"], result["pred_labels"], result["pred_rles"]):
        decoded = np.stack([mask_util.decode(r) if r is not None else np.zeros((12, 16), np.uint8) for r in rles])
        matches = [q_ for q_ in range(q) if np.array_equal(decoded, (masks[q_] > 0).numpy().astype(np.uint8))]
        assert len(matches) == 1 and label == matches[0] % 3  # a whole ground-truth track, with its class
        assert score > 0.99


def test_tracker_averages_overlapping_predictions():
    tracker = ClipTracker(lambda m: m, 1, 1)
    out = []
    tracker.to_output_masks = lambda m: (out.append(m.clone()), m > 0)[1]
    logits = torch.zeros(1, 2)
    tracker.add_clip(0, logits, torch.tensor([[[[1.0]], [[3.0]]]]))
    tracker.add_clip(1, logits, torch.tensor([[[[5.0]], [[7.0]]]]))
    tracker.finish(1)
    assert [o.item() for o in out] == [1.0, 4.0, 7.0]  # frame 1 is predicted by both clips: mean logits


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_video_cfg()).eval()


def _frames(n, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for _ in range(n)]


def test_clip_inference_of_a_short_video_is_the_whole_video_inference(model):
    frames = _frames(5)
    with torch.no_grad():
        (whole,) = model([{"image": frames, "height": 80, "width": 112}])
    result = model.segment_long_video(iter(frames), 80, 112, clip_length=8, clip_overlap=2)
    assert result["pred_scores"] == pytest.approx(whole["pred_scores"], abs=1e-6)
    assert result["pred_labels"] == whole["pred_labels"]
    for rles, masks in zip(result["pred_rles"], whole["pred_masks"]):
        decoded = torch.stack([torch.zeros(80, 112, dtype=torch.bool) if r is None else
                               torch.from_numpy(mask_util.decode(r).astype(bool)) for r in rles])
        assert torch.equal(decoded, masks)


def test_forward_uses_clips_for_videos_longer_than_clip_length(model):
    frames = _frames(9)
    model.clip_length, model.clip_overlap = 4, 2
    try:
        with torch.no_grad():
            (out,) = model([{"image": frames, "height": 40, "width": 56}])
        expected = model.segment_long_video(iter(frames), 40, 56)
    finally:
        model.clip_length, model.clip_overlap = 0, 2
    assert len(out["pred_masks"]) == 10 and out["pred_masks"][0].shape == (9, 40, 56)
    assert out["pred_scores"] == expected["pred_scores"]
    with pytest.raises(ValueError, match="frame 4 is 50x40"):
        model.segment_long_video(iter(_frames(4) + _frames(2, 40, 50)), 40, 56, 3, 1)


def test_memory_benchmark_runs(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark_video_memory.py"), "--frames", "5",
           "--whole-frames", "--clip-length", "4", "--clip-overlap", "1", "--height", "32", "--width", "32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| clips") or line.startswith("| whole")]
    assert len(lines) == 1 and lines[0].split("|")[2].strip() == "5"


def _write_frames(folder, n, size=(40, 56)):
    os.makedirs(folder, exist_ok=True)
    g = np.random.default_rng(0)
    for t in range(n):
        cv2.imwrite(os.path.join(folder, f"{t:05d}.jpg"), g.integers(0, 255, (*size, 3), dtype=np.uint8))


def test_video_demo_writes_the_annotated_video_and_results(tmp_path, model):
    sys.path.insert(0, REPO)
    from demo.predictor import DemoError
    from demo.video_demo import main, run_video_demo, setup_cfg

    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(tiny_video_cfg("MODEL.WEIGHTS", str(weights), "INPUT.MIN_SIZE_TEST", 40).dump())
    _write_frames(tmp_path / "frames", 7)
    out_video = tmp_path / "out" / "annotated.avi"
    code = main(["--config-file", str(cfg_file), "--input", str(tmp_path / "frames"), "--output", str(out_video),
                 "--confidence-threshold", "0", "--clip-length", "4", "--clip-overlap", "2",
                 "--save-json", str(tmp_path / "out" / "results.json")])
    assert code == 0
    video = cv2.VideoCapture(str(out_video))
    count = 0
    while video.read()[0]:
        count += 1
    assert count == 7
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == 10 and all(len(r["segmentations"]) == 7 for r in results)

    cfg = setup_cfg(str(cfg_file), [])
    run_video_demo(cfg, str(tmp_path / "frames"), str(tmp_path / "pngs"), confidence_threshold=0.0, clip_length=4)
    assert sorted(os.listdir(tmp_path / "pngs")) == [f"{t:05d}.png" for t in range(7)]

    # bad inputs: a frame of another size, an empty folder, a missing input
    cv2.imwrite(str(tmp_path / "frames" / "00003.jpg"), np.zeros((30, 56, 3), np.uint8))
    with pytest.raises(DemoError, match=r"00003.jpg is 56x30 .* first frame is 56x40"):
        run_video_demo(cfg, str(tmp_path / "frames"), str(tmp_path / "o2"), clip_length=4)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DemoError, match="holds no frames"):
        run_video_demo(cfg, str(tmp_path / "empty"), str(tmp_path / "o3"))
    assert main(["--config-file", str(cfg_file), "--input", str(tmp_path / "nope.mp4"), "--output", "x.mp4"]) == 2
