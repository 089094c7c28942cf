"""Tests of the config files under configs/ and of mask2former/utils/weights.py.

The official configs are checked against the facts read off the official implementation
(../shared/reference/official_state_dicts.json): the list of config paths, and per config the class and
query counts, the component names and the full state_dict (names and shapes) of its model.
"""
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY

import mask2former  # noqa: F401  (registers the models)
from mask2former import add_maskformer2_config, add_maskformer2_video_config
from mask2former.utils.weights import check_weights_available

REPO = Path(__file__).resolve().parents[1]
from shared_paths import REFERENCE, require

require(REFERENCE)
SHAPES_WORLD_METADATA = REPO / "mask2former/data/metadata/shapes_world.json"

OFFICIAL = json.loads(REFERENCE.read_text())
CONFIGS = OFFICIAL["configs"]  # "configs/<family>/.../<name>.yaml" -> facts
ARCHITECTURES = OFFICIAL["architectures"]  # arch id -> {"state_dict": [[name, shape], ...], ...}
OFFICIAL_FAMILIES = sorted({path.split("/")[1] for path in CONFIGS})
SHAPES_WORLD = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs/shapes_world").glob("maskformer2_*.yaml"))

PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]


def load_cfg(path):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(str(REPO / path))
    return cfg


def reference_state_dict(arch):
    return {name: list(shape) for name, shape in ARCHITECTURES[arch]["state_dict"]}


def architecture_facts(sd):
    """Config values implied by a reference state_dict (name -> shape)."""
    def count(pattern):
        return len({m.group(1) for name in sd for m in [re.fullmatch(pattern, name)] if m})

    facts = {
        "num_classes": sd["sem_seg_head.predictor.class_embed.weight"][0] - 1,
        "num_queries": sd["sem_seg_head.predictor.query_feat.weight"][0],
        "hidden_dim": sd["sem_seg_head.predictor.query_feat.weight"][1],
        "dim_feedforward": sd["sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight"][0],
        # DEC_LAYERS counts one extra "layer" for the loss on the learnable queries.
        "dec_layers": count(r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\..*") + 1,
        "enc_layers": count(r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\..*"),
        "conv_dim": sd["sem_seg_head.pixel_decoder.layer_1.weight"][0],
        "mask_dim": sd["sem_seg_head.pixel_decoder.mask_features.weight"][0],
    }
    if "backbone.patch_embed.proj.weight" in sd:  # Swin
        stages = range(count(r"backbone\.layers\.(\d+)\..*"))
        table = sd["backbone.layers.0.blocks.0.attn.relative_position_bias_table"][0]  # (2 * window - 1) ** 2
        facts["swin"] = {
            "EMBED_DIM": sd["backbone.patch_embed.proj.weight"][0],
            "DEPTHS": [count(rf"backbone\.layers\.{i}\.blocks\.(\d+)\..*") for i in stages],
            "NUM_HEADS": [sd[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"][1] for i in stages],
            "WINDOW_SIZE": (math.isqrt(table) + 1) // 2,
        }
    else:  # ResNet
        blocks = tuple(count(rf"backbone\.res{i}\.(\d+)\..*") for i in (2, 3, 4, 5))
        bottleneck = "backbone.res2.0.conv3.weight" in sd
        facts["resnet_depth"] = {
            (False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34,
            (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152,
        }[bottleneck, blocks]
        # FrozenBatchNorm2d has no num_batches_tracked buffer; the (Sync)BatchNorm layers do.
        facts["resnet_norm"] = "SyncBN" if any(n.endswith("num_batches_tracked") for n in sd) else "FrozenBN"
    return facts


# ------------------------------------------------------------------------------------------ the file set
def test_config_files_match_the_official_list():
    on_disk = {
        str(p.relative_to(REPO))
        for family in OFFICIAL_FAMILIES
        for p in (REPO / "configs" / family).rglob("*.yaml")
        if "dat" not in p.relative_to(REPO).parts  # ours: Mask2Former with the DAT backbone (tests/test_dat_configs.py)
    }
    bases = {p for p in on_disk if Path(p).name.startswith("Base-")}
    assert on_disk - bases == set(CONFIGS), (
        f"missing: {sorted(set(CONFIGS) - on_disk)}; not official: {sorted(on_disk - bases - set(CONFIGS))}"
    )
    # Every task folder has exactly one Base file, and every config reaches one through _BASE_.
    folders = {str(Path(p).parent).removesuffix("/swin") for p in CONFIGS}
    assert Counter(str(Path(p).parent) for p in bases) == Counter(folders)


def test_every_config_file_loads():
    """Every file under configs/, Base files included, merges into the full config; none uses Python tags
    (``!!python/...``), so each also loads with yaml.safe_load."""
    paths = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(paths) >= len(CONFIGS)
    for p in paths:
        assert isinstance(yaml.safe_load(p.read_text()), dict), p
        load_cfg(p.relative_to(REPO))


# ------------------------------------------------------------------------------------------ config values
@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_official_config_names_and_counts(path):
    facts = CONFIGS[path]
    cfg = load_cfg(path)
    mf = cfg.MODEL.MASK_FORMER
    assert cfg.MODEL.META_ARCHITECTURE == facts["meta_architecture"]
    assert cfg.MODEL.BACKBONE.NAME == facts["backbone"]
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "MaskFormerHead"
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == facts["pixel_decoder"]
    assert mf.TRANSFORMER_DECODER_NAME == facts["transformer_decoder"]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == facts["num_classes"]
    assert mf.NUM_OBJECT_QUERIES == facts["num_queries"]


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_official_config_structure_matches_reference_shapes(path):
    """Every structural value the reference state_dict implies, for every config (not only one per arch)."""
    facts = architecture_facts(reference_state_dict(CONFIGS[path]["arch"]))
    cfg = load_cfg(path)
    mf, head = cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
    assert head.NUM_CLASSES == facts["num_classes"]
    assert mf.NUM_OBJECT_QUERIES == facts["num_queries"]
    assert mf.HIDDEN_DIM == facts["hidden_dim"]
    assert mf.DIM_FEEDFORWARD == facts["dim_feedforward"]
    assert mf.DEC_LAYERS == facts["dec_layers"] == 10
    assert head.TRANSFORMER_ENC_LAYERS == facts["enc_layers"] == 6
    assert head.CONVS_DIM == facts["conv_dim"]
    assert head.MASK_DIM == facts["mask_dim"]
    assert head.IN_FEATURES == ["res2", "res3", "res4", "res5"]
    assert head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES == ["res3", "res4", "res5"]
    if "swin" in facts:
        for key, value in facts["swin"].items():
            assert cfg.MODEL.SWIN[key] == value, key
        assert cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE == (384 if "_384_" in path else 224)
        assert cfg.MODEL.SWIN.OUT_FEATURES == ["res2", "res3", "res4", "res5"]
    else:
        assert cfg.MODEL.RESNETS.DEPTH == facts["resnet_depth"]
        assert cfg.MODEL.RESNETS.NORM == facts["resnet_norm"]
        assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res2", "res3", "res4", "res5"]
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False  # torchvision-style ImageNet weights


SWIN_WEIGHTS = {
    "swin_tiny": "swin_tiny_patch4_window7_224.pkl",
    "swin_small": "swin_small_patch4_window7_224.pkl",
    "swin_base_384": "swin_base_patch4_window12_384.pkl",
    "swin_base_IN21k_384": "swin_base_patch4_window12_384_22k.pkl",
    "swin_large_IN21k_384": "swin_large_patch4_window12_384_22k.pkl",
}


def expected_task(path):
    """(DATASET_MAPPER_NAME, LR scheduler, (SEMANTIC_ON, INSTANCE_ON, PANOPTIC_ON)) of an official config."""
    family, task = path.split("/")[1], path.split("/")[2]
    if family.startswith("youtubevis"):
        return None, "WarmupMultiStepLR", (False, True, False)
    kind = task.split("-")[0]
    flags = {"semantic": (True, False, False), "instance": (False, True, False), "panoptic": (True, True, True)}
    if family == "mapillary-vistas" and kind == "panoptic":
        flags["panoptic"] = (False, False, True)
    if family == "coco":
        return f"coco_{kind}_lsj", "WarmupMultiStepLR", flags[kind]
    return f"mask_former_{kind}", "WarmupPolyLR", flags[kind]


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_official_config_published_values(path):
    cfg = load_cfg(path)
    mf, solver = cfg.MODEL.MASK_FORMER, cfg.SOLVER
    # losses and matcher
    assert (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.NO_OBJECT_WEIGHT) == (2.0, 5.0, 5.0, 0.1)
    assert mf.DEEP_SUPERVISION and mf.TRAIN_NUM_POINTS == 112 * 112
    assert (mf.OVERSAMPLE_RATIO, mf.IMPORTANCE_SAMPLE_RATIO) == (3.0, 0.75)
    assert (mf.NHEADS, mf.DROPOUT, mf.PRE_NORM, mf.ENFORCE_INPUT_PROJ) == (8, 0.0, False, False)
    assert mf.TRANSFORMER_IN_FEATURE == "multi_scale_pixel_decoder"
    # optimisation
    assert (solver.OPTIMIZER, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BACKBONE_MULTIPLIER) == ("ADAMW", 1e-4, 0.05, 0.1)
    assert solver.IMS_PER_BATCH == 16
    clip = solver.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (True, "full_model", 0.01, 2.0)
    mapper, scheduler, flags = expected_task(path)
    assert solver.LR_SCHEDULER_NAME == scheduler
    if mapper is not None:
        assert cfg.INPUT.DATASET_MAPPER_NAME == mapper
    # inference
    test = mf.TEST
    assert (test.SEMANTIC_ON, test.INSTANCE_ON, test.PANOPTIC_ON) == flags
    assert test.OVERLAP_THRESHOLD == 0.8
    assert test.OBJECT_MASK_THRESHOLD == (0.0 if "mapillary" in path else 0.8)
    # input
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_MEAN == PIXEL_MEAN and cfg.MODEL.PIXEL_STD == PIXEL_STD
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    # initial weights
    name = Path(path).stem
    if CONFIGS[path]["video"]:
        # video models start from a COCO instance-segmentation checkpoint
        assert re.fullmatch(r"model_final_[0-9a-f]{6}\.pkl", cfg.MODEL.WEIGHTS), cfg.MODEL.WEIGHTS
        assert cfg.INPUT.SAMPLING_FRAME_NUM == 2
        assert cfg.DATASETS.TRAIN[0].startswith("ytvis_") and cfg.DATASETS.TRAIN[0].endswith("_train")
    elif "_R101_" in name:
        assert cfg.MODEL.WEIGHTS == "R-101.pkl"
    elif "_R50_" in name:
        assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
    else:
        variant = re.search(r"(swin_[a-z]+(?:_IN21k)?(?:_384)?)_bs16", name).group(1)
        assert cfg.MODEL.WEIGHTS == SWIN_WEIGHTS[variant]


def test_official_crop_sizes():
    """ADE20K: 512 crops for semantic R50/Swin-T/S, 640 for the res640 models, panoptic and instance."""
    for path in CONFIGS:
        if not path.startswith("configs/ade20k/"):
            continue
        cfg = load_cfg(path)
        size = 512 if ("semantic" in path and "res640" not in path) else 640
        assert tuple(cfg.INPUT.CROP.SIZE) == (size, size), path
        assert cfg.INPUT.MIN_SIZE_TEST == size and cfg.INPUT.SIZE_DIVISIBILITY == size, path
        assert list(cfg.INPUT.MIN_SIZE_TRAIN) == [int(x * 0.1 * size) for x in range(5, 21)], path
    cfg = load_cfg("configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml")
    assert (cfg.INPUT.IMAGE_SIZE, cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE) == (1024, 0.1, 2.0)


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_official_datasets_registered(path):
    """The datasets an official config names must be registered, or its command line fails."""
    from detectron2.data import DatasetCatalog

    cfg = load_cfg(path)
    missing = [n for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if n not in DatasetCatalog.list()]
    if missing and CONFIGS[path]["video"]:
        pytest.xfail(f"video datasets {missing} are not registered yet (video data not written)")
    assert not missing, f"{path}: datasets {missing} are not registered in DatasetCatalog"


# ------------------------------------------------------------------------------------------ model build
def build_on_meta(cfg):
    """Instantiate the meta-architecture with all tensors on the meta device (no memory, no init cost)."""
    name = cfg.MODEL.META_ARCHITECTURE
    with torch.device("meta"):
        return META_ARCH_REGISTRY.get(name)(cfg)


def compare_state_dicts(model, expected):
    got = {name: list(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [(n, got[n], expected[n]) for n in expected if n in got and got[n] != expected[n]]
    return missing, unexpected, wrong


ARCH_TO_CONFIG = {}
for _path in sorted(CONFIGS):
    ARCH_TO_CONFIG.setdefault(CONFIGS[_path]["arch"], _path)


@pytest.mark.parametrize("arch", sorted(ARCH_TO_CONFIG, key=ARCH_TO_CONFIG.get),
                         ids=lambda a: ARCH_TO_CONFIG[a][len("configs/"):-len(".yaml")])
def test_official_model_state_dict_matches_reference(arch):
    """One build per distinct architecture (configs sharing an arch id have equal structural values, checked
    above); names and shapes of the whole state_dict must equal the official ones."""
    path = ARCH_TO_CONFIG[arch]
    cfg = load_cfg(path)
    # Panoptic inference needs the training set's metadata (which classes are things); that registration is
    # checked by test_official_datasets_registered, and inference flags do not change any parameter.
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", False])
    meta_arch = cfg.MODEL.META_ARCHITECTURE
    if CONFIGS[path]["video"] and meta_arch not in META_ARCH_REGISTRY:
        pytest.xfail(f"the video meta-architecture {meta_arch!r} is not registered yet (video model not written)")
    assert meta_arch in META_ARCH_REGISTRY, f"{meta_arch!r} is not registered in META_ARCH_REGISTRY"
    model = build_on_meta(cfg)
    missing, unexpected, wrong = compare_state_dicts(model, reference_state_dict(arch))
    assert not (missing or unexpected or wrong), (
        f"{path}: {len(missing)} missing {missing[:10]}, {len(unexpected)} unexpected {unexpected[:10]}, "
        f"{len(wrong)} wrong shapes (name, ours, official) {wrong[:10]}"
    )


# ------------------------------------------------------------------------------------------ shapes world
def shapes_world_classes():
    categories = json.loads(SHAPES_WORLD_METADATA.read_text())["categories"]
    things = [c["name"] for c in categories if c["isthing"]]
    return things, [c["name"] for c in categories]


def test_shapes_world_configs_exist():
    assert sorted(Path(p).name for p in SHAPES_WORLD) == [
        "maskformer2_R18_instance.yaml", "maskformer2_R18_panoptic.yaml", "maskformer2_R18_semantic.yaml"]
    assert (REPO / "configs/shapes_world/Base-ShapesWorld.yaml").is_file()


@pytest.mark.parametrize("path", SHAPES_WORLD)
def test_shapes_world_config(path):
    cfg = load_cfg(path)
    task = Path(path).stem.split("_")[-1]  # panoptic / instance / semantic
    things, all_classes = shapes_world_classes()
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(things if task == "instance" else all_classes)
    suffix = {"panoptic": "panoptic", "instance": "instance", "semantic": "sem_seg"}[task]
    assert tuple(cfg.DATASETS.TRAIN) == (f"shapes_world_train_{suffix}",)
    assert tuple(cfg.DATASETS.TEST) == (f"shapes_world_val_{suffix}",)
    assert cfg.INPUT.DATASET_MAPPER_NAME == f"mask_former_{task}"
    # classes from box crops: measured on the panoptic config only (docs/RESULTS.md)
    assert cfg.MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT == (2.0 if task == "panoptic" else 0.0)
    flags = (cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON, cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON,
             cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON)
    assert flags == {"panoptic": (True, True, True), "instance": (False, True, False),
                     "semantic": (True, False, False)}[task]
    # from scratch, on a CPU
    assert cfg.MODEL.WEIGHTS == "" and check_weights_available(cfg) == ""
    assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.AMP.ENABLED  # bfloat16 autocast on the CPU (docs/RESULTS.md)
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.SOLVER.BACKBONE_MULTIPLIER == 1.0
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS) == (18, 64)
    assert cfg.MODEL.RESNETS.NORM in ("BN", "GN", "SyncBN")
    # Square training crops padded to exactly the crop size, so every batch has one shape.
    crop_h, crop_w = cfg.INPUT.CROP.SIZE
    assert cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute" and crop_h == crop_w
    assert cfg.INPUT.SIZE_DIVISIBILITY == crop_h and crop_h % 32 == 0


@pytest.mark.parametrize("path", SHAPES_WORLD)
def test_shapes_world_datasets_registered(path):
    from detectron2.data import DatasetCatalog

    cfg = load_cfg(path)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        assert name in DatasetCatalog.list(), f"{path}: dataset {name!r} is not registered"


@pytest.mark.parametrize("path", SHAPES_WORLD)
def test_shapes_world_model_builds(path):
    cfg = load_cfg(path)
    assert "MaskFormer" in META_ARCH_REGISTRY, "'MaskFormer' is not registered in META_ARCH_REGISTRY"
    model = build_on_meta(cfg)
    sd = {name: list(t.shape) for name, t in model.state_dict().items()}
    facts = architecture_facts(sd)
    assert facts["num_classes"] == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert facts["num_queries"] == cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    assert facts["dec_layers"] == cfg.MODEL.MASK_FORMER.DEC_LAYERS
    assert facts["enc_layers"] == cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS
    assert sd["backbone.res5.0.conv1.weight"][0] == 512  # ResNet-18 basic blocks
    assert "backbone.res2.0.conv3.weight" not in sd



# The backbone variants of the R18 panoptic config: only the backbone changes (docs/RESULTS.md compares them).
SHAPES_WORLD_BACKBONES = {
    "configs/shapes_world/dat/maskformer2_dat_panoptic.yaml": ("D2DAT", "DAT"),
    "configs/shapes_world/swin/maskformer2_swin_panoptic.yaml": ("D2SwinTransformer", "SWIN"),
}


def flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


SECOND_SHAPES_WORLD = "configs/shapes_world/dense/maskformer2_R18_panoptic.yaml"


def test_shapes_world_backbone_configs_exist():
    found = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs/shapes_world").glob("*/maskformer2_*.yaml"))
    assert found == sorted([*SHAPES_WORLD_BACKBONES, SECOND_SHAPES_WORLD])  # each checked below


@pytest.mark.parametrize("path", sorted(SHAPES_WORLD_BACKBONES))
def test_shapes_world_backbone_config_changes_only_the_backbone(path):
    """Same recipe as the R18 config; the backbone is built from scratch and gives res2..res5 at strides
    4..32 with 32..256 channels on a 192 px crop and on a test-size image that is no window multiple."""
    from detectron2.modeling import build_backbone

    name, section = SHAPES_WORLD_BACKBONES[path]
    cfg = load_cfg(path)
    base = load_cfg("configs/shapes_world/maskformer2_R18_panoptic.yaml")
    own = ("MODEL.BACKBONE.NAME", "OUTPUT_DIR")
    ours = {k: v for k, v in flat(cfg).items() if k not in own and not k.startswith(f"MODEL.{section}.")}
    theirs = {k: v for k, v in flat(base).items() if k not in own and not k.startswith(f"MODEL.{section}.")}
    assert ours == theirs, {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert cfg.MODEL.BACKBONE.NAME == name and cfg.MODEL.WEIGHTS == "" and check_weights_available(cfg) == ""
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    for h, w in ((192, 192), (288, 416)):
        with torch.no_grad():
            out = backbone(torch.randn(1, 3, h, w))
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            f"res{i + 2}": (1, 32 * 2**i, math.ceil(h / 4 / 2**i), math.ceil(w / 4 / 2**i)) for i in range(4)}
        assert all(torch.isfinite(v).all() for v in out.values())


# ------------------------------------------------------------------------------------------ weights check
def cfg_with_weights(value):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.WEIGHTS = value
    return cfg


def test_weights_from_scratch_is_accepted():
    assert check_weights_available(cfg_with_weights("")) == ""


@pytest.mark.parametrize("url", [
    "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/model_final.pkl",
    "http://example.org/weights.pth",
])
def test_weights_url_is_left_to_download(url):
    """URLs are downloaded (tests/test_weights_download.py); without downloading they pass unchanged."""
    assert check_weights_available(cfg_with_weights(url), download=False) == url


def test_weights_missing_or_present_local_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        check_weights_available(cfg_with_weights("swin_tiny_patch4_window7_224.pkl"))
    message = str(err.value)
    assert "'swin_tiny_patch4_window7_224.pkl'" in message and str(tmp_path / "swin_tiny_patch4_window7_224.pkl") in message
    assert "MODEL.WEIGHTS /path/to/file.pkl" in message and 'MODEL.WEIGHTS ""' in message

    with pytest.raises(FileNotFoundError, match="is a directory"):
        check_weights_available(cfg_with_weights(str(tmp_path)))

    (tmp_path / "swin_tiny_patch4_window7_224.pkl").write_bytes(b"weights")
    expected = str(tmp_path / "swin_tiny_patch4_window7_224.pkl")
    assert check_weights_available(cfg_with_weights("swin_tiny_patch4_window7_224.pkl")) == expected
    assert check_weights_available(cfg_with_weights(expected)) == expected
    assert check_weights_available(cfg_with_weights("file://" + expected)) == expected


def test_weights_of_official_configs_are_reported_here(tmp_path, monkeypatch):
    """Without the files, every official config naming a local weights file gives the clear error; URLs are
    left to the download."""
    monkeypatch.chdir(tmp_path)
    for path in sorted(CONFIGS):
        cfg = load_cfg(path)
        if "://" in cfg.MODEL.WEIGHTS:
            assert check_weights_available(cfg, download=False) == cfg.MODEL.WEIGHTS
            continue
        with pytest.raises(FileNotFoundError, match=re.escape(f"MODEL.WEIGHTS = {cfg.MODEL.WEIGHTS!r}")):
            check_weights_available(cfg)


def test_weights_must_be_a_string():
    cfg = cfg_with_weights("")
    cfg.MODEL.WEIGHTS = None
    with pytest.raises(TypeError, match="MODEL.WEIGHTS"):
        check_weights_available(cfg)


def test_second_shapes_world_config_changes_only_the_data():
    """The second world trains the default world's recipe unchanged: only the datasets and the output differ."""
    from detectron2.data import DatasetCatalog

    cfg = load_cfg(SECOND_SHAPES_WORLD)
    base = load_cfg("configs/shapes_world/maskformer2_R18_panoptic.yaml")
    own = ("DATASETS.TRAIN", "DATASETS.TEST", "OUTPUT_DIR")
    ours = {k: v for k, v in flat(cfg).items() if k not in own}
    theirs = {k: v for k, v in flat(base).items() if k not in own}
    assert ours == theirs, {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert tuple(cfg.DATASETS.TRAIN) == ("shapes_world_dense_train_panoptic",)
    assert tuple(cfg.DATASETS.TEST) == ("shapes_world_dense_val_panoptic",)
    assert set(cfg.DATASETS.TRAIN + cfg.DATASETS.TEST) <= set(DatasetCatalog.list())
    assert cfg.OUTPUT_DIR != base.OUTPUT_DIR
