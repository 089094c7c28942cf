"""A full disk (ENOSPC) while an evaluation writes its outputs: the error names the file and its free space.

The failing file is made a symbolic link to /dev/full, whose writes fail with ENOSPC in the kernel, as on a full
disk: the OSError of the write names no file, the error the user sees must.
"""
import contextlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Instances

import train_net
from mask2former import add_maskformer2_config, add_maskformer2_video_config
from mask2former.engine import MaskFormerTrainer
from mask2former.utils.disk import DiskFullError, report_full_disk
from test_trainer import TinyTrainer, _args, _opts, tiny_data  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")

H, W = 24, 32
DATASET = "m2f_full_disk_eval"


def _full(path):
    """Make ``path`` a link to /dev/full: opening it works, writing to it fails with ENOSPC."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink("/dev/full", path)


# ---------------------------------------------------------------------------------------------- the mechanism
def test_a_failed_write_is_reported_with_the_file_opened_last(tmp_path):
    _full(tmp_path / "b.json")
    with pytest.raises(DiskFullError) as e:
        with report_full_disk(str(tmp_path / "default")):
            with open(tmp_path / "a.json", "w") as f:
                f.write("{}")
            with open(tmp_path / "b.json", "w") as f:  # buffered: the error comes when the file is closed
                f.write("{}")
    assert f"writing '{tmp_path / 'b.json'}'" in str(e.value) and " free on its filesystem" in str(e.value)
    assert e.value.path == str(tmp_path / "b.json")

    with pytest.raises(DiskFullError, match="writing '.*default'"):  # no file opened: the default
        with report_full_disk(str(tmp_path / "default")):
            raise OSError(28, os.strerror(28))
    with pytest.raises(ValueError):  # other errors pass unchanged
        with report_full_disk(str(tmp_path / "default")):
            raise ValueError("not a full disk")


# ---------------------------------------------------------------------------------------------- evaluators
class _Predictor(nn.Module):
    """Predicts, for every image, class 0 on the left half and class 1 on the right half: as a semantic map,
    as one instance of class 0 and as two panoptic segments."""

    def forward(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            h, w = x["height"], x["width"]
            left = torch.zeros(h, w, dtype=torch.bool)
            left[:, : w // 2] = True
            instances = Instances((h, w))
            instances.pred_masks = left[None]
            instances.pred_boxes = BitMasks(left[None]).get_bounding_boxes()
            instances.scores = torch.tensor([0.9])
            instances.pred_classes = torch.tensor([0])
            panoptic = torch.where(left, 1, 2).int()
            segments = [{"id": 1, "category_id": 0, "isthing": True}, {"id": 2, "category_id": 1, "isthing": False}]
            outputs.append({"sem_seg": torch.stack([left, ~left]).float(), "instances": instances,
                            "panoptic_seg": (panoptic, segments)})
        return outputs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two images with semantic, panoptic and instance ground truth, registered as a COCO-panoptic dataset."""
    root = tmp_path_factory.mktemp("full_disk_eval")
    os.makedirs(root / "panoptic")
    dicts, images, panoptic_anns, instance_anns = [], [], [], []
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / f"{i}.png")
        label = np.zeros((H, W), np.uint8)
        label[:, W // 2:] = 1
        Image.fromarray(label).save(root / f"{i}_sem.png")
        Image.fromarray(np.stack([label + 1, 0 * label, 0 * label], -1)).save(root / "panoptic" / f"{i}.png")
        dicts.append({"file_name": str(root / f"{i}.png"), "height": H, "width": W, "image_id": i,
                      "sem_seg_file_name": str(root / f"{i}_sem.png")})
        images.append({"id": i, "file_name": f"{i}.png", "height": H, "width": W})
        panoptic_anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": [
            {"id": 1, "category_id": 1, "iscrowd": 0, "area": H * W // 2, "bbox": [0, 0, W // 2, H]},
            {"id": 2, "category_id": 2, "iscrowd": 0, "area": H * W // 2, "bbox": [W // 2, 0, W // 2, H]}]})
        instance_anns.append({"id": i + 1, "image_id": i, "category_id": 1, "iscrowd": 0, "area": H * W // 2,
                              "bbox": [0, 0, W // 2, H], "segmentation": [[0, 0, W // 2, 0, W // 2, H, 0, H]]})
    categories = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]
    (root / "panoptic.json").write_text(json.dumps({"images": images, "annotations": panoptic_anns,
                                                    "categories": categories}))
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": instance_anns,
                                                     "categories": categories[:1]}))
    if DATASET in DatasetCatalog.list():
        DatasetCatalog.remove(DATASET)
        MetadataCatalog.remove(DATASET)
    DatasetCatalog.register(DATASET, lambda: dicts)
    MetadataCatalog.get(DATASET).set(
        evaluator_type="coco_panoptic_seg", json_file=str(root / "instances.json"),
        panoptic_json=str(root / "panoptic.json"), panoptic_root=str(root / "panoptic"), label_divisor=1000,
        ignore_label=255, thing_classes=["a"], stuff_classes=["a", "b"],
        thing_dataset_id_to_contiguous_id={1: 0}, stuff_dataset_id_to_contiguous_id={1: 0, 2: 1})
    return root


def _cfg(output_dir, task):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), (DATASET,)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = H, 1000
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(output_dir)
    test = cfg.MODEL.MASK_FORMER.TEST
    test.SEMANTIC_ON, test.INSTANCE_ON, test.PANOPTIC_ON = task == "semantic", task == "instance", task == "panoptic"
    return cfg


@contextlib.contextmanager
def _fixed_temporary_folder(folder):
    yield str(folder)


def test_the_evaluation_writes_everything_when_there_is_room(dataset, tmp_path):  # the baseline of the cases below
    for task in ("semantic", "instance", "panoptic"):
        results = MaskFormerTrainer.test(_cfg(tmp_path, task), _Predictor())
        assert results
    assert sorted(os.listdir(tmp_path / "inference")) == ["coco_instances_results.json", "instances_predictions.pth",
                                                           "predictions.json", "sem_seg_evaluation.pth",
                                                           "sem_seg_predictions.json"]


@pytest.mark.parametrize("task, name", [
    ("semantic", "sem_seg_predictions.json"), ("semantic", "sem_seg_evaluation.pth"),
    ("instance", "instances_predictions.pth"), ("instance", "coco_instances_results.json"),
    ("panoptic", "predictions.json"), ("panoptic", "1.png")])
def test_an_evaluation_output_on_a_full_disk_is_named(dataset, tmp_path, monkeypatch, task, name):
    if name.endswith(".png"):  # the panoptic PNGs go to a temporary folder, maybe on another filesystem
        from detectron2.evaluation import panoptic_evaluation

        target = tmp_path / "panoptic_eval" / name
        monkeypatch.setattr(panoptic_evaluation.tempfile, "TemporaryDirectory",
                            lambda prefix: _fixed_temporary_folder(target.parent))
    else:
        target = tmp_path / "inference" / name
    _full(str(target))
    with pytest.raises(DiskFullError) as e:
        MaskFormerTrainer.test(_cfg(tmp_path, task), _Predictor())
    assert f"No space left on the device writing '{target}' (" in str(e.value)
    assert " free on its filesystem" in str(e.value)


def test_the_video_results_on_a_full_disk_are_named_and_not_left_truncated(tmp_path):
    from mask2former.evaluation.ytvis_evaluation import YTVISEvaluator

    MetadataCatalog.get("m2f_full_disk_video").set(thing_dataset_id_to_contiguous_id={1: 0})
    evaluator = YTVISEvaluator("m2f_full_disk_video", output_dir=str(tmp_path), distributed=False)
    masks = torch.zeros(1, 2, H, W, dtype=torch.bool)
    masks[0, :, 2:8, 3:9] = True
    evaluator.process([{"video_id": 1}], [{"pred_scores": [0.8], "pred_labels": [0], "pred_masks": masks,
                                           "image_size": (H, W)}])
    _full(str(tmp_path / f".results.json.tmp-{os.getpid()}"))  # the temporary file results.json is written to
    with pytest.raises(DiskFullError, match=f"writing '{tmp_path / 'results.json'}' .* free on its filesystem"):
        evaluator.evaluate()
    assert os.listdir(tmp_path) == []  # no truncated results.json, no temporary file


def test_training_that_finds_the_disk_full_at_evaluation_names_the_file_and_the_checkpoint(  # noqa: F811
        tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_net, "Trainer", TinyTrainer)
    _full(str(tmp_path / "inference" / "sem_seg_predictions.json"))
    opts = _opts(tmp_path, **{"SOLVER.MAX_ITER": 4, "TEST.EVAL_PERIOD": 2, "SOLVER.CHECKPOINT_PERIOD": 2})
    with pytest.raises(DiskFullError) as e:
        train_net.main(_args(opts=opts))
    message = str(e.value)
    assert f"writing '{tmp_path / 'inference' / 'sem_seg_predictions.json'}'" in message and " free" in message
    assert "model_0000001.pth' is intact" in message  # the checkpoint of iteration 1, written before evaluating
    torch.load(tmp_path / "model_0000001.pth", weights_only=False)
