"""tools/analyze_query_classes.py: per ground-truth segment, the best-overlapping query's mask IoU and class."""
import importlib.util
import os
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from mask2former.engine import MaskFormerTrainer
from test_training_e2e import PREFIX, register_data, tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    spec = importlib.util.spec_from_file_location("analyze_query_classes",
                                                  os.path.join(ROOT, "tools", "analyze_query_classes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_unknown_or_non_panoptic_splits_and_missing_weights(tmp_path, monkeypatch):
    tool = _load_tool()
    register_data(tmp_path)
    for argv, message in ((["--dataset", "no_such_split"], "'no_such_split' is not a registered dataset"),
                          (["--dataset", f"{PREFIX}_val_instance"], "is not a panoptic split"),
                          (["--dataset", f"{PREFIX}_val_panoptic"], "give the model to analyse as MODEL.WEIGHTS")):
        monkeypatch.setattr(sys, "argv", ["analyze_query_classes.py"] + argv)
        with pytest.raises(SystemExit, match=message):
            tool.main()


def test_one_row_per_segment_with_valid_values(tmp_path):
    tool = _load_tool()
    register_data(tmp_path)
    cfg = tiny_cfg(tmp_path)
    model = MaskFormerTrainer.build_model(cfg).eval()
    rows = tool.segment_rows(model, cfg, f"{PREFIX}_val_panoptic")
    segments = [s for d in DatasetCatalog.get(f"{PREFIX}_val_panoptic") for s in d["segments_info"]]
    assert rows.shape == (len(segments), 6)
    num_things = len(MetadataCatalog.get(f"{PREFIX}_val_panoptic").thing_classes)  # contiguous ids: things first
    assert rows[:, 0].sum() == sum(s["category_id"] < num_things for s in segments)
    assert np.all((rows[:, 2] >= 0) & (rows[:, 2] <= 1)) and np.all((rows[:, 4] >= 0) & (rows[:, 4] <= 1))
    assert set(np.unique(rows[:, 3])) <= {0.0, 1.0}
