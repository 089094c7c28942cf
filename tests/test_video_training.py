"""Video training and evaluation through the shared trainer, on a tiny generated shapes world video set."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset

from mask2former import add_maskformer2_config, add_maskformer2_video_config
from mask2former.data.dataset_mappers import build_dataset_mapper
from mask2former.data.datasets.register_ytvis import register_shapes_world_video
from mask2former.engine import MaskFormerTrainer
from mask2former.evaluation import YTVISEvaluator

from video_testing import REPO, tiny_video_cfg

CONFIG = os.path.join(REPO, "configs", "shapes_world", "video_maskformer2_R18_instance.yaml")
PARAMS = dict(num_train=3, num_val=2, seed=0, min_size=48, max_size=64, min_frames=3, max_frames=5)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return register_shapes_world_video(str(root), prefix=f"swv_train_test_{root.name}", dirname="swv", **PARAMS)


def tiny_cfg(datasets, output_dir):
    """The shapes world video config with the tiny test model's sizes, on the test datasets."""
    cfg = tiny_video_cfg(
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7, "DATASETS.TRAIN", f"('{datasets[0]}',)",
        "DATASETS.TEST", f"('{datasets[1]}',)", "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3,
        "SOLVER.WARMUP_ITERS", 1, "SOLVER.CHECKPOINT_PERIOD", 1000, "TEST.EVAL_PERIOD", 0,
        "DATALOADER.NUM_WORKERS", 0, "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.MIN_SIZE_TEST", 48,
        "OUTPUT_DIR", str(output_dir), "MODEL.MASK_FORMER.TEST.CLIP_LENGTH", 3,
        base=CONFIG)
    return cfg


def test_config_selects_the_video_pieces():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(CONFIG)
    assert cfg.MODEL.META_ARCHITECTURE == "VideoMaskFormer" and cfg.INPUT.DATASET_MAPPER_NAME == "ytvis"
    assert cfg.DATASETS.TRAIN == ("shapes_world_video_train",) and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False


def test_trainer_trains_the_video_model(datasets, tmp_path):
    cfg = tiny_cfg(datasets, tmp_path)
    cfg.freeze()
    trainer = MaskFormerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    # The final evaluation reads whole videos through the trainer's video test loader ("ytvis" mapper).
    assert set(results["segm"]) >= {"AP", "AP50", "AP75", "AR1", "AR10"}
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(v)) for v, _ in history)
    assert trainer.storage.history("loss_dice_2") is not None
    assert isinstance(MaskFormerTrainer.build_evaluator(cfg, datasets[1]), YTVISEvaluator)


def test_evaluation_with_the_video_test_mapper(datasets, tmp_path):
    cfg = tiny_cfg(datasets, tmp_path)
    model = MaskFormerTrainer.build_model(cfg).eval()
    loader = build_detection_test_loader(cfg, datasets[1], mapper=build_dataset_mapper(cfg, is_train=False))
    evaluator = YTVISEvaluator(datasets[1], output_dir=str(tmp_path))
    results = inference_on_dataset(model, loader, evaluator)
    assert set(results["segm"]) >= {"AP", "AP50", "AP75", "AR1", "AR10"}
    assert 0 <= results["segm"]["AR10"] <= 100 and (tmp_path / "results.json").is_file()
