"""Official compatibility of the video model: checkpoint names/shapes, model-zoo pickles, COCO initialisation.

The official parameter names and shapes come from /work/shared/reference/official_state_dicts.json (also
checked for every video config by tests/test_configs.py, on the meta device). Here real models load fake
model-zoo pickles ({"model": {name: numpy array}, "__author__": ...}) through detectron2's
DetectionCheckpointer, the way MODEL.WEIGHTS is loaded.
"""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from mask2former import add_maskformer2_config, add_maskformer2_video_config

from video_testing import REPO

REFERENCE = "/work/shared/reference/official_state_dicts.json"
VIDEO_CONFIG = "configs/youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml"
COCO_CONFIG = "configs/coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml"

pytestmark = pytest.mark.skipif(not os.path.isfile(REFERENCE), reason=f"{REFERENCE} not found")


@pytest.fixture(scope="module")
def reference():
    with open(REFERENCE) as f:
        return json.load(f)


def official_state_dict(reference, config):
    arch = reference["configs"][config]["arch"]
    return [(name, tuple(shape)) for name, shape in reference["architectures"][arch]["state_dict"]]


@pytest.fixture(scope="module")
def video_model():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, VIDEO_CONFIG))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def write_model_zoo_pickle(path, names_shapes, fill):
    """A model-zoo style pickle; tensor i is filled with fill(i) (float16 keeps the file small)."""
    model = {name: np.full(shape, fill(i), dtype=np.float16) for i, (name, shape) in enumerate(names_shapes)}
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "test"}, f)


def load_with_checkpointer(model, path):
    checkpointer = DetectionCheckpointer(model)
    checkpoint = checkpointer._load_file(str(path))
    return checkpointer._load_model(checkpoint)


def test_video_model_has_the_official_names_and_shapes(reference, video_model):
    ours = [(k, tuple(v.shape)) for k, v in video_model.state_dict().items()]
    official = official_state_dict(reference, VIDEO_CONFIG)
    assert sorted(ours) == sorted(official)


def test_official_video_checkpoint_loads_without_missing_or_unexpected_keys(reference, video_model, tmp_path):
    names_shapes = official_state_dict(reference, VIDEO_CONFIG)
    path = tmp_path / "video_model_final.pkl"
    write_model_zoo_pickle(path, names_shapes, fill=lambda i: (i % 7) + 1)
    incompatible = load_with_checkpointer(video_model, path)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    sd = video_model.state_dict()
    for i, (name, _) in enumerate(names_shapes):
        if sd[name].is_floating_point():
            assert sd[name].flatten()[0].item() == (i % 7) + 1, name


def test_coco_instance_checkpoint_initialises_the_video_model(reference, video_model, tmp_path):
    """The official video configs start from the COCO instance R50 model: every parameter loads except the
    class-dependent ones (80 COCO classes vs 40 YouTube-VIS classes), which keep their initialisation."""
    coco = official_state_dict(reference, COCO_CONFIG)
    video = dict(official_state_dict(reference, VIDEO_CONFIG))
    assert {name for name, _ in coco} == set(video)
    path = tmp_path / "model_final_3c8ec9.pkl"
    write_model_zoo_pickle(path, coco, fill=lambda i: 0.5)
    before = {k: v.clone() for k, v in video_model.state_dict().items()}
    incompatible = load_with_checkpointer(video_model, path)
    differing = {
        "sem_seg_head.predictor.class_embed.weight": ((81, 256), (41, 256)),
        "sem_seg_head.predictor.class_embed.bias": ((81,), (41,)),
        "criterion.empty_weight": ((81,), (41,)),
    }
    assert {name: (tuple(a), tuple(b)) for name, a, b in incompatible.incorrect_shapes} == differing
    assert sorted(incompatible.missing_keys) == sorted(differing)
    assert not incompatible.unexpected_keys
    after = video_model.state_dict()
    for name in video:
        if name in differing:
            assert torch.equal(after[name], before[name]), name
        elif after[name].is_floating_point():
            assert torch.all(after[name] == 0.5), name
