"""tools/eval_dev_split.py: the dev split is a second validation split with its own seed."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    spec = importlib.util.spec_from_file_location("eval_dev_split", os.path.join(ROOT, "tools", "eval_dev_split.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_the_validation_seed_and_several_processes(monkeypatch, tmp_path):
    tool = _load_tool()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["eval_dev_split.py", "--dev-seed", "0", "--eval-only"])
    with pytest.raises(SystemExit, match="must differ from the default data's seed 0"):
        tool.main()
    monkeypatch.setattr(sys, "argv", ["eval_dev_split.py", "--dev-seed", "7", "--num-gpus", "2"])
    with pytest.raises(SystemExit, match="runs in one process"):
        tool.main()
    # The refused call registered the seed-7 dev split, generated on first use into its own folder.
    dev = DatasetCatalog.get("shapes_world_dev_val_sem_seg")
    folder = tmp_path / "shapes_world_dev_seed7"
    assert len(dev) == 50 and all(d["file_name"].startswith(str(folder)) for d in dev)
    assert json.loads((folder / "COMPLETE.json").read_text())["params"]["seed"] == 7
    assert np.asarray(Image.open(dev[0]["file_name"])).ndim == 3
