"""Tests of the generated shapes world dataset: determinism, detectron2 loaders, cross-format agreement,
detectron2 evaluators on ground truth, argument errors, folder handling and lazy catalog registration."""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json
from detectron2.data.detection_utils import annotations_to_instances, read_image
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import Instances
from panopticapi.utils import rgb2id

import mask2former  # noqa: F401  (registers the default shapes world names)
from mask2former.data.datasets.register_shapes_world import DENSE_PARAMS, register_shapes_world, shapes_world_metadata
from mask2former.data.synthetic.shapes_world import (
    MARKER_FILE,
    SHAPE_KINDS,
    ShapesWorldFolderError,
    SCENE_DEFAULTS,
    ensure_shapes_world,
    generate_image,
    main,
    instance_palette,
    render_shape,
    sample_shapes,
    shape_area,
    shape_polygons,
    shapes_world_paths,
    stuff_background,
)

SMALL = dict(num_train=6, num_val=4, seed=3, min_size=96, max_size=160)
PREFIX = "shapes_world_pytest"


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """SMALL registered under PREFIX in a temporary root and generated (by a first DatasetCatalog.get)."""
    root = tmp_path_factory.mktemp("d2datasets")
    names = register_shapes_world(str(root), prefix=PREFIX, **SMALL)
    DatasetCatalog.get(f"{PREFIX}_val_sem_seg")
    yield root / "shapes_world", names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_default_names_registered_without_generating():
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"shapes_world_{split}_panoptic")
        assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255
        assert MetadataCatalog.get(f"shapes_world_{split}_instance").evaluator_type == "coco"
        assert MetadataCatalog.get(f"shapes_world_{split}_sem_seg").evaluator_type == "sem_seg"
    meta = shapes_world_metadata()
    assert len(meta["thing_classes"]) >= 6 and len(meta["stuff_classes"]) - len(meta["thing_classes"]) >= 3
    assert set(meta["thing_classes"]) <= set(SHAPE_KINDS)


def test_default_registration_uses_detectron2_datasets():
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    meta = MetadataCatalog.get("shapes_world_val_panoptic")
    assert meta.panoptic_json == os.path.join(root, "shapes_world", "annotations", "panoptic_val.json")
    assert MetadataCatalog.get("shapes_world_train_sem_seg").sem_seg_root == os.path.join(
        root, "shapes_world", "semantic", "train"
    )


def test_registration_generates_on_first_get_then_reuses(tmp_path):
    names = register_shapes_world(
        str(tmp_path), prefix="shapes_world_lazy", num_train=2, num_val=1, min_size=64, max_size=96
    )
    try:
        assert list(tmp_path.iterdir()) == []  # registering generates nothing
        assert len(DatasetCatalog.get("shapes_world_lazy_val_instance")) == 1
        marker = tmp_path / "shapes_world" / MARKER_FILE
        stamp = marker.stat().st_mtime_ns
        assert len(DatasetCatalog.get("shapes_world_lazy_train_panoptic")) == 2
        assert len(DatasetCatalog.get("shapes_world_lazy_train_sem_seg")) == 2
        assert marker.stat().st_mtime_ns == stamp  # reused, not regenerated
        assert json.loads(marker.read_text())["params"]["num_train"] == 2
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_deterministic(tmp_path):
    small = dict(num_train=3, num_val=2, seed=5, min_size=96, max_size=128, show_progress=False)
    a = _files(ensure_shapes_world(tmp_path / "a", **small))
    b = _files(ensure_shapes_world(tmp_path / "b", **small))
    assert a == b
    # image i depends only on (seed, split, i): a smaller set is a prefix of a larger one
    c = _files(ensure_shapes_world(tmp_path / "c", **dict(small, num_train=2)))
    for name in ("images/train/train_000001.jpg", "panoptic/train/train_000001.png", "semantic/val/val_000001.png"):
        assert c[name] == a[name]
    d = _files(ensure_shapes_world(tmp_path / "d", **dict(small, seed=6)))
    assert d["images/train/train_000000.jpg"] != a["images/train/train_000000.jpg"]
    # several processes draw the same files (annotation ids included) as one
    e = _files(ensure_shapes_world(tmp_path / "e", **dict(small, workers=2)))
    assert e == a


def _instance_masks(record):
    h, w = record["height"], record["width"]
    instances = annotations_to_instances(record["annotations"], (h, w), mask_format="bitmask")
    return instances.gt_masks.tensor.numpy(), instances.gt_classes.numpy()


def test_formats_agree_through_detectron2_loaders(registered):
    folder, _ = registered
    meta = shapes_world_metadata()
    num_things = len(meta["thing_classes"])
    seen_polygon = seen_rle = False
    stuff_seen = set()
    images_with_ignore = num_instances = 0
    for split in ("train", "val"):
        paths = shapes_world_paths(folder, split)
        panoptic = load_coco_panoptic_json(paths["panoptic_json"], paths["image_root"], paths["panoptic_root"], meta)
        name = f"{PREFIX}_{split}_instance"
        records = load_coco_json(paths["instances_json"], paths["image_root"], dataset_name=name)
        instance = {d["image_id"]: d for d in records}
        semantic = {Path(d["file_name"]).stem: d for d in load_sem_seg(paths["sem_seg_root"], paths["image_root"])}
        assert len(panoptic) == len(instance) == len(semantic) == SMALL[f"num_{split}"]
        for rec in panoptic:
            image = read_image(rec["file_name"], format="RGB")
            pan = rgb2id(np.asarray(Image.open(rec["pan_seg_file_name"]).convert("RGB")))
            sem = np.asarray(Image.open(semantic[Path(rec["file_name"]).stem]["sem_seg_file_name"]))
            inst = instance[rec["image_id"]]
            h, w = inst["height"], inst["width"]
            assert image.shape == (h, w, 3) and pan.shape == sem.shape == (h, w)
            assert SMALL["min_size"] <= min(h, w) and max(h, w) <= SMALL["max_size"]

            # semantic map == panoptic map mapped to contiguous classes; void <-> ignore
            expected = np.full((h, w), 255, np.uint8)
            for seg in rec["segments_info"]:
                assert seg["isthing"] == (seg["category_id"] < num_things)
                expected[pan == seg["id"]] = seg["category_id"]
                if not seg["isthing"]:
                    stuff_seen.add(seg["category_id"])
            assert set(np.unique(pan)) <= {0} | {s["id"] for s in rec["segments_info"]}
            assert np.array_equal(sem, expected)
            images_with_ignore += bool((sem == 255).any())  # the band between stuff regions

            # each COCO instance mask == exactly one panoptic thing segment of the same class
            for ann in inst["annotations"]:
                assert ann["iscrowd"] == 0
                seen_polygon |= isinstance(ann["segmentation"], list)
                seen_rle |= isinstance(ann["segmentation"], dict)
            masks, classes = _instance_masks(inst)
            things = [s for s in rec["segments_info"] if s["isthing"]]
            assert len(things) == len(masks)
            num_instances += len(masks)
            for mask, cls in zip(masks, classes):
                ids = np.unique(pan[mask])
                assert len(ids) == 1, "instance mask spans several panoptic segments"
                seg = next(s for s in things if s["id"] == ids[0])
                assert seg["category_id"] == cls and np.array_equal(pan == seg["id"], mask)
    assert seen_polygon and seen_rle
    assert num_instances >= 3 * (SMALL["num_train"] + SMALL["num_val"]) // 2
    assert images_with_ignore >= (SMALL["num_train"] + SMALL["num_val"]) // 2
    assert len(stuff_seen) >= 3


def test_evaluators_score_ground_truth_100(registered, tmp_path):
    # panoptic quality
    name = f"{PREFIX}_val_panoptic"
    evaluator = COCOPanopticEvaluator(name, output_dir=str(tmp_path / "pan"))
    evaluator.reset()
    records = DatasetCatalog.get(name)
    for rec in records:
        pan = rgb2id(np.asarray(Image.open(rec["pan_seg_file_name"]).convert("RGB"))).astype(np.int32)
        segments = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]} for s in rec["segments_info"]
        ]
        evaluator.process([rec], [{"panoptic_seg": (torch.from_numpy(pan), segments)}])
    result = evaluator.evaluate()["panoptic_seg"]
    assert result["PQ"] == pytest.approx(100.0) and result["PQ_th"] == pytest.approx(100.0)
    assert result["PQ_st"] == pytest.approx(100.0)

    # semantic segmentation, both on the sem_seg dataset and on the panoptic one (it carries sem_seg_file_name)
    num_classes = len(shapes_world_metadata()["stuff_classes"])
    for name in (f"{PREFIX}_val_sem_seg", f"{PREFIX}_val_panoptic"):
        evaluator = SemSegEvaluator(name, distributed=False)
        evaluator.reset()
        for rec in DatasetCatalog.get(name):
            gt = torch.from_numpy(np.asarray(Image.open(rec["sem_seg_file_name"])).astype(np.int64))
            scores = torch.nn.functional.one_hot(gt.masked_fill(gt == 255, 0), num_classes).permute(2, 0, 1)
            evaluator.process([rec], [{"sem_seg": scores.float()}])
        result = evaluator.evaluate()["sem_seg"]
        assert result["mIoU"] == pytest.approx(100.0) and result["pACC"] == pytest.approx(100.0)

    # instance segmentation AP (pycocotools, without detectron2's compiled fast COCOeval)
    name = f"{PREFIX}_val_instance"
    evaluator = COCOEvaluator(
        name, tasks=("segm",), distributed=False, use_fast_impl=False, output_dir=str(tmp_path / "coco")
    )
    evaluator.reset()
    for rec in DatasetCatalog.get(name):
        gt = annotations_to_instances(rec["annotations"], (rec["height"], rec["width"]), mask_format="bitmask")
        pred = Instances((rec["height"], rec["width"]))
        pred.pred_masks = gt.gt_masks.tensor
        pred.pred_boxes = gt.gt_boxes
        pred.pred_classes = gt.gt_classes
        pred.scores = torch.ones(len(gt))
        evaluator.process([rec], [{"instances": pred}])
    result = evaluator.evaluate()["segm"]
    assert result["AP"] == pytest.approx(100.0) and result["AP50"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--num-train", "-1"], "--num-train"),
        (["--num-val", "0"], "--num-val"),
        (["--seed", "-2"], "--seed"),
        (["--min-size", "200", "--max-size", "100"], "--min-size"),
        (["--min-size", "16", "--max-size", "32"], "--min-size"),
        (["--num-train", "two"], "--num-train"),
        (["--workers", "0"], "--workers"),
        (["--min-shapes", "0"], "--min-shapes"),
        (["--min-shapes", "9", "--max-shapes", "4"], "--min-shapes"),
        (["--largest-shape", "1.5"], "--largest-shape"),
        (["--texture-scale", "0"], "--texture-scale"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as exc:
        main(["--output", str(tmp_path / "out"), "--no-progress"] + args)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_output_file_and_library_errors(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    with pytest.raises(SystemExit):
        main(["--output", str(a_file), "--num-train", "1", "--num-val", "1"])
    assert "--output" in capsys.readouterr().err and a_file.read_text() == "mine"
    with pytest.raises(ShapesWorldFolderError, match="file.txt"):
        ensure_shapes_world(a_file, num_train=1, num_val=1)
    with pytest.raises(ValueError, match="--num-val"):
        ensure_shapes_world(tmp_path / "x", num_train=1, num_val=-1)
    with pytest.raises(ValueError, match="--workers"):
        ensure_shapes_world(tmp_path / "x", num_train=1, num_val=1, workers=0)


def test_cli_writes_and_logs(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    args = ["--output", str(tmp_path / "sw"), "--num-train", "2", "--num-val", "1", "--min-size", "64",
            "--max-size", "96", "--no-progress"]
    folder = main(args)
    assert "wrote 2 train + 1 val images" in caplog.text
    assert sorted(p.name for p in (folder / "images" / "train").iterdir()) == ["train_000000.jpg", "train_000001.jpg"]
    main(args)
    assert "already complete" in caplog.text


def test_partial_corrupt_and_foreign_folders(tmp_path):
    small = dict(num_train=2, num_val=1, seed=1, min_size=64, max_size=96, show_progress=False)
    sentinel = tmp_path / "other_dataset" / "keep.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("keep")
    folder = ensure_shapes_world(tmp_path / "shapes_world", **small)
    original = _files(folder)

    # truncated file -> regenerated identically
    png = folder / "panoptic" / "train" / "train_000001.png"
    png.write_bytes(png.read_bytes()[:20])
    ensure_shapes_world(folder, **small)
    assert _files(folder) == original

    # missing marker (interrupted run) -> regenerated
    (folder / MARKER_FILE).unlink()
    (folder / "images" / "val" / "val_000000.jpg").unlink()
    ensure_shapes_world(folder, **small)
    assert _files(folder) == original

    # other parameters -> error naming the folder and what differs; nothing touched
    with pytest.raises(ShapesWorldFolderError, match=r"seed: folder has 1, requested 2") as exc:
        ensure_shapes_world(folder, **dict(small, seed=2))
    assert str(folder) in str(exc.value)
    assert _files(folder) == original

    # incomplete folder holding files the generator did not write -> error, nothing deleted
    (folder / MARKER_FILE).unlink()
    (folder / "notes.txt").write_text("user data")
    with pytest.raises(ShapesWorldFolderError, match="notes.txt"):
        ensure_shapes_world(folder, **small)
    assert (folder / "notes.txt").read_text() == "user data"
    assert sentinel.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other_dataset", "shapes_world"]  # no temp leftovers


def test_shape_and_texture_building_blocks():
    h = w = 96
    for kind in SHAPE_KINDS:
        mask = render_shape(kind, (48.0, 48.0), 60.0, 0.3, h, w)
        assert mask.dtype == bool and mask.shape == (h, w)
        assert abs(mask.sum() - shape_area(kind, 60.0)) < 0.1 * shape_area(kind, 60.0), kind
        assert mask[10:-10, 10:-10].sum() == mask.sum()  # inside its circumscribed circle
    assert not render_shape("ring", (48.0, 48.0), 60.0, 0.0, h, w)[48, 48]
    assert render_shape("circle", (48.0, 48.0), 60.0, 0.0, h, w)[48, 48]
    tiny = render_shape("circle", (20.0, 20.0), 8.0, 0.0, h, w)
    assert 30 <= tiny.sum() <= 70
    image, labels = stuff_background(np.random.default_rng(0), 80, 120)
    assert image.shape == (80, 120, 3) and labels.shape == (80, 120)
    assert (labels == -1).any() and len(np.unique(labels[labels >= 0])) >= 2
    with pytest.raises(ValueError, match="shape kind"):
        render_shape("blob", (1.0, 1.0), 8.0, 0.0, h, w)


def _segments_cross(p1, p2, q1, q2):
    def side(a, b, c):
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    return side(p1, p2, q1) * side(p1, p2, q2) < 0 and side(q1, q2, p1) * side(q1, q2, p2) < 0


def test_outlines_are_simple_and_the_cross_has_arms():
    for kind in SHAPE_KINDS:
        outer, holes = shape_polygons(kind, (0.0, 0.0), 60.0, 0.7)
        for poly in outer + holes:
            edges = [(poly[i], poly[(i + 1) % len(poly)]) for i in range(len(poly))]
            for i in range(len(edges)):
                for j in range(i + 2, len(edges)):
                    if i == 0 and j == len(edges) - 1:
                        continue  # neighbours through the closing vertex
                    assert not _segments_cross(*edges[i], *edges[j]), f"{kind}: edges {i} and {j} cross"
    # a plus sign: four arm tips inside, the four corners between the arms outside
    cross = render_shape("cross", (48.0, 48.0), 60.0, 0.0, 96, 96)
    for dy, dx in ((0, 27), (27, 0), (0, -27), (-27, 0)):
        assert cross[48 + dy, 48 + dx], (dy, dx)
    for dy, dx in ((15, 15), (15, -15), (-15, 15), (-15, -15)):
        assert not cross[48 + dy, 48 + dx], (dy, dx)


def test_colour_does_not_identify_the_class():
    palette = instance_palette()
    colours = {}  # kind -> set of nearest palette entries
    for seed in range(8):
        shapes, masks = sample_shapes(np.random.default_rng(seed), 128, 128, SHAPE_KINDS, palette)
        assert len(shapes) == len(masks) >= 1
        for shape in shapes:
            nearest = int(np.argmin(np.abs(palette - np.asarray(shape.color)).sum(axis=1)))
            colours.setdefault(shape.kind, set()).add(nearest)
    assert len(colours) >= 6
    assert all(len(c) >= 2 for c in colours.values())
    shared = [k for k in colours for other in colours if other != k and colours[k] & colours[other]]
    assert len(shared) >= 4


def test_second_world_has_more_and_smaller_shapes_and_coarser_textures():
    assert MetadataCatalog.get("shapes_world_dense_val_panoptic").panoptic_json.endswith(
        os.path.join("shapes_world_dense", "annotations", "panoptic_val.json")
    )
    counts, sides = {}, {}
    for name, scene in (("default", None), ("dense", DENSE_PARAMS)):
        counts[name], sides[name] = [], []
        for i in range(12):
            sample = generate_image(np.random.default_rng(i), 192, 192, scene)
            things = [s["mask"].sum() for s in sample["segments"] if s["isthing"]]
            counts[name].append(len(things))
            sides[name] += [float(np.sqrt(a)) for a in things]
    assert np.mean(counts["dense"]) > 1.5 * np.mean(counts["default"])
    assert np.median(sides["dense"]) < np.median(sides["default"])
    assert max(sides["dense"]) <= 0.25 * 192  # sizes are diameters, at most a quarter of the side
    # the same draw with magnified textures: the stuff layout is the same, its fine detail coarser
    fine = generate_image(np.random.default_rng(0), 160, 160, {"min_shapes": 1, "max_shapes": 1, "largest_shape": 0.05})
    coarse = generate_image(np.random.default_rng(0), 160, 160, {"min_shapes": 1, "max_shapes": 1, "largest_shape": 0.05,
                                                                  "texture_scale": 2.0})
    assert (fine["semantic"] == coarse["semantic"]).mean() > 0.9

    def detail(image):
        gray = image.astype(np.float32).mean(-1)
        return np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean()

    assert detail(coarse["image"]) < 0.8 * detail(fine["image"])


def test_scene_parameters_are_recorded_and_older_folders_keep_working(tmp_path):
    small = dict(num_train=2, num_val=1, seed=1, min_size=64, max_size=96, show_progress=False)
    folder = ensure_shapes_world(tmp_path / "sw", **small)
    marker = folder / MARKER_FILE
    info = json.loads(marker.read_text())
    assert {k: info["params"][k] for k in SCENE_DEFAULTS} == SCENE_DEFAULTS
    # a folder written before the scene statistics were parameters holds the defaults: reused as it is
    for key in SCENE_DEFAULTS:
        del info["params"][key]
    marker.write_text(json.dumps(info))
    original = _files(folder)
    ensure_shapes_world(folder, **small)
    assert _files(folder) == original
    # ... and is not mistaken for the second world
    with pytest.raises(ShapesWorldFolderError, match=r"max_shapes: folder has 14, requested 24"):
        ensure_shapes_world(folder, **small, **DENSE_PARAMS)
    with pytest.raises(ValueError, match="--largest-shape"):
        ensure_shapes_world(tmp_path / "x", **small, largest_shape=0.0)
    assert _files(folder) == original
