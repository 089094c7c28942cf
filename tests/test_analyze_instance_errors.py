"""tools/analyze_instance_errors.py: class-agnostic AP, coverage by size and the mask-resolution ceiling."""
import importlib.util
import json
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    path = os.path.join(ROOT, "tools", "analyze_instance_errors.py")
    spec = importlib.util.spec_from_file_location("analyze_instance_errors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _files(tmp_path):
    """One 64 x 64 image with a big square (class 1) and a 6 x 6 dot (class 2); the big square is predicted
    exactly but as class 2, the dot is missed."""
    square = np.zeros((64, 64), bool)
    square[8:48, 8:48] = True
    dot = np.zeros((64, 64), bool)
    dot[56:62, 56:62] = True
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 64}],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "dot"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(square), "area": int(square.sum()),
             "bbox": [8, 8, 40, 40], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": _rle(dot), "area": int(dot.sum()),
             "bbox": [56, 56, 6, 6], "iscrowd": 0},
        ],
    }
    results = [{"image_id": 1, "category_id": 2, "segmentation": _rle(square), "score": 0.9, "bbox": [8, 8, 40, 40]}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    return str(tmp_path / "gt.json"), str(tmp_path / "res.json")


def test_class_confusion_shows_as_the_gap_to_class_agnostic_ap(tmp_path):
    tool = _load_tool()
    gt, results = tool.load(*_files(tmp_path))
    assert tool.mask_ap(gt, results, use_cats=True)["AP"] == 0.0  # the only prediction has the wrong class
    agnostic = tool.mask_ap(gt, results, use_cats=False)
    assert agnostic["APm"] == pytest.approx(100.0) and agnostic["APs"] == 0.0  # square found, dot missed
    assert "bbox" in results[0]  # the caller's results are left as they were

    rows = tool.best_ious(gt, results)  # (area, any class, same class, score >= 0.3)
    np.testing.assert_allclose(rows[:, 0], [1600, 36])
    np.testing.assert_allclose(rows[0, 1:], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(rows[1, 1:], [0.0, 0.0, 0.0])


def test_resolution_ceiling_loses_small_objects_first(tmp_path):
    tool = _load_tool()
    gt, _ = tool.load(*_files(tmp_path))
    coarse = dict(tool.ceiling_ious(gt, test_size=32, stride=4).tolist())  # masks at 8 x 8 cells
    fine = dict(tool.ceiling_ious(gt, test_size=64, stride=1).tolist())  # the original resolution
    assert fine[1600] == pytest.approx(1.0) and fine[36] == pytest.approx(1.0)
    assert coarse[1600] > 0.9 and coarse[36] < coarse[1600]


def test_main_prints_tables_and_rejects_bad_results(tmp_path, monkeypatch, capsys):
    tool = _load_tool()
    gt_file, res_file = _files(tmp_path)
    monkeypatch.setattr(sys, "argv", ["analyze_instance_errors.py", gt_file, res_file, "--test-size", "32"])
    tool.main()
    out = capsys.readouterr().out
    assert "| class-agnostic |" in out and "ceiling at 32 px" in out and "| [0^2, 10^2) | 1 |" in out
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 1}]))
    monkeypatch.setattr(sys, "argv", ["analyze_instance_errors.py", gt_file, str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="bad.json: results lack"):
        tool.main()
