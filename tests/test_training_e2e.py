"""End to end: the real Mask2Former, the generated shapes-world data, the real mapper and trainer.

A test-sized panoptic run must lower the loss in fp32 and run under AMP (bfloat16 on the CPU) with finite,
decreasing losses; evaluation must then produce PQ, mask AP and mIoU from the one model.
"""
import json
import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from mask2former import add_maskformer2_config, add_maskformer2_video_config
from mask2former.data.datasets.register_shapes_world import register_shapes_world
from mask2former.engine.trainer import MaskFormerTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/shapes_world/maskformer2_R18_panoptic.yaml")
PREFIX = "shapes_world_e2e"


def register_data(root):
    """Generate (once) and register the tiny shapes-world splits under ``root`` (again when another test module
    registered them for its own folder)."""
    for name in [n for n in DatasetCatalog.list() if n.startswith(PREFIX + "_")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_shapes_world(str(root), prefix=PREFIX, num_train=16, num_val=3, seed=5, min_size=96, max_size=128)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    register_data(root)
    return root


def tiny_cfg(output_dir, **overrides):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(CONFIG)
    opts = {
        "DATASETS.TRAIN": f"('{PREFIX}_train_panoptic',)", "DATASETS.TEST": f"('{PREFIX}_val_panoptic',)",
        "OUTPUT_DIR": str(output_dir), "SOLVER.IMS_PER_BATCH": 4, "SOLVER.BASE_LR": 1e-3,
        "SOLVER.WARMUP_ITERS": 10, "SOLVER.CHECKPOINT_PERIOD": 100000, "TEST.EVAL_PERIOD": 0,
        "INPUT.MIN_SIZE_TRAIN": "(96,)", "INPUT.MAX_SIZE_TRAIN": 160, "INPUT.CROP.SIZE": "(96, 96)",
        "INPUT.SIZE_DIVISIBILITY": 96, "INPUT.MIN_SIZE_TEST": 96, "INPUT.MAX_SIZE_TEST": 160,
        "TEST.AUG.MIN_SIZES": "(96, 128)", "TEST.AUG.MAX_SIZE": 160,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32, "MODEL.SEM_SEG_HEAD.MASK_DIM": 32,
        "MODEL.MASK_FORMER.HIDDEN_DIM": 32, "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 64,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 12, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 256,
        "DATALOADER.NUM_WORKERS": 0, "SEED": 1,
    }
    opts.update(overrides)
    cfg.merge_from_list([str(x) for kv in opts.items() for x in kv])
    cfg.freeze()
    return cfg


def losses_by_iteration(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["total_loss"] for r in rows if "total_loss" in r], rows


def train(cfg):
    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer.train()


def test_fp32_training_lowers_the_loss_and_evaluates_all_tasks(data_root, tmp_path):
    cfg = tiny_cfg(tmp_path, **{"SOLVER.MAX_ITER": 160})
    results = train(cfg)
    losses, rows = losses_by_iteration(tmp_path)
    assert len(losses) >= 8  # logged every 20 iterations
    assert sum(losses[-2:]) / 2 < 0.75 * losses[0], losses
    # The final evaluation: PQ, mask AP and mIoU from the one model, in the results and in metrics.json.
    assert {"panoptic_seg", "segm", "sem_seg"} <= set(results)
    assert any("panoptic_seg/PQ" in r and "segm/AP" in r and "sem_seg/mIoU" in r for r in rows)
    # The config's test-time augmentation (TEST.AUG) evaluates instances and semantics again (into
    # metrics.json); panoptic outputs are not augmented.
    assert any("segm_TTA/AP" in r and "sem_seg_TTA/mIoU" in r for r in rows)
    assert not any(key.startswith("panoptic_seg_TTA") for r in rows for key in r)


def test_amp_bf16_training_runs_and_lowers_the_loss(data_root, tmp_path):
    # "always": bfloat16 also on CPUs without bfloat16 instructions, where "auto" would train in float32.
    cfg = tiny_cfg(tmp_path, **{"SOLVER.MAX_ITER": 60, "SOLVER.AMP.ENABLED": True,
                                "SOLVER.AMP.CPU_BFLOAT16": "always", "DATASETS.TEST": "()"})
    train(cfg)
    losses, _ = losses_by_iteration(tmp_path)
    assert len(losses) >= 3 and all(v == v and v < float("inf") for v in losses)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("has_bf16, mode, expected", [
    (True, "auto", "MaskFormerAMPTrainer"), (False, "auto", "MaskFormerSimpleTrainer"),
    (False, "always", "MaskFormerAMPTrainer")])
def test_cpu_amp_uses_bfloat16_only_where_the_cpu_has_it(data_root, tmp_path, monkeypatch, caplog, has_bf16, mode,
                                                         expected):
    from mask2former.engine import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "cpu_has_bfloat16_instructions", lambda: has_bf16)
    cfg = tiny_cfg(tmp_path, **{"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.CPU_BFLOAT16": mode, "DATASETS.TEST": "()"})
    with caplog.at_level("INFO", logger="mask2former.engine.trainer"):
        inner = MaskFormerTrainer(cfg)._trainer
    assert type(inner).__name__ == expected
    said = any("training in float32, since this CPU has no bfloat16 instructions" in r.getMessage()
               for r in caplog.records)
    assert said == (expected == "MaskFormerSimpleTrainer")
