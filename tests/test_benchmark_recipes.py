"""tools/benchmark_recipes.py: variants timed side by side on the same batches, equal wall-clock iterations."""
import importlib.util
import os
import sys

import pytest

from test_training_e2e import PREFIX, register_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_recipes", os.path.join(ROOT, "tools", "benchmark_recipes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_need_unique_names_and_whole_pairs():
    tool = _load_tool()
    assert tool.parse_variants([["a", ""], ["b", "SOLVER.BASE_LR 0.001 SEED 3"]]) == [
        ("a", []), ("b", ["SOLVER.BASE_LR", "0.001", "SEED", "3"])]
    with pytest.raises(SystemExit, match="'a' is given twice"):
        tool.parse_variants([["a", ""], ["a", "SEED 3"]])
    with pytest.raises(SystemExit, match="'b': overrides must be KEY VALUE pairs"):
        tool.parse_variants([["b", "SOLVER.BASE_LR"]])
    with pytest.raises(SystemExit, match="at least one --variant"):
        tool.parse_variants([])


def test_times_every_variant_and_converts_a_budget(tmp_path, monkeypatch, capsys):
    register_data(tmp_path)
    tiny = ["DATASETS.TRAIN", f"('{PREFIX}_train_panoptic',)", "SOLVER.IMS_PER_BATCH", "2",
            "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.CROP.SIZE", "(96, 96)", "INPUT.SIZE_DIVISIBILITY", "96",
            "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
            "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "12", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256"]
    monkeypatch.setattr(sys, "argv", ["benchmark_recipes.py", "--repeats", "2", "--budget-iters", "100",
                                      "--variant", "plain", "", "--variant", "dn",
                                      "MODEL.MASK_FORMER.DN.NUM_GROUPS 2"] + tiny)
    _load_tool().main()
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["plain"][3:5] == ["1.00", "100"]  # the first variant is the reference
    median, mean, ratio, iters = float(lines["dn"][1]), float(lines["dn"][2]), float(lines["dn"][3]), int(lines["dn"][4])
    assert median > 0 and mean > 0 and lines["dn"][5:] == ["MODEL.MASK_FORMER.DN.NUM_GROUPS", "2"]
    assert iters == round(100 / ratio) or abs(iters - 100 / ratio) <= 1  # ratio is printed rounded
