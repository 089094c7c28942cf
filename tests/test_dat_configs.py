"""The DAT configs (configs/*/*/dat/, configs/shapes_world/dat/) build, and an official DAT ImageNet
checkpoint loads through MODEL.WEIGHTS (local stand-in files with the official layout)."""
import json
from pathlib import Path

import pytest
import torch
from yacs.config import CfgNode

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import mask2former  # noqa: F401  (registers the models)
from mask2former import add_maskformer2_config
from mask2former.engine.solver import get_param_groups
from mask2former.engine.checkpoint import MaskFormerCheckpointer

from shared_paths import SHARED, require

REPO = Path(__file__).resolve().parents[1]
GOLDEN = SHARED / "golden" / "dat_tiny"
require(GOLDEN)
OFFICIAL = json.loads((GOLDEN / "official_param_shapes.json").read_text())["models"]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/*/*/dat/*.yaml"))
SHAPES_WORLD = "configs/shapes_world/dat/maskformer2_dat_panoptic.yaml"


def load_cfg(path):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(str(REPO / path))
    return cfg


def test_configs_cover_three_tasks_and_three_sizes():
    assert [Path(p).name.split("_")[2] for p in CONFIGS] == ["base", "small", "tiny"] * 3
    assert sorted({str(Path(p).parent.parent) for p in CONFIGS}) == [
        "configs/ade20k/semantic-segmentation", "configs/coco/instance-segmentation", "configs/coco/panoptic-segmentation"]


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_the_official_backbone(path):
    cfg = load_cfg(path)
    variant = "dat_" + Path(path).name.split("_")[2]
    args = OFFICIAL[variant]["constructor_args"]
    assert cfg.MODEL.DAT.DROP_PATH_RATE == args["drop_path_rate"]
    assert cfg.MODEL.WEIGHTS.endswith(".pth")
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1 and cfg.SOLVER.WEIGHT_DECAY_EMBED == 0.0
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    official = [(e["name"], e["shape"]) for e in OFFICIAL[variant]["state_dict"] if not e["name"].startswith("cls_")]
    ours = [(k[len("backbone."):], list(v.shape)) for k, v in model.state_dict().items()
            if k.startswith("backbone.") and not k.startswith("backbone.norm")]
    assert ours == official
    # the deformable blocks' bias tables and the window blocks' tables get no weight decay
    groups = get_param_groups(model, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, weight_decay_norm=0.0,
                              weight_decay_embed=0.0, backbone_multiplier=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for p in group["params"]:
            if names[id(p)].endswith(("rpe_table", "relative_position_bias_table")):
                assert group["weight_decay"] == 0.0 and group["lr"] == pytest.approx(cfg.SOLVER.BASE_LR * 0.1)


def test_shapes_world_dat_config_trains_from_scratch_on_cpu():
    cfg = load_cfg(SHAPES_WORLD)
    assert cfg.MODEL.BACKBONE.NAME == "D2DAT" and cfg.MODEL.WEIGHTS == "" and cfg.MODEL.DEVICE == "cpu"
    assert cfg.DATASETS.TRAIN == ("shapes_world_train_panoptic",)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    image = torch.randint(0, 255, (3, 192, 192), dtype=torch.uint8)
    from detectron2.structures import Instances, BitMasks
    target = Instances((192, 192))
    target.gt_classes = torch.tensor([1, 8])
    masks = torch.zeros(2, 192, 192, dtype=torch.bool)
    masks[0, 20:80, 30:90] = True
    masks[1] = ~masks[0]
    target.gt_masks = BitMasks(masks)
    losses = model([{"image": image, "instances": target, "height": 192, "width": 192}])
    loss = sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss)
    offset = model.backbone.stages[2].attns[1].conv_offset[0].weight.grad
    assert offset is not None and offset.abs().max() > 0
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.randint(0, 255, (3, 150, 230), dtype=torch.uint8)}])
    assert out["panoptic_seg"][0].shape == (150, 230)


def official_checkpoint(model_cfg, path, extra_state=True):
    """A file laid out as the official DAT training code saves it, with random weights."""
    torch.manual_seed(1)
    backbone = build_model(model_cfg).backbone
    state = {k: torch.randn_like(v) if v.is_floating_point() and "attn_mask" not in k else v
             for k, v in backbone.state_dict().items() if not k.startswith("norm")}
    dim = model_cfg.MODEL.DAT.DIMS[-1]
    state["cls_norm.norm.weight"], state["cls_norm.norm.bias"] = torch.ones(dim), torch.zeros(dim)
    state["cls_head.weight"], state["cls_head.bias"] = torch.randn(1000, dim), torch.zeros(1000)
    payload = {"model": state}
    if extra_state:
        payload.update(optimizer={"state": {}, "param_groups": [{"lr": 1e-3}]}, lr_scheduler={"last_epoch": 3},
                       max_accuracy=82.0, epoch=299, config=CfgNode({"MODEL": CfgNode({"NAME": "dat_tiny"})}))
    torch.save(payload, path)
    return state


@pytest.mark.parametrize("extra_state", [True, False])
def test_official_checkpoint_loads_through_model_weights(tmp_path, extra_state):
    cfg = load_cfg(SHAPES_WORLD)
    path = tmp_path / "dat_in1k.pth"
    state = official_checkpoint(cfg, path, extra_state)
    cfg.MODEL.WEIGHTS = str(path)
    model = build_model(cfg)
    MaskFormerCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    ours = model.backbone.state_dict()
    for name, value in state.items():
        if not name.startswith("cls_"):
            assert torch.equal(ours[name], value), name


def test_checkpoint_of_another_pretraining_size_is_resized(tmp_path):
    cfg = load_cfg(SHAPES_WORLD)
    path = tmp_path / "dat_in1k_384.pth"
    source = cfg.clone()
    source.MODEL.DAT.PRETRAIN_IMG_SIZE = 384  # stage-3 table 47 x 47 instead of 23 x 23
    state = official_checkpoint(source, path)
    cfg.MODEL.WEIGHTS = str(path)
    model = build_model(cfg)
    MaskFormerCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    table = model.backbone.stages[2].attns[1].rpe_table
    assert table.shape == (4, 23, 23)
    big = state["stages.2.attns.1.rpe_table"]
    # align_corners=True: the corners (largest displacements) are kept exactly
    torch.testing.assert_close(table[:, 0, 0], big[:, 0, 0])
    torch.testing.assert_close(table[:, -1, -1], big[:, -1, -1])
    # size-dependent constants are this model's, not the checkpoint's
    assert torch.equal(model.backbone.stages[0].attns[1].attn_mask, build_model(cfg).backbone.stages[0].attns[1].attn_mask)


def test_restricted_unpickler_refuses_code(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Evil()}, path)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        MaskFormerCheckpointer(model).load(str(path))
