"""Tests of the mask classifier: the MaskClassifier model (tiny config), its training mapper and prompt
perturbations, the SAM mask readers and the output writers, and tools/classify_masks.py end to end."""
import json
import os
import sys
import types

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

import mask2former  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from mask2former import add_maskformer2_config
from mask2former.data.dataset_mappers import build_dataset_mapper
from mask2former.data.datasets.loading import rgb2id
from mask2former.data.datasets.register_shapes_world import register_shapes_world
from mask2former.data.mask_prompts import PERTURBATIONS, label_prompts, perturb_mask
from mask2former.data.sam_masks import MaskInputError, read_given_masks
from mask2former.evaluation.labelled_masks import coco_instance_records, panoptic_segmentation
from mask2former.modeling.meta_arch.mask_classifier import prompt_attention_masks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/shapes_world/mask_classifier_R18_panoptic.yaml")
PREFIX = "shapes_world_maskcls_pytest"
K = 11

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    register_shapes_world(str(root), prefix=PREFIX, num_train=2, num_val=2, min_size=64, max_size=96)
    return DatasetCatalog.get(f"{PREFIX}_val_panoptic")


def tiny_cfg(meta_arch="MaskClassifier", **overrides):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", meta_arch, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.SEM_SEG_HEAD.MASK_DIM", 32,
        "MODEL.MASK_FORMER.HIDDEN_DIM", 32, "MODEL.MASK_FORMER.DIM_FEEDFORWARD", 64,
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", 4, "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", 1,
        "INPUT.MIN_SIZE_TEST", 64, "DATASETS.TRAIN", (f"{PREFIX}_train_panoptic",),
    ])
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    return cfg


def model_of(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def image(h, w, seed=0):
    return torch.as_tensor(np.random.RandomState(seed).randint(0, 255, (3, h, w), dtype=np.uint8))


def blob_masks(p, h, w, seed=0):
    rng = np.random.RandomState(seed)
    masks = np.zeros((p, h, w), dtype=bool)
    for i in range(p):
        y, x = rng.randint(0, h - 8), rng.randint(0, w - 8)
        masks[i, y: y + rng.randint(4, h // 2), x: x + rng.randint(4, w // 2)] = True
    return torch.as_tensor(masks)


# ------------------------------------------------------------------ model
def test_outputs_per_given_mask_in_order():
    model = model_of(tiny_cfg(**{"MODEL.MASK_CLASSIFIER.REFINE_MASKS": True})).eval()
    masks = blob_masks(3, 70, 90)
    with torch.no_grad():
        out = model([{"image": image(70, 90), "prompt_masks": masks, "height": 140, "width": 180},
                     {"image": image(64, 64, 1), "prompt_masks": torch.zeros((0, 64, 64), dtype=torch.bool)}])
    a, b = out[0]["instances"], out[1]["instances"]
    assert a.class_probs.shape == (3, K + 1) and torch.allclose(a.class_probs.sum(1), torch.ones(3))
    assert a.pred_classes.shape == (3,) and (a.pred_classes < K).all()  # the best of the K real classes
    assert torch.equal(a.scores, a.class_probs[torch.arange(3), a.pred_classes])
    assert a.pred_masks.shape == (3, 140, 180) and a.refined_masks.shape == (3, 140, 180)
    # The given masks come back at the output size (2x here): same pixels, in the same order.
    assert torch.equal(a.pred_masks[:, ::2, ::2], masks)
    assert len(b) == 0 and b.class_probs.shape == (0, K + 1)


def test_padding_prompts_of_a_batch_change_nothing():
    model = model_of(tiny_cfg()).eval()
    x = {"image": image(64, 96), "prompt_masks": blob_masks(2, 64, 96)}
    y = {"image": image(64, 96, 1), "prompt_masks": blob_masks(7, 64, 96, 1)}
    with torch.no_grad():
        alone = model([x])[0]["instances"].class_probs
        batched = model([x, y])[0]["instances"].class_probs
    assert torch.allclose(alone, batched, atol=1e-5)


def test_vanishing_mask_attends_everywhere_at_coarse_scales():
    mask = torch.zeros((1, 1, 64, 64), dtype=torch.bool)
    mask[0, 0, 20:23, 40:43] = True  # 3 x 3 px: gone at 1/32 and 1/16, present at 1/8 (8 x 8 px cells)
    coarse, middle, fine = prompt_attention_masks(mask, [(2, 2), (4, 4), (16, 16)], num_heads=2)
    assert coarse.shape == (2, 1, 4) and not coarse.any()  # official fallback: nothing blocked
    assert not middle.any()
    assert fine.shape == (2, 1, 256) and fine.sum(-1).tolist() == [[255], [255]]  # only the mask's cell open
    assert not fine[0, 0].view(16, 16)[5, 10]
    # The model classifies such masks (and empty ones) without NaNs.
    model = model_of(tiny_cfg()).eval()
    prompts = torch.zeros((2, 64, 64), dtype=torch.bool)
    prompts[0, 20, 40] = True
    with torch.no_grad():
        probs = model([{"image": image(64, 64), "prompt_masks": prompts}])[0]["instances"].class_probs
    assert torch.isfinite(probs).all()


def test_only_class_branch_and_query_init_train_by_default():
    model = model_of(tiny_cfg())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "prompt_proj.weight", "prompt_proj.bias", "prompt_feat.weight", "prompt_pos.weight",
        "sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias",
        "sem_seg_head.predictor.decoder_norm.weight", "sem_seg_head.predictor.decoder_norm.bias"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not model.backbone.training  # frozen BatchNorm keeps its statistics
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = {"image": image(64, 64), "prompt_masks": blob_masks(3, 64, 64), "prompt_classes": torch.tensor([0, 7, K])}
    loss = model([x])["loss_prompt_ce"]
    assert loss.item() > 0
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable
    assert all(not k.startswith("backbone.") for k in changed)  # includes BN running stats
    everything = model_of(tiny_cfg(**{"MODEL.MASK_CLASSIFIER.TRAIN_ALL": True}))
    assert all(p.requires_grad for p in everything.parameters())


def test_maskformer_checkpoint_loads(dataset, tmp_path):
    # a panoptic model with the crop classifier: its head is not part of the classifier
    maskformer = model_of(tiny_cfg("MaskFormer", **{"MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT": 2.0}), seed=1)
    DetectionCheckpointer(maskformer, save_dir=str(tmp_path)).save("mf")
    classifier = model_of(tiny_cfg(), seed=2)
    DetectionCheckpointer(classifier).load(str(tmp_path / "mf.pth"), checkpointables=[])
    mf_state, cls_state = maskformer.state_dict(), classifier.state_dict()
    reused = [k for k in cls_state if k in mf_state]
    assert len(reused) > 100 and all(torch.equal(cls_state[k], mf_state[k]) for k in reused)
    assert {k for k in cls_state if k not in mf_state} == {
        "prompt_proj.weight", "prompt_proj.bias", "prompt_feat.weight", "prompt_pos.weight"}
    unused = {k for k in mf_state if k not in cls_state}
    assert {k for k in unused if not k.startswith("crop_classifier.")} == {"criterion.empty_weight"}
    assert any(k.startswith("crop_classifier.") for k in unused)
    with pytest.raises(ValueError, match="CROP_CLASSIFIER.WEIGHT"):
        model_of(tiny_cfg(**{"MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT": 2.0}))


# ------------------------------------------------------------------ prompts and mapper
def _two_touching():
    a = np.zeros((60, 60), dtype=bool)
    a[10:30, 10:30] = True
    b = np.zeros((60, 60), dtype=bool)
    b[10:30, 30:50] = True
    return a, b


def test_perturbations():
    a, b = _two_touching()
    rng = np.random.RandomState(0)
    for kind in PERTURBATIONS:
        for _ in range(5):
            m = perturb_mask(a, kind, rng, others=[b])
            assert m.dtype == bool and m.shape == a.shape and m.any()
            if kind in ("erode", "partial", "part"):
                assert (m <= a).all() and m.sum() < a.sum()
            if kind == "dilate":
                assert (m >= a).all() and m.sum() > a.sum()
            if kind == "partial":
                assert m.sum() >= 0.5 * a.sum()
            if kind == "merge":
                assert np.array_equal(m, a | b)
            if kind == "noisy_boundary":
                iou = (m & a).sum() / (m | a).sum()
                assert 0.4 < iou < 1.0
    with pytest.raises(ValueError, match="unknown mask perturbation"):
        perturb_mask(a, "shrink", rng)


def test_prompt_labels():
    a, b = _two_touching()
    stuff = ~(a | b)
    segments = np.stack([a, b, stuff])
    classes, is_thing = [3, 5, 8], [True, True, False]
    small_part = np.zeros_like(a)
    small_part[10:13, 10:13] = True  # inside a, but 9 / 400 of it
    fragment = np.zeros_like(a)
    fragment[40:55, 5:20] = True  # background
    straddling = np.zeros_like(a)
    straddling[25:45, 20:40] = True  # an eighth in each of a and b, the rest background: the stuff class
    two_halves = np.zeros_like(a)
    two_halves[20:30, 20:40] = True  # half in a, half in b, each a quarter of its object: not an object
    prompts = np.stack([a, a | b, small_part, fragment, straddling, two_halves])
    labels = label_prompts(prompts, segments, classes, is_thing, num_classes=K)
    assert labels.tolist() == [3, 3, K, 8, 8, K]


def test_mapper_gives_labelled_prompts(dataset):
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN = (f"{PREFIX}_val_panoptic",)
    mapper = build_dataset_mapper(cfg, is_train=True)
    mapper.rng = np.random.RandomState(0)
    for d in dataset:
        out = mapper(d)
        p = out["prompt_masks"]
        assert p.dtype == torch.bool and p.shape[1:] == out["image"].shape[1:] and p.flatten(1).any(1).all()
        assert out["prompt_classes"].shape == (len(p),)
        assert ((out["prompt_classes"] >= 0) & (out["prompt_classes"] <= K)).all()
        assert "instances" not in out
    # An instance dataset: every class is a thing; negatives fall outside the objects and are "no object".
    cfg = tiny_cfg(**{"INPUT.MASK_PROMPTS.SOURCE_MAPPER_NAME": "mask_former_instance",
                      "INPUT.MASK_PROMPTS.CLEAN_PROB": 1.0, "INPUT.MASK_PROMPTS.NUM_NEGATIVES": 2})
    cfg.DATASETS.TRAIN = (f"{PREFIX}_val_instance",)
    mapper = build_dataset_mapper(cfg, is_train=True)
    assert mapper.thing_classes is None
    mapper.rng = np.random.RandomState(0)
    d = DatasetCatalog.get(f"{PREFIX}_val_instance")[0]
    out = mapper(d)
    labels = out["prompt_classes"].tolist()
    num_objects = len(labels) - 2
    assert num_objects > 0 and all(c < 7 for c in labels[:num_objects])
    assert labels[num_objects] == K  # the background fragment (then a random blob, labelled by what it covers)
    with pytest.raises(ValueError, match="SOURCE_MAPPER_NAME"):
        build_dataset_mapper(tiny_cfg(**{"INPUT.MASK_PROMPTS.SOURCE_MAPPER_NAME": "mask_classifier"}))


# ------------------------------------------------------------------ readers and writers
def rle(mask, as_list=False):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    if as_list:  # uncompressed: run lengths in column-major order
        flat = mask.T.flatten().astype(np.int8)
        changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}
    return {"size": list(mask.shape), "counts": r["counts"].decode()}


def test_readers_rle_binary_and_sa1b(tmp_path):
    a, b = _two_touching()
    amg = [{"segmentation": rle(a), "area": int(a.sum()), "bbox": [10, 10, 20, 20], "predicted_iou": 0.9,
            "stability_score": 0.95, "point_coords": [[20, 20]], "crop_box": [0, 0, 60, 60]},
           {"segmentation": b.astype(int).tolist(), "predicted_iou": 0.8},
           {"segmentation": rle(a | b, as_list=True)}]
    g = read_given_masks(amg, (60, 60))
    assert np.array_equal(g.masks, np.stack([a, b, a | b])) and g.ids == [0, 1, 2]
    assert g.records[0]["crop_box"] == [0, 0, 60, 60] and "segmentation" not in g.records[0]
    path = tmp_path / "sa_1.json"
    path.write_text(json.dumps({"image": {"image_id": 7, "height": 60, "width": 60, "file_name": "sa_1.jpg"},
                                "annotations": [{"id": 41, "segmentation": rle(b)}, {"id": 40, "segmentation": rle(a)}]}))
    g = read_given_masks(str(path), (60, 60))
    assert g.ids == [41, 40] and np.array_equal(g.masks[1], a) and g.image_info["image_id"] == 7


@pytest.mark.parametrize("bad,message", [
    (np.ones((61, 60), dtype=int).tolist(), "mask 1: the mask is 60x61 .* but the image is 60x60"),
    (np.zeros((60, 60), dtype=int).tolist(), "mask 1: the mask is empty"),
    ({"size": [60, 60], "counts": "PPX0"}, "mask 1: invalid RLE"),
    ({"size": [60, 60], "counts": "~~~"}, "mask 1: invalid RLE"),
    ({"size": [60, 60], "counts": [100, 20]}, "mask 1: invalid RLE"),
    ({"counts": "abc"}, "mask 1: an RLE segmentation needs 'size' and 'counts'"),
    ((np.ones((60, 60)) * 2).tolist(), "mask 1: segmentation array has values other than 0 and 1"),
])
def test_bad_masks_name_file_and_index(bad, message):
    a, _ = _two_touching()
    records = [{"segmentation": rle(a)}, {"segmentation": bad}, {"segmentation": rle(a)}]
    with pytest.raises(MaskInputError, match="'masks_x.json', " + message):
        read_given_masks(records, (60, 60), source="masks_x.json")
    g = read_given_masks(records, (60, 60), source="masks_x.json", skip_bad=True)
    assert g.ids == [0, 2] and g.indices == [0, 2] and [s[:2] for s in g.skipped] == [(1, 1)]


def test_files_not_in_sam_format(tmp_path):
    for content, message in [({"images": [], "annotations_x": []}, "not SAM's format"),
                             ([{"mask": []}], "mask 0: not SAM's format: every mask needs a 'segmentation'"),
                             ("text", "not SAM's format")]:
        path = tmp_path / "coco.json"
        path.write_text(json.dumps(content))
        with pytest.raises(MaskInputError, match=f"'{path}'.*{message}"):
            read_given_masks(str(path), (60, 60))
    path.write_text("{not json")
    with pytest.raises(MaskInputError, match="not a JSON file"):
        read_given_masks(str(path), (60, 60))


def test_panoptic_overlaps_by_score_and_coco_records():
    a, b = _two_touching()
    big = np.zeros_like(a)
    big[5:35, 5:55] = True  # covers a and b
    wall = np.zeros_like(a)
    wall[40:, :30] = True
    wall2 = np.zeros_like(a)
    wall2[40:, 30:] = True
    masks = np.stack([big, a, b, wall, wall2])
    probs = np.full((5, K + 1), 0.01)
    probs[0, 2], probs[1, 0], probs[2, K], probs[3, 9], probs[4, 9] = 0.5, 0.9, 0.9, 0.7, 0.6
    ids = [10, 11, 12, 13, 14]
    dataset_ids = {c: c + 1 for c in range(K)}
    seg, segments = panoptic_segmentation(masks, probs, thing_classes=range(7), dataset_ids=dataset_ids, ids=ids)
    by_mask = {s["mask_ids"][0]: s for s in segments}
    assert set(by_mask) == {10, 11, 13}  # 12 is "no object"; the two walls form one stuff segment
    assert by_mask[13]["mask_ids"] == [13, 14] and by_mask[13]["area"] == int((wall | wall2).sum())
    assert (seg[a] == by_mask[11]["id"]).all()  # a (0.9) wins over big (0.5) where they overlap
    assert by_mask[10]["area"] == int((big & ~a).sum())
    recs = coco_instance_records("img", ids, masks, probs, dataset_ids)
    assert [r["id"] for r in recs] == ids and recs[2]["category_id"] == int(np.argmax(probs[2, :-1])) + 1
    assert recs[2]["no_object_score"] == pytest.approx(0.9)
    assert np.array_equal(mask_util.decode(recs[1]["segmentation"]).astype(bool), a)


# ------------------------------------------------------------------ the tool
def _sam_files(dataset, folder):
    """SAM-style JSONs from the ground truth of 2 images: one automatic-generator list (RLE), one with binary
    arrays; returns the image paths, and per image the masks in file order."""
    folder.mkdir()
    paths, all_masks = [], []
    for n, d in enumerate(dataset[:2]):
        ids = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")))
        masks = [ids == s["id"] for s in d["segments_info"]]
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        if n == 0:
            records = [{"segmentation": rle(m), "area": int(m.sum()), "predicted_iou": 0.9, "stability_score": 0.9,
                        "bbox": [0, 0, 1, 1], "point_coords": [[0, 0]], "crop_box": [0, 0, 1, 1]} for m in masks]
        else:
            records = [{"segmentation": m.astype(int).tolist()} for m in masks]
        (folder / f"{stem}.json").write_text(json.dumps(records))
        paths.append(d["file_name"])
        all_masks.append(masks)
    return paths, all_masks


@pytest.fixture(scope="module")
def classifier_weights(tmp_path_factory, dataset):
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model_of(tiny_cfg()), save_dir=str(folder)).save("classifier")
    return str(folder / "classifier.pth")


def tool_args(images, masks, out, weights, *extra):
    return ["--config-file", CONFIG, "--input", *images, "--masks", masks, "--output", str(out), *extra,
            "MODEL.WEIGHTS", weights, "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
            "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "4", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
            "INPUT.MIN_SIZE_TEST", "64", "DATASETS.TRAIN", f"('{PREFIX}_train_panoptic',)"]


def _tool():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import classify_masks
    finally:
        sys.path.pop(0)
    return classify_masks


def test_tool_end_to_end(dataset, classifier_weights, tmp_path, capsys):
    images, masks = _sam_files(dataset, tmp_path / "masks")
    tool = _tool()
    out = tmp_path / "out"
    assert tool.main(tool_args(images, str(tmp_path / "masks"), out, classifier_weights)) == 0
    instances = json.loads((out / "instances.json").read_text())
    stems = [os.path.splitext(os.path.basename(p))[0] for p in images]
    assert [r["image_id"] for r in instances] == [stems[0]] * len(masks[0]) + [stems[1]] * len(masks[1])
    assert [r["id"] for r in instances] == list(range(len(masks[0]))) + list(range(len(masks[1])))
    assert all(np.array_equal(mask_util.decode(r["segmentation"]).astype(bool), m)
               for r, m in zip(instances, masks[0] + masks[1]))
    assert instances[0]["sam"]["predicted_iou"] == 0.9
    panoptic = json.loads((out / "panoptic.json").read_text())
    assert len(panoptic["annotations"]) == 2 and len(panoptic["categories"]) == K
    for ann, d in zip(panoptic["annotations"], dataset):
        png = np.asarray(Image.open(out / "panoptic" / ann["file_name"]))
        h, w = np.asarray(Image.open(d["file_name"])).shape[:2]
        assert png.shape[:2] == (h, w)
        assert set(np.unique(rgb2id(png))) - {0} == {s["id"] for s in ann["segments_info"]}
        picture = np.asarray(Image.open(out / "pictures" / ann["file_name"]))
        assert picture.shape == (h, 2 * w, 3)
    assert "2 image(s)" in capsys.readouterr().out


def test_tool_bad_mask_stops_or_is_counted(dataset, classifier_weights, tmp_path, capsys):
    images, masks = _sam_files(dataset, tmp_path / "masks")
    stem = os.path.splitext(os.path.basename(images[1]))[0]
    path = tmp_path / "masks" / f"{stem}.json"
    records = json.loads(path.read_text())
    records[2]["segmentation"] = [[1]]  # another size than the image
    path.write_text(json.dumps(records))
    tool = _tool()
    assert tool.main(tool_args(images, str(tmp_path / "masks"), tmp_path / "o1", classifier_weights)) == 2
    assert f"'{path}', mask 2: the mask is 1x1" in capsys.readouterr().err
    assert tool.main(tool_args(images, str(tmp_path / "masks"), tmp_path / "o2", classifier_weights,
                               "--skip-bad-masks")) == 0
    assert "1 bad mask(s) skipped" in capsys.readouterr().out
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary[1]["skipped"][0]["index"] == 2 and summary[1]["num_read"] == len(masks[1])
    ids = [r["id"] for r in json.loads((tmp_path / "o2" / "instances.json").read_text()) if r["image_id"] == stem]
    assert ids == [i for i in range(len(masks[1])) if i != 2]


def test_tool_sam_checkpoint_is_optional(dataset, classifier_weights, tmp_path, capsys, monkeypatch):
    images, masks = _sam_files(dataset, tmp_path / "masks")
    tool = _tool()
    empty = tmp_path / "none"
    empty.mkdir()
    ckpt = tmp_path / "sam.pth"
    ckpt.write_bytes(b"stand-in")
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # not installed
    assert tool.main(tool_args(images[:1], str(empty), tmp_path / "o", classifier_weights,
                               "--sam-checkpoint", str(ckpt))) == 2
    assert "pip install segment-anything" in capsys.readouterr().err

    class Generator:  # a local stand-in for SamAutomaticMaskGenerator: the image's ground-truth masks
        def __init__(self, sam):
            pass

        def generate(self, rgb):
            return [{"segmentation": m, "predicted_iou": 0.5} for m in masks[0]]

    class Sam:
        def to(self, device):
            return self

    fake = types.SimpleNamespace(SamAutomaticMaskGenerator=Generator,
                                 sam_model_registry={"vit_h": lambda checkpoint: Sam()})
    monkeypatch.setitem(sys.modules, "segment_anything", fake)
    assert tool.main(tool_args(images[:1], str(empty), tmp_path / "o", classifier_weights,
                               "--sam-checkpoint", str(ckpt))) == 0
    instances = json.loads((tmp_path / "o" / "instances.json").read_text())
    assert len(instances) == len(masks[0]) and instances[0]["sam"] == {"predicted_iou": 0.5}


def test_eval_tool_on_two_images(dataset, tmp_path, capsys):
    DetectionCheckpointer(model_of(tiny_cfg("MaskFormer")), save_dir=str(tmp_path)).save("base")
    DetectionCheckpointer(model_of(tiny_cfg()), save_dir=str(tmp_path)).save("cls")
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import eval_mask_classifier
    finally:
        sys.path.pop(0)
    args = tool_args([], "", "", "")[tool_args([], "", "", "").index("MODEL.SEM_SEG_HEAD.CONVS_DIM"):]
    results = eval_mask_classifier.main([
        "--config-file", CONFIG, "--classifier-weights", str(tmp_path / "cls.pth"), "--baseline-weights",
        str(tmp_path / "base.pth"), "--dataset", f"{PREFIX}_val_panoptic", "--output", str(tmp_path / "r.json"), *args])
    for mask_set in ("clean", "perturbed"):
        for method in ("baseline", "classifier"):
            r = results[mask_set][method]
            assert 0 <= r["top1"] <= r["top5"] <= 100 and 0 <= r["PQ"] <= 100 and r["num_masks"] > 0
    # Clean masks are the ground truth: every one has a class.
    assert results["clean"]["classifier"]["num_labelled"] == results["clean"]["classifier"]["num_masks"]
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == 2
    assert "| clean | classifier |" in capsys.readouterr().out


def test_resizing_keeps_thin_masks():
    from demo.mask_classifier import resize_masks
    masks = torch.zeros((2, 100, 100), dtype=torch.bool)
    masks[0, 8:60, 8:60] = True
    masks[1, 71, 30:90] = True  # one pixel thin, on a row that bilinear resizing to 1/4 does not sample
    plain = torch.nn.functional.interpolate(masks[None].float(), size=(25, 25), mode="bilinear")[0] >= 0.5
    assert not plain[1].any()
    small = resize_masks(masks, (25, 25))
    assert torch.equal(small[0], plain[0]) and small[1].any() and small[1].sum() <= 16
