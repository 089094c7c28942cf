"""MaskFormerTrainer, train_net.py and the launcher, on a tiny model and a tiny on-disk dataset.

The tiny segmentor and datasets are registered here under names of their own, so that these tests do
not depend on the real Mask2Former model or datasets.
"""
import itertools
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from mask2former import add_maskformer2_config, add_maskformer2_video_config
from mask2former.engine import (
    MaskFormerAMPTrainer,
    MaskFormerSimpleTrainer,
    MaskFormerTrainer,
    MaskFormerWithTTA,
    SemanticSegmentorWithTTA,
    launch,
)
from mask2former.engine.tta import fuse_query_predictions
from mask2former.modeling.postprocessing import instance_inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import train_net  # noqa: E402

TRAIN_SET = "m2f_trainer_test_train"
VAL_SET = "m2f_trainer_test_val"
NUM_CLASSES = 3
COLORS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.uint8)  # RGB per class


@META_ARCH_REGISTRY.register()
class TrainerTestTinySegmentor(nn.Module):
    """Per-pixel classifier: conv + GroupNorm "backbone", a 1x1 conv predictor. For test-time augmentation it
    has MaskFormer's inference interface, one "query" per class: its mask logits are the class's pixel logits."""

    semantic_on, instance_on = True, False

    def __init__(self, cfg):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.level_embed = nn.Parameter(torch.zeros(8))
        self.predictor = nn.Conv2d(8, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 1)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.seen_files = []  # training images, in order

    def logits(self, batched_inputs):
        device = self.pixel_mean.device
        images = [(x["image"].to(device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, 1)
        return self.predictor(self.backbone(images.tensor) + self.level_embed.view(1, -1, 1, 1)), images

    def forward(self, batched_inputs):
        if self.training:
            logits, _ = self.logits(batched_inputs)
            device = logits.device
            self.seen_files += [x["file_name"] for x in batched_inputs]
            targets = [x["sem_seg"].to(device) for x in batched_inputs]
            targets = ImageList.from_tensors(targets, 1, pad_value=255).tensor.long()
            return {
                "loss_ce": F.cross_entropy(logits, targets, ignore_index=255),
                "loss_embed": 1e-3 * self.level_embed.pow(2).sum(),
            }
        return [self.inference_single(q["pred_logits"], q["pred_masks"], q["image_size"], x["height"], x["width"])
                for q, x in zip(self.predict_queries(batched_inputs), batched_inputs)]

    def predict_queries(self, batched_inputs):
        logits, images = self.logits(batched_inputs)
        num_classes = logits.shape[1]
        return [{"pred_logits": torch.eye(num_classes, num_classes + 1), "pred_masks": r, "image_size": size}
                for r, size in zip(logits, images.image_sizes)]

    def inference_single(self, mask_cls, mask_pred, image_size, height, width, tasks=None):
        return {"sem_seg": sem_seg_postprocess(mask_pred.softmax(0), image_size, height, width)}


class TinyTrainer(MaskFormerTrainer):
    """The tiny dataset has plain images + sem_seg files: detectron2's DatasetMapper reads them."""

    @classmethod
    def build_train_mapper(cls, cfg):
        return DatasetMapper(cfg, is_train=True)


def _write_split(root, split, sizes, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    dicts = []
    for i, (h, w) in enumerate(sizes):
        label = np.zeros((h, w), dtype=np.uint8)
        label[:, w // 2:] = 1
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        label[y:y + h // 3, x:x + w // 3] = 2
        image = COLORS[label] + rng.integers(0, 20, size=(h, w, 3), dtype=np.uint8)
        label[0, :] = 255  # an ignored row
        image_file = os.path.join(root, split, f"{i}.png")
        label_file = os.path.join(root, split, f"{i}_label.png")
        Image.fromarray(image).save(image_file)
        Image.fromarray(label).save(label_file)
        dicts.append({"file_name": image_file, "sem_seg_file_name": label_file, "height": h, "width": w,
                      "image_id": i})
    return dicts


def register_tiny_datasets(root):
    """Write 4 training and 2 validation images under ``root`` and register them (idempotent)."""
    splits = {TRAIN_SET: _write_split(root, "train", [(32, 32)] * 4, seed=0),
              VAL_SET: _write_split(root, "val", [(24, 40), (40, 24)], seed=1)}
    for name, dicts in splits.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda d=dicts: d)
        MetadataCatalog.get(name).set(stuff_classes=["red", "green", "blue"], ignore_label=255,
                                      evaluator_type="sem_seg")


def _opts(output_dir, **overrides):
    opts = {
        "MODEL.META_ARCHITECTURE": "TrainerTestTinySegmentor",
        "MODEL.DEVICE": "cpu",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": NUM_CLASSES,
        "DATASETS.TRAIN": f"('{TRAIN_SET}',)",
        "DATASETS.TEST": f"('{VAL_SET}',)",
        "INPUT.MIN_SIZE_TRAIN": "(32,)",
        "INPUT.MAX_SIZE_TRAIN": 64,
        "INPUT.MIN_SIZE_TEST": 32,
        "INPUT.MAX_SIZE_TEST": 64,
        "DATALOADER.NUM_WORKERS": 0,
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.MAX_ITER": 4,
        "SOLVER.WARMUP_ITERS": 1,
        "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR",
        "SOLVER.CHECKPOINT_PERIOD": 2,
        "SOLVER.CLIP_GRADIENTS.ENABLED": True,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 0.01,
        "TEST.EVAL_PERIOD": 2,
        "SEED": 1,
        "OUTPUT_DIR": str(output_dir),
    }
    opts.update(overrides)
    return [str(x) for kv in opts.items() for x in kv]


def _args(*flags, opts):
    return default_argument_parser().parse_args([*flags, *opts])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_data")
    register_tiny_datasets(str(root))
    return str(root)


@pytest.fixture
def tiny_trainer(monkeypatch):
    monkeypatch.setattr(train_net, "Trainer", TinyTrainer)


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- train_net.py end to end
def test_train_evaluate_checkpoint_resume(tiny_data, tiny_trainer, tmp_path):
    out = tmp_path / "run"
    results = train_net.main(_args(opts=_opts(out)))
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
    assert os.path.isfile(out / "inference" / "sem_seg_predictions.json")  # OUTPUT_DIR/inference
    checkpoints = sorted(p for p in os.listdir(out) if p.endswith(".pth"))
    assert checkpoints == ["model_0000001.pth", "model_0000003.pth", "model_final.pth"]  # CHECKPOINT_PERIOD 2

    metrics = _metrics(out)
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [3]  # written every 20 iterations + end
    assert [m["iteration"] for m in metrics if "sem_seg/mIoU" in m] == [1, 4]  # TEST.EVAL_PERIOD 2, final
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))  # TensorBoard

    checkpoint = torch.load(out / "model_final.pth", weights_only=False)
    state = checkpoint["trainer"]
    assert state["iteration"] == 3
    assert state["hooks"]["LRScheduler"]["last_epoch"] == 4  # WarmupPolyLR saved by the hook
    assert all(s["step"] == 4 for s in state["_trainer"]["optimizer"]["state"].values())  # AdamW state

    # --resume: continues from iteration 4 with the optimizer and scheduler state
    results = train_net.main(_args("--resume", opts=_opts(out, **{"SOLVER.MAX_ITER": 6, "TEST.EVAL_PERIOD": 0})))
    state = torch.load(out / "model_final.pth", weights_only=False)["trainer"]
    assert state["iteration"] == 5
    assert state["hooks"]["LRScheduler"]["last_epoch"] == 6
    assert all(s["step"] == 6 for s in state["_trainer"]["optimizer"]["state"].values())


def test_eval_only_with_tta(tiny_data, tiny_trainer, tmp_path):
    train_dir = tmp_path / "train"
    train_net.main(_args(opts=_opts(train_dir, **{"SOLVER.MAX_ITER": 2, "TEST.EVAL_PERIOD": 0})))
    out = tmp_path / "eval"
    opts = _opts(out, **{"MODEL.WEIGHTS": train_dir / "model_final.pth", "TEST.AUG.ENABLED": True,
                         "TEST.AUG.MIN_SIZES": "(24, 32)", "TEST.AUG.MAX_SIZE": 64})
    results = train_net.main(_args("--eval-only", opts=opts))
    assert set(results) == {"sem_seg", "sem_seg_TTA"}
    assert 0.0 <= results["sem_seg_TTA"]["mIoU"] <= 100.0
    assert os.path.isfile(out / "inference_TTA" / "sem_seg_predictions.json")
    (line,) = _metrics(out)
    assert line["iteration"] == 1  # the checkpoint's iteration
    assert line["sem_seg/mIoU"] == pytest.approx(results["sem_seg"]["mIoU"])
    assert line["sem_seg_TTA/mIoU"] == pytest.approx(results["sem_seg_TTA"]["mIoU"])


def test_setup_falls_back_to_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: no fallback")
    args = _args(opts=["OUTPUT_DIR", str(tmp_path)])
    cfg, fell_back = train_net.build_config(args)
    assert fell_back and cfg.MODEL.DEVICE == "cpu" and cfg.is_frozen()
    assert "SAMPLING_FRAME_NUM" in cfg.INPUT and "MASK_FORMER" in cfg.MODEL  # image + video keys
    assert train_net.backend_for(cfg) == "gloo"


def test_train_loader_uses_the_configured_mapper(tiny_data, tmp_path):
    from mask2former.data.dataset_mappers import MaskFormerSemanticDatasetMapper

    opts = _opts(tmp_path, **{"INPUT.DATASET_MAPPER_NAME": "mask_former_semantic"})
    cfg, _ = train_net.build_config(_args(opts=opts))
    assert isinstance(MaskFormerTrainer.build_train_mapper(cfg), MaskFormerSemanticDatasetMapper)
    batch = next(iter(MaskFormerTrainer.build_train_loader(cfg)))
    assert len(batch) == 2  # SOLVER.IMS_PER_BATCH
    for item in batch:
        assert item["image"].dtype == torch.uint8 and item["image"].shape[0] == 3
        assert item["sem_seg"].shape == item["image"].shape[1:]
        assert set(item["sem_seg"].unique().tolist()) <= {0, 1, 2, 255}


# --------------------------------------------------------------------------- distributed (gloo, 2 processes)
def _distributed_worker(args, data_root, result_dir):
    """Runs in each spawned process: train, then save this rank's parameters."""
    from detectron2.utils import comm

    register_tiny_datasets(data_root)
    cfg = train_net.setup(args)
    trainer = TinyTrainer(cfg)
    trainer.resume_or_load(resume=False)
    initial = {k: v.detach().clone() for k, v in trainer.model.module.named_parameters()}
    trainer.train()
    final = {k: v.detach().clone() for k, v in trainer.model.module.named_parameters()}
    result = {"initial": initial, "final": final, "world_size": comm.get_world_size(),
              "seen_files": trainer.model.module.seen_files,
              "local_rank": comm.get_local_rank(), "eval": getattr(trainer, "_last_eval_results", None)}
    torch.save(result, os.path.join(result_dir, f"rank{comm.get_rank()}.pth"))


def test_two_cpu_processes_stay_in_sync(tiny_data, tmp_path):
    out = tmp_path / "dist"
    args = _args("--num-gpus", "2", opts=_opts(out, **{"SOLVER.MAX_ITER": 3, "TEST.EVAL_PERIOD": 3,
                                                        "SOLVER.CHECKPOINT_PERIOD": 100}))
    os.makedirs(out)
    backend = train_net.backend_for(train_net.build_config(args)[0])  # as train_net.py does: gloo for cpu
    assert backend == "gloo"
    launch(_distributed_worker, args.num_gpus, dist_url="auto", args=(args, tiny_data, str(out)), backend=backend)

    r0, r1 = (torch.load(out / f"rank{r}.pth", weights_only=False) for r in (0, 1))
    assert (r0["world_size"], r0["local_rank"], r1["local_rank"]) == (2, 0, 1)
    assert len(r0["seen_files"]) == 3 and r0["seen_files"] != r1["seen_files"]  # each rank its own images
    for name, p0 in r0["final"].items():
        assert torch.equal(p0, r1["final"][name]), f"{name} differs between the ranks"
    assert any(not torch.equal(r0["initial"][k], r0["final"][k]) for k in r0["final"]), "nothing was trained"
    assert 0.0 <= r0["eval"]["sem_seg"]["mIoU"] <= 100.0  # evaluation gathered over both ranks


# --------------------------------------------------------------------------- inner trainers
class _LossModel(nn.Module):
    def __init__(self, losses):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))
        self.losses = losses
        self.matmul_dtypes = []  # dtype of a matrix product in forward: shows the autocast precision

    def forward(self, data):
        out = self.w * 2.0
        self.matmul_dtypes.append((self.w.view(1, 2) @ torch.ones(2, 2, device=self.w.device)).dtype)
        return {k: out.sum() * v for k, v in self.losses.items()}


def test_non_finite_loss_names_terms_and_iteration():
    model = _LossModel({"loss_ce": 1.0, "loss_mask": float("nan"), "loss_dice": float("inf")})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = MaskFormerSimpleTrainer(model, itertools.repeat([{}]), optimizer)
    trainer.iter = 7
    with pytest.raises(FloatingPointError) as e:
        trainer.run_step()
    message = str(e.value)
    assert "iteration=7" in message
    assert "non-finite terms: loss_mask=nan, loss_dice=inf." in message
    assert "loss_ce=4" in message  # listed among all terms only
    assert torch.equal(model.w.detach(), torch.ones(2)), "no update after a non-finite loss"


def _one_amp_step(device_type):
    from detectron2.utils.events import EventStorage

    model = _LossModel({"loss_ce": 1.0}).to(device_type)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = MaskFormerAMPTrainer(model, itertools.repeat([{}]), optimizer, device_type=device_type)
    with EventStorage(0):
        trainer.run_step()
    torch.testing.assert_close(model.w.detach().cpu(), torch.full((2,), 1 - 0.1 * 2.0))
    assert "grad_scaler" in trainer.state_dict()
    return model, trainer


def test_amp_on_cpu_uses_bfloat16_without_scaler():
    model, trainer = _one_amp_step("cpu")
    assert model.matmul_dtypes == [torch.bfloat16]
    assert not trainer.grad_scaler.is_enabled()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
def test_amp_on_cuda_uses_float16_with_scaler():
    model, trainer = _one_amp_step("cuda")
    assert model.matmul_dtypes == [torch.float16]
    assert trainer.grad_scaler.is_enabled() and trainer.grad_scaler.get_scale() > 0


@needs_cuda
def test_train_on_cuda_with_amp(tiny_data, tiny_trainer, tmp_path):
    out = tmp_path / "cuda"
    results = train_net.main(_args(opts=_opts(out, **{"MODEL.DEVICE": "cuda", "SOLVER.AMP.ENABLED": True})))
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
    state = torch.load(out / "model_final.pth", weights_only=False)["trainer"]["_trainer"]
    assert state["grad_scaler"]["scale"] > 0
    assert all(s["step"] == 4 for s in state["optimizer"]["state"].values())


# --------------------------------------------------------------------------- evaluators
def _register_meta(name, evaluator_type, root, **extra):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(evaluator_type=evaluator_type, stuff_classes=["a", "b"], ignore_label=255,
                                  **extra)


def _eval_cfg(tmp_path, semantic=True, instance=False, panoptic=False):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = semantic
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = instance
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = panoptic
    return cfg


def test_build_evaluator_by_evaluator_type(tmp_path):
    coco_json = tmp_path / "instances.json"
    coco_json.write_text(json.dumps({"images": [], "annotations": [],
                                     "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    ids = {"thing_dataset_id_to_contiguous_id": {1: 0}, "stuff_dataset_id_to_contiguous_id": {2: 1}}
    _register_meta("m2f_eval_sem", "sem_seg", tmp_path)
    _register_meta("m2f_eval_coco", "coco", tmp_path, json_file=str(coco_json), **ids)
    _register_meta("m2f_eval_pan", "coco_panoptic_seg", tmp_path, json_file=str(coco_json), **ids)
    _register_meta("m2f_eval_unknown", "lvis", tmp_path)

    evaluator = MaskFormerTrainer.build_evaluator(_eval_cfg(tmp_path), "m2f_eval_sem")
    assert isinstance(evaluator, SemSegEvaluator)
    assert evaluator._output_dir == os.path.join(str(tmp_path), "inference")

    evaluator = MaskFormerTrainer.build_evaluator(_eval_cfg(tmp_path, semantic=False, instance=True), "m2f_eval_coco")
    assert isinstance(evaluator, COCOEvaluator) and tuple(evaluator._tasks) == ("segm",)

    evaluator = MaskFormerTrainer.build_evaluator(_eval_cfg(tmp_path, True, True, True), "m2f_eval_pan")
    assert isinstance(evaluator, DatasetEvaluators)
    assert [type(e) for e in evaluator._evaluators] == [COCOPanopticEvaluator, COCOEvaluator, SemSegEvaluator]

    evaluator = MaskFormerTrainer.build_evaluator(_eval_cfg(tmp_path, False, False, True), "m2f_eval_pan")
    assert isinstance(evaluator, COCOPanopticEvaluator)

    with pytest.raises(ValueError, match="INSTANCE_ON"):
        MaskFormerTrainer.build_evaluator(_eval_cfg(tmp_path), "m2f_eval_coco")
    with pytest.raises(ValueError, match="PANOPTIC_ON / INSTANCE_ON / SEMANTIC_ON"):
        MaskFormerTrainer.build_evaluator(_eval_cfg(tmp_path, False, False, False), "m2f_eval_pan")
    with pytest.raises(NotImplementedError, match="'lvis'"):
        MaskFormerTrainer.build_evaluator(_eval_cfg(tmp_path), "m2f_eval_unknown")


def test_check_weights_calls_the_weights_module(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("mask2former.utils.weights")
    fake.check_weights_available = lambda cfg: calls.append(cfg.MODEL.WEIGHTS)
    monkeypatch.setitem(sys.modules, "mask2former.utils.weights", fake)
    cfg = _eval_cfg(tmp_path)

    MaskFormerTrainer.check_weights(cfg)  # no MODEL.WEIGHTS: nothing to check
    cfg.MODEL.WEIGHTS = "https://example.com/model_final.pkl"
    MaskFormerTrainer.check_weights(cfg, resume=True)  # no checkpoint to resume from: checked
    (tmp_path / "last_checkpoint").write_text("model_0001.pth")
    MaskFormerTrainer.check_weights(cfg, resume=True)  # resuming replaces the weights: not checked
    MaskFormerTrainer.check_weights(cfg, resume=False)
    assert calls == ["https://example.com/model_final.pkl"] * 2


# --------------------------------------------------------------------------- test-time augmentation
class _QueryModel(nn.Module):
    """MaskFormer's inference interface with query predictions made up from the input by ``queries(x)``:
    (mask_cls (Q, K+1), mask_pred (Q, h, w) at the input size). Semantic output: the mask logits brought to
    the output size; instances: :func:`instance_inference` of the queries (top 10, NMS 0.5)."""

    def __init__(self, queries, semantic_on=True, instance_on=False):
        super().__init__()
        self.queries, self.semantic_on, self.instance_on = queries, semantic_on, instance_on
        self.calls = []

    def predict_queries(self, inputs):
        self.calls.append(len(inputs))
        out = []
        for x in inputs:
            mask_cls, mask_pred = self.queries(x)
            out.append({"pred_logits": mask_cls, "pred_masks": mask_pred, "image_size": tuple(x["image"].shape[1:])})
        return out

    def inference_single(self, mask_cls, mask_pred, image_size, height, width, tasks):
        mask_pred = sem_seg_postprocess(mask_pred, image_size, height, width)
        out = {}
        if "semantic" in tasks:
            out["sem_seg"] = mask_pred
        if "instance" in tasks:
            out["instances"] = instance_inference(mask_cls, mask_pred, topk=10, nms_threshold=0.5)
        return out


def _echo(x):
    """One query per channel, its mask logits the channel: flipping the input flips the output."""
    return torch.zeros(3, 2), x["image"].float()


def _scale(x):
    """One query whose mask logits are the height of the (augmented) input image."""
    return torch.zeros(1, 2), torch.full((1, *x["image"].shape[1:]), float(x["image"].shape[1]))


def _tta_cfg(min_sizes, flip):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.TEST.AUG.MIN_SIZES = min_sizes
    cfg.TEST.AUG.MAX_SIZE = 1000
    cfg.TEST.AUG.FLIP = flip
    return cfg


def test_tta_flips_predictions_back():
    h, w = 24, 40
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0] = torch.arange(w, dtype=torch.uint8).view(1, w) * 5  # horizontal ramp: not flip-symmetric
    image[1] = torch.arange(h, dtype=torch.uint8).view(h, 1) * 7
    image[2] = torch.randint(0, 256, (h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    model = _QueryModel(_echo)
    tta = SemanticSegmentorWithTTA(_tta_cfg((h,), flip=True), model)
    (out,) = tta([{"image": image, "height": h, "width": w}])
    # original scale + its flip; both give back the image once the flip is undone
    torch.testing.assert_close(out["sem_seg"], image.float())
    assert model.calls == [1, 1]
    # without undoing the flip the average would be far off
    assert (image.float() - (image.float() + image.float().flip(2)) / 2).abs().max() > 50


def test_tta_averages_scales_at_original_size():
    h, w = 24, 40
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    for flip in (False, True):
        model = _QueryModel(_scale)
        tta = SemanticSegmentorWithTTA(_tta_cfg((12, 24, 48), flip=flip), model, batch_size=4)
        (out,) = tta([{"image": image, "height": h, "width": w}])
        assert out["sem_seg"].shape == (1, h, w)
        torch.testing.assert_close(out["sem_seg"], torch.full((1, h, w), (12 + 24 + 48) / 3))
        assert model.calls == ([4, 2] if flip else [3])


def _class_logits(probs):
    """(Q, K+1) logits whose softmax is ``probs``."""
    return torch.tensor(probs).log()


def test_fuse_query_predictions_groups_and_averages():
    big = torch.full((6, 8), -10.0)
    big[1:5, 1:5] = 10.0  # 16 px
    shifted = torch.full((6, 8), -10.0)
    shifted[1:5, 2:6] = 10.0  # IoU 12 / 20 = 0.6 with big
    spot = torch.full((6, 8), -10.0)
    spot[5, 6:8] = 10.0
    # pass 0: the object (class 0, sure); pass 1: the object shifted (class 0 less sure) and a spot (class 1)
    mask_cls = torch.stack([_class_logits([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8]]),
                            _class_logits([[0.6, 0.3, 0.1], [0.1, 0.7, 0.2]])])
    mask_pred = torch.stack([torch.stack([big, torch.full((6, 8), -10.0)]), torch.stack([shifted, spot])])
    fused_cls, fused_masks = fuse_query_predictions(mask_cls, mask_pred, iou_threshold=0.5)
    probs = fused_cls.softmax(-1)
    # groups in score order: the object (both passes), the spot (pass 1 only), the empty query (pass 0 only)
    assert fused_cls.shape == (3, 3) and fused_masks.shape == (3, 6, 8)
    torch.testing.assert_close(probs[0], torch.tensor([0.75, 0.175, 0.075]))
    torch.testing.assert_close(fused_masks[0].sigmoid(), (big.sigmoid() + shifted.sigmoid()) / 2)
    # seen by one of two passes: half its probability, the other pass votes "no object"
    torch.testing.assert_close(probs[1], torch.tensor([0.05, 0.35, 0.6]))
    torch.testing.assert_close(fused_masks[1].sigmoid(), spot.sigmoid())
    torch.testing.assert_close(probs[2], torch.tensor([0.05, 0.05, 0.9]))
    # above the IoU of the shifted copy, the two stay apart
    fused_cls, _ = fuse_query_predictions(mask_cls, mask_pred, iou_threshold=0.6)
    assert len(fused_cls) == 4
    torch.testing.assert_close(fused_cls.softmax(-1)[0], torch.tensor([0.45, 0.025, 0.525]))


def test_fuse_query_predictions_takes_one_query_per_augmentation():
    obj = torch.full((4, 4), -10.0)
    obj[:2, :2] = 10.0
    near = obj.clone()
    near[2, 0] = 10.0  # IoU 0.8 with obj
    # pass 0: the object twice (the copy scores lower); pass 1: the object slightly larger
    mask_cls = torch.stack([_class_logits([[0.8, 0.2], [0.7, 0.3]]), _class_logits([[0.6, 0.4], [0.01, 0.99]])])
    mask_pred = torch.stack([torch.stack([obj, obj]), torch.stack([near, torch.full((4, 4), -10.0)])])
    fused_cls, fused_masks = fuse_query_predictions(mask_cls, mask_pred, iou_threshold=0.5)
    probs = fused_cls.softmax(-1)
    # the best query takes the pass-1 object; its same-pass copy is not merged into it but stays alone
    assert len(probs) == 3
    torch.testing.assert_close(probs[:2, 0], torch.tensor([0.7, 0.35]))
    torch.testing.assert_close(fused_masks[1].sigmoid(), obj.sigmoid())


def test_fuse_query_predictions_rejects_bad_input():
    with pytest.raises(ValueError, match="iou_threshold"):
        fuse_query_predictions(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5, 5), iou_threshold=1.0)
    with pytest.raises(ValueError, match="\\(P, Q, H, W\\)"):
        fuse_query_predictions(torch.zeros(2, 3, 4), torch.zeros(2, 4, 5, 5), iou_threshold=0.5)


def _blobs(x):
    """Query 0: the bright pixels of the (augmented) input as class 0, surer at larger inputs; query 1: a
    class-1 spot in the top-left corner of the input (of the flipped image when flipped); query 2: nothing."""
    h, w = x["image"].shape[1:]
    bright = torch.where(x["image"][0] > 128, 10.0, -10.0)
    spot = torch.full((h, w), -10.0)
    spot[: h // 6, : w // 10] = 10.0
    p = h / 100.0
    mask_cls = _class_logits([[p, 0.0, 1 - p], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    return mask_cls, torch.stack([bright, spot, torch.full((h, w), -10.0)])


def test_tta_fuses_instance_queries():
    h, w = 24, 40
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0, 4:12, 2:14] = 255  # an object in the left half: not flip-symmetric
    cfg = _tta_cfg((24, 48), flip=True)
    model = _QueryModel(_blobs, semantic_on=False, instance_on=True)
    (out,) = MaskFormerWithTTA(cfg, model)([{"image": image, "height": h, "width": w}])
    assert set(out) == {"instances"}
    inst = out["instances"]
    assert inst.image_size == (h, w)
    # the top 10 (query, class) pairs include some of probability 0: the others are these
    found = inst.scores > 1e-3
    # the object, seen 4 times (2 sizes x flip), flips undone: one detection with the mean class probability
    objects = found & (inst.pred_classes == 0)
    assert objects.sum() == 1 and inst.scores[objects].item() == pytest.approx((0.24 + 0.48) / 2, rel=1e-4)
    torch.testing.assert_close(inst.pred_masks[objects][0], image[0] > 128)
    assert inst.pred_boxes.tensor[objects].tolist() == [[2.0, 4.0, 14.0, 12.0]]
    # the class-1 spots, left and (flipped back) right: two objects, each seen by 2 of the 4 passes
    spots = found & (inst.pred_classes == 1)
    assert found.sum() == 3
    assert spots.sum() == 2 and inst.scores[spots].tolist() == pytest.approx([0.25, 0.25], rel=1e-4)
    assert inst.scores.tolist() == sorted(inst.scores.tolist(), reverse=True)


def test_tta_checks_its_settings_and_the_model():
    cfg = _tta_cfg((24,), flip=False)
    cfg.TEST.AUG.INSTANCE_GROUP_IOU = 1.0
    with pytest.raises(ValueError, match="INSTANCE_GROUP_IOU"):
        MaskFormerWithTTA(cfg, _QueryModel(_blobs))
    with pytest.raises(ValueError, match="predict_queries"):
        MaskFormerWithTTA(_tta_cfg((24,), flip=False), nn.Identity())
    tta = MaskFormerWithTTA(_tta_cfg((24,), flip=False), _QueryModel(_blobs, semantic_on=False))
    with pytest.raises(ValueError, match="SEMANTIC_ON or INSTANCE_ON"):
        tta([{"image": torch.zeros(3, 24, 40, dtype=torch.uint8), "height": 24, "width": 40}])


def test_tta_refuses_video_datasets():
    MetadataCatalog.get("tta_fake_video_val").set(evaluator_type="ytvis")
    cfg = _tta_cfg((8,), flip=False)
    cfg.DATASETS.TEST = ("tta_fake_video_val",)
    with pytest.raises(ValueError, match="TEST.AUG.ENABLED False"):
        MaskFormerTrainer.test_with_TTA(cfg, _QueryModel(_scale))


def test_tta_rejects_wrong_output_size():
    class _Wrong(_QueryModel):
        def inference_single(self, mask_cls, mask_pred, image_size, height, width, tasks):
            return {"sem_seg": torch.zeros(1, 5, 5)}

    tta = SemanticSegmentorWithTTA(_tta_cfg((8,), flip=False), _Wrong(_scale))
    with pytest.raises(ValueError, match="expected \\(K, 10, 12\\)"):
        tta([{"image": torch.zeros(3, 10, 12, dtype=torch.uint8), "height": 10, "width": 12}])


def test_autocast_dtype_follows_device_and_cpu(monkeypatch):
    from detectron2.config import get_cfg

    from mask2former import add_maskformer2_config
    from mask2former.engine import trainer as trainer_module

    cfg = get_cfg()
    add_maskformer2_config(cfg)
    assert cfg.SOLVER.AMP.CPU_BFLOAT16 == "auto"
    assert trainer_module.autocast_dtype(cfg) is None  # AMP off
    cfg.SOLVER.AMP.ENABLED = True
    cfg.MODEL.DEVICE = "cuda"
    assert trainer_module.autocast_dtype(cfg) == torch.float16
    cfg.MODEL.DEVICE = "cpu"
    for has_bf16, mode, expected in [(True, "auto", torch.bfloat16), (False, "auto", None),
                                     (False, "always", torch.bfloat16), (True, "always", torch.bfloat16)]:
        monkeypatch.setattr(trainer_module, "cpu_has_bfloat16_instructions", lambda: has_bf16)
        cfg.SOLVER.AMP.CPU_BFLOAT16 = mode
        assert trainer_module.autocast_dtype(cfg) == expected, (has_bf16, mode)
    cfg.SOLVER.AMP.CPU_BFLOAT16 = "yes"
    with pytest.raises(ValueError, match="SOLVER.AMP.CPU_BFLOAT16 must be 'auto' or 'always', got 'yes'"):
        trainer_module.autocast_dtype(cfg)
    cfg.MODEL.DEVICE = "mps"
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED supports MODEL.DEVICE cuda or cpu"):
        trainer_module.autocast_dtype(cfg)
