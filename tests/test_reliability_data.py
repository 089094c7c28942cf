"""Data faults in the middle of a run: with DATALOADER.SKIP_BAD_ITEMS the run skips, counts and lists each bad
item (file and reason; metrics.json and OUTPUT_DIR/skipped_items.json); without it the run stops naming the
file, the dataset index and the iteration. Tiny model, tiny on-disk semantic dataset, the real mapper."""
import json
import os
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from PIL import Image

import train_net
from mask2former.data.dataset_mappers import BadDatasetItemError
from mask2former.engine import MaskFormerTrainer
from test_trainer import TRAIN_SET, _args, _opts, register_tiny_datasets

FAULT_AT = 3  # iteration before which the fault happens (4 images, 2 per batch: every image within 2 iterations)


def _delete(d):
    os.remove(d["file_name"])


def _truncate(d):
    data = open(d["file_name"], "rb").read()
    open(d["file_name"], "wb").write(data[: len(data) // 3])


def _resize(d):
    Image.new("RGB", (20, 28), (200, 30, 30)).save(d["file_name"], format="PNG")


def _bad_label_values(d):
    label = np.full((d["height"], d["width"]), 7, dtype=np.uint8)  # class 7 of 3
    Image.fromarray(label).save(d["sem_seg_file_name"])


def _label_other_size(d):
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(d["sem_seg_file_name"])


FAULTS = {
    "image deleted": (_delete, "does not exist"),
    "image truncated": (_truncate, "cannot be decoded"),
    "image of another size": (_resize, "but the dataset says"),
    "label values changed": (_bad_label_values, "contains label(s) [7]"),
    "label of another size": (_label_other_size, "is 8x8"),
}


def _fault_trainer(fault, victim):
    class FaultTrainer(MaskFormerTrainer):
        def build_hooks(self):
            class Fault(HookBase):
                def before_step(hook):
                    if self.iter == FAULT_AT:
                        fault(victim)

            return [Fault()] + super().build_hooks()

    return FaultTrainer


def _run(tmp_path, monkeypatch, fault, skip, **overrides):
    data = tmp_path / "data"
    register_tiny_datasets(str(data))
    victim = DatasetCatalog.get(TRAIN_SET)[1]
    monkeypatch.setattr(train_net, "Trainer", _fault_trainer(fault, victim))
    opts = _opts(tmp_path / "out", **{
        "INPUT.DATASET_MAPPER_NAME": "mask_former_semantic", "SOLVER.MAX_ITER": 8, "TEST.EVAL_PERIOD": 0,
        "DATASETS.TEST": "()", "DATALOADER.SKIP_BAD_ITEMS": skip, "SOLVER.CHECKPOINT_PERIOD": 100, **overrides,
    })
    return victim, lambda: train_net.main(_args(opts=opts))


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_without_skipping_the_run_stops_naming_file_item_and_iteration(tmp_path, monkeypatch, name):
    fault, reason = FAULTS[name]
    victim, run = _run(tmp_path, monkeypatch, fault, skip=False)
    with pytest.raises(BadDatasetItemError) as e:
        run()
    message = str(e.value)
    assert victim["file_name"] in message and reason in message and "dataset index 1" in message, message
    iteration = int(message.split("training iteration ")[1].split(";")[0])
    assert FAULT_AT <= iteration < FAULT_AT + 2


@pytest.mark.parametrize("name,workers", [(name, 0) for name in sorted(FAULTS)] + [("image deleted", 1)])
def test_with_skipping_the_run_goes_on_and_lists_each_item(tmp_path, monkeypatch, caplog, name, workers):
    fault, reason = FAULTS[name]
    victim, run = _run(tmp_path, monkeypatch, fault, skip=True, **{"DATALOADER.NUM_WORKERS": workers})
    run()
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file()
    skipped = json.loads((out / "skipped_items.json").read_text())
    assert skipped and all(s["file_name"] == victim["file_name"] and reason in s["reason"] for s in skipped)
    assert all(s["iteration"] >= FAULT_AT for s in skipped)
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert rows[-1]["data/skipped_items"] == len(skipped)
    assert f"{len(skipped)} bad dataset item(s) were skipped" in caplog.text


def test_a_vanished_dataset_folder_stops_even_when_skipping(tmp_path, monkeypatch):
    victim, run = _run(tmp_path, monkeypatch, lambda d: shutil.rmtree(os.path.dirname(d["file_name"])), skip=True)
    with pytest.raises(BadDatasetItemError, match="dataset items in a row could not be used") as e:
        run()
    assert os.path.dirname(victim["file_name"]) in str(e.value) and "does not exist" in str(e.value)


def test_a_clean_run_reports_no_skipped_items(tmp_path, monkeypatch, caplog):
    _, run = _run(tmp_path, monkeypatch, lambda d: None, skip=True)
    run()
    assert "No bad dataset items were skipped." in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    assert rows[-1]["data/skipped_items"] == 0
