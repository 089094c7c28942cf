"""Video data: YouTube-VIS / OVIS registration and loading, the "ytvis" clip mapper, shapes world videos."""
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from mask2former.data.dataset_mappers import MAPPER_REGISTRY, BadDatasetItemError, build_dataset_mapper
from mask2former.data.dataset_mappers.ytvis_dataset_mapper import sample_clip_frames
from mask2former.data.synthetic import shapes_world_video
from mask2former.data.datasets.loading import datasets_root
from mask2former.data.datasets.register_ytvis import register_shapes_world_video, register_ytvis_instances
from mask2former.data.datasets.ytvis import load_ytvis_json

from video_testing import tiny_video_cfg

H, W = 24, 32


# ------------------------------------------------------------------------------------------- fake trees
def rle(mask, compressed=True):
    if not compressed:  # uncompressed RLE: column-major run lengths starting with zeros
        flat = mask.flatten(order="F").astype(np.uint8)
        changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])) != 0)
        counts = np.diff(np.concatenate([[0], changes])).tolist()
        counts = counts[:-1] if counts[-1] == 0 else counts
        return {"size": [H, W], "counts": counts if flat[0] == 0 else [0] + counts}
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": r["counts"].decode("ascii")}


def box(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def write_tree(root, image_dir, json_path, categories, num_frames=4, annotations=True, frame_color=None):
    """Two videos of ``num_frames`` frames; video 1 has instance 11 (moving box, absent in the last frame)
    and instance 12 (a polygon, only in frame 1); video 2 has none."""
    videos, anns = [], []
    for vid in (1, 2):
        names = []
        for t in range(num_frames):
            rel = f"vid{vid}/{t:05d}.jpg"
            os.makedirs(os.path.join(root, image_dir, f"vid{vid}"), exist_ok=True)
            color = frame_color if frame_color is not None else (10 * t, 100, 50 * vid)
            cv2.imwrite(os.path.join(root, image_dir, rel), np.full((H, W, 3), color, np.uint8))
            names.append(rel)
        videos.append({"id": vid, "file_names": names, "height": H, "width": W, "length": num_frames})
    segs = [rle(box(2 + t, 3, 10 + t, 12), compressed=t % 2 == 0) for t in range(num_frames - 1)] + [None]
    anns.append({"id": 11, "video_id": 1, "category_id": categories[1]["id"], "iscrowd": 0, "segmentations": segs,
                 "bboxes": [[2 + t, 3, 8, 9] for t in range(num_frames - 1)] + [None],
                 "areas": [72] * (num_frames - 1) + [None]})
    poly = [None] * num_frames
    poly[1] = [[20.0, 5.0, 30.0, 5.0, 30.0, 15.0, 20.0, 15.0]]
    anns.append({"id": 12, "video_id": 1, "category_id": categories[0]["id"], "iscrowd": 0, "segmentations": poly,
                 "bboxes": [None, [20, 5, 10, 10]] + [None] * (num_frames - 2), "areas": [None] * num_frames})
    data = {"videos": videos, "categories": categories}
    if annotations:
        data["annotations"] = anns
    os.makedirs(os.path.dirname(os.path.join(root, json_path)), exist_ok=True)
    with open(os.path.join(root, json_path), "w") as f:
        json.dump(data, f)
    return data


CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


@pytest.fixture
def tree(tmp_path):
    write_tree(str(tmp_path), "train/JPEGImages", "train.json", CATS)
    return str(tmp_path / "train.json"), str(tmp_path / "train/JPEGImages")


# ------------------------------------------------------------------------------------------- registration
def test_official_names_are_registered_under_the_datasets_root():
    root = datasets_root()
    expected = {
        "ytvis_2019_train": ("ytvis_2019/train/JPEGImages", "ytvis_2019/train.json"),
        "ytvis_2019_val": ("ytvis_2019/valid/JPEGImages", "ytvis_2019/valid.json"),
        "ytvis_2021_train": ("ytvis_2021/train/JPEGImages", "ytvis_2021/train.json"),
        "ytvis_2021_val": ("ytvis_2021/valid/JPEGImages", "ytvis_2021/valid.json"),
        "ovis_train": ("ovis/train", "ovis/annotations/annotations_train.json"),
        "ovis_val": ("ovis/valid", "ovis/annotations/annotations_valid.json"),
    }
    for name, (images, js) in expected.items():
        assert name in DatasetCatalog.list(), name
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "ytvis"
        assert meta.image_root == os.path.join(root, images) and meta.json_file == os.path.join(root, js)
    classes = MetadataCatalog.get("ytvis_2019_train").thing_classes
    assert len(classes) == 40 and classes[0] == "person" and classes[-1] == "tennis_racket"
    assert MetadataCatalog.get("ytvis_2019_val").thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(40)}
    assert "ytvis" in MAPPER_REGISTRY


@pytest.mark.parametrize("family", ["ytvis_2021", "ovis"])
def test_class_lists_without_a_data_file_come_from_the_json(tmp_path, family):
    """Registering reads nothing; the metadata's class list is read from the JSON's categories on first use."""
    name = f"test_{family}_{tmp_path.name}"
    json_file = str(tmp_path / "ann.json")
    register_ytvis_instances(name, {}, json_file, str(tmp_path / "frames"))
    cats = [{"id": 5, "name": "zebra"}, {"id": 2, "name": "ape"}]
    write_tree(str(tmp_path), "frames", "ann.json", cats)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["ape", "zebra"] and meta.thing_dataset_id_to_contiguous_id == {2: 0, 5: 1}
    dicts = DatasetCatalog.get(name)
    assert [o["category_id"] for o in dicts[0]["annotations"][0]] == [0]  # instance 11 is an "ape" (id 2)


def test_2019_class_list_is_checked_against_the_json(tmp_path):
    name = f"test_ytvis_2019_{tmp_path.name}"
    meta = {k: MetadataCatalog.get("ytvis_2019_train").get(k)
            for k in ("thing_classes", "thing_dataset_id_to_contiguous_id")}
    register_ytvis_instances(name, meta, str(tmp_path / "train.json"), str(tmp_path / "JPEGImages"))
    write_tree(str(tmp_path), "JPEGImages", "train.json", CATS)
    with pytest.raises(ValueError, match="do not match the classes registered"):
        DatasetCatalog.get(name)


# ------------------------------------------------------------------------------------------- loader
def test_load_ytvis_json(tree):
    json_file, image_root = tree
    dicts = load_ytvis_json(json_file, image_root)
    assert [d["video_id"] for d in dicts] == [1, 2]
    v = dicts[0]
    assert v["length"] == 4 and v["height"] == H and v["width"] == W
    assert v["file_names"][2] == os.path.join(image_root, "vid1/00002.jpg")
    assert [[o["id"] for o in f] for f in v["annotations"]] == [[11], [11, 12], [11], []]
    obj = v["annotations"][1][0]
    assert obj["category_id"] == 1 and obj["iscrowd"] == 0 and obj["bbox"] == [3, 3, 8, 9]
    assert isinstance(obj["segmentation"]["counts"], str)  # uncompressed RLE turned into compressed
    assert np.array_equal(mask_util.decode({"size": [H, W], "counts": obj["segmentation"]["counts"]}),
                          box(3, 3, 11, 12))
    assert v["annotations"][1][1]["category_id"] == 0 and isinstance(v["annotations"][1][1]["segmentation"], list)
    assert dicts[1]["annotations"] == [[], [], [], []]


def test_load_split_without_annotations(tmp_path):
    write_tree(str(tmp_path), "valid/JPEGImages", "valid.json", CATS, annotations=False)
    dicts = load_ytvis_json(str(tmp_path / "valid.json"), str(tmp_path / "valid/JPEGImages"))
    assert len(dicts) == 2 and "annotations" not in dicts[0]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["videos"][0].update(file_names=[], length=0), r"videos\[0\] \(id 1\) is an empty video"),
    (lambda d: d["videos"][0].update(length=9), "'length' is 9 but 'file_names' lists 4 frames"),
    (lambda d: d["videos"][1].pop("height"), r"videos\[1\] \(id 2\) has no 'height'"),
    (lambda d: d["annotations"][0]["segmentations"].pop(), r"annotations\[0\] \(id 11\): 'segmentations' must list"),
    (lambda d: d["annotations"][0].update(category_id=99), "category_id 99 is not in 'categories'"),
    (lambda d: d.pop("categories"), "non-empty list 'categories'"),
])
def test_malformed_json_gets_errors_naming_file_and_field(tree, change, message):
    json_file, image_root = tree
    with open(json_file) as f:
        data = json.load(f)
    change(data)
    with open(json_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=message) as info:
        load_ytvis_json(json_file, image_root)
    assert json_file in str(info.value)


def test_missing_json_or_frame_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_ytvis_json(str(tmp_path / "nothere.json"), str(tmp_path))
    write_tree(str(tmp_path), "JPEGImages", "a.json", CATS)
    with pytest.raises(FileNotFoundError, match="frame folder .*nodir"):
        load_ytvis_json(str(tmp_path / "a.json"), str(tmp_path / "nodir"))


# ------------------------------------------------------------------------------------------- mapper
def mapper(is_train, *opts):
    cfg = tiny_video_cfg("INPUT.DATASET_MAPPER_NAME", "ytvis", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 2, *opts)
    return build_dataset_mapper(cfg, is_train=is_train)


def test_clip_sampling():
    np.random.seed(0)
    for _ in range(200):
        idx = sample_clip_frames(30, 3, 4, shuffle=False)
        assert len(idx) == 3 == len(set(idx)) and idx == sorted(idx) and max(idx) - min(idx) <= 8
    assert sample_clip_frames(1, 2, 20, False) == [0, 0]
    assert sorted(sample_clip_frames(3, 5, 20, True)) != [0, 1, 2]  # fewer frames than asked: repeats


def test_training_clip_format(tree):
    json_file, image_root = tree
    video = load_ytvis_json(json_file, image_root)[0]
    m = mapper(True, "INPUT.SAMPLING_FRAME_NUM", 4, "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.MAX_SIZE_TRAIN", 1000,
               "INPUT.RANDOM_FLIP", "none")
    out = m(video)
    assert out["frame_idx"] == [0, 1, 2, 3]  # a 4-frame video, 4-frame clips: every frame once
    assert len(out["image"]) == len(out["instances"]) == 4
    assert all(im.shape == (3, 48, 64) and im.dtype == torch.uint8 for im in out["image"])
    ids = [inst.gt_ids.tolist() for inst in out["instances"]]
    assert ids == [[11, -1], [11, 12], [11, -1], [-1, -1]]
    assert all(inst.gt_classes.tolist() == [1, 0] for inst in out["instances"])
    assert out["instances"][1].gt_masks.shape == (2, 48, 64)
    assert out["instances"][1].gt_masks[1, 10:30, 40:60].all()  # the polygon, scaled by 2
    assert not out["instances"][3].gt_masks.any()
    assert out["instances"][0].gt_boxes.tensor[0].tolist() == [4.0, 6.0, 20.0, 24.0]
    assert "annotations" not in out and out["height"] == H and out["width"] == W


@pytest.mark.parametrize("extra", [
    ["INPUT.RANDOM_FLIP", "flip_by_clip", "INPUT.MIN_SIZE_TRAIN", "(20, 30, 40, 50)"],
    ["INPUT.AUGMENTATIONS", "['brightness', 'contrast', 'saturation', 'rotation']", "INPUT.CROP.ENABLED", True,
     "INPUT.CROP.TYPE", "relative_range", "INPUT.CROP.SIZE", "(0.5, 0.5)",
     "INPUT.MIN_SIZE_TRAIN_SAMPLING", "range_by_clip",
     "INPUT.MIN_SIZE_TRAIN", "(16, 60)"],
])
def test_every_frame_of_a_clip_gets_the_same_augmentation(tmp_path, extra):
    """Frames with the same picture and the same mask must stay identical after augmentation."""
    write_tree(str(tmp_path), "JPEGImages", "a.json", CATS, num_frames=4, frame_color=(30, 140, 220))
    with open(tmp_path / "a.json") as f:
        data = json.load(f)
    data["annotations"][0]["segmentations"] = [rle(box(4, 4, 20, 14))] * 4
    with open(tmp_path / "a.json", "w") as f:
        json.dump(data, f)
    video = load_ytvis_json(str(tmp_path / "a.json"), str(tmp_path / "JPEGImages"))[0]
    m = mapper(True, "INPUT.SAMPLING_FRAME_NUM", 4, *extra)
    np.random.seed(1)
    sizes = set()
    for _ in range(8):
        out = m(video)
        sizes.add(tuple(out["image"][0].shape))
        for t in range(1, 4):
            assert torch.equal(out["image"][t], out["image"][0])
            assert torch.equal(out["instances"][t].gt_masks[0], out["instances"][0].gt_masks[0])
    assert len(sizes) > 1  # the augmentation itself is random from clip to clip


def test_saturation_blends_each_frame_with_its_own_grey():
    from mask2former.data.dataset_mappers.ytvis_dataset_mapper import FrameBlendTransform

    t = FrameBlendTransform("saturation", 0.0, "RGB")  # weight 0: the grey image itself
    red, green = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)
    red[..., 0], green[..., 1] = 200, 200
    assert np.all(t.apply_image(red) == int(0.299 * 200)) and np.all(t.apply_image(green) == int(0.587 * 200))


def test_test_clip_is_the_whole_video(tree):
    json_file, image_root = tree
    video = load_ytvis_json(json_file, image_root)[0]
    out = mapper(False, "INPUT.MIN_SIZE_TEST", 48)(video)
    assert out["frame_idx"] == [0, 1, 2, 3] and len(out["image"]) == 4 and "instances" not in out
    assert out["image"][0].shape == (3, 48, 64) and out["video_id"] == 1


def test_bad_videos_get_errors_naming_the_file(tree):
    json_file, image_root = tree
    video = load_ytvis_json(json_file, image_root)[0]
    m = mapper(False)
    os.remove(video["file_names"][2])
    with pytest.raises(BadDatasetItemError, match="vid1/00002.jpg.*does not exist"):
        m(video)
    cv2.imwrite(video["file_names"][2], np.zeros((H + 4, W, 3), np.uint8))
    size_error = r"vid1/00002.jpg.*is 32x28 \(width x height\) but the dataset says 32x24"
    with pytest.raises(BadDatasetItemError, match=size_error):
        m(video)
    with pytest.raises(BadDatasetItemError, match="video 1.*no frames"):
        m(dict(video, file_names=[]))
    with pytest.raises(ValueError, match="needs 'annotations' to train"):
        mapper(True)({k: v for k, v in video.items() if k != "annotations"})
    with pytest.raises(ValueError, match="INPUT.AUGMENTATIONS has unknown entries \\['blur'\\]"):
        mapper(True, "INPUT.AUGMENTATIONS", "['blur']")


# ------------------------------------------------------------------------------------------- shapes world videos
def test_generated_videos_move_scale_occlude_enter_and_leave():
    rng = np.random.default_rng([0, 0, 3])
    sample = shapes_world_video.generate_video(rng, 96, 128, 12)
    frames, objects = sample["frames"], sample["objects"]
    assert len(frames) == 12 and frames[0].shape == (96, 128, 3) and frames[0].dtype == np.uint8
    first, second = objects[0]["masks"], objects[1]["masks"]
    assert first[0] is None and first[-1] is not None  # enters
    assert second[0] is not None and second[-1] is None  # leaves
    centroids = [np.argwhere(m).mean(0) for m in objects[2]["masks"] if m is not None]
    assert np.abs(centroids[-1] - centroids[0]).max() > 5  # moves
    occluded = any(v is not None and v.sum() < full for o in objects for v, full in zip(o["masks"], o["full_areas"]))
    assert occluded


def test_shapes_world_video_dataset_files_deterministic_and_registered(tmp_path):
    params = dict(num_train=2, num_val=1, seed=3, min_size=40, max_size=56, min_frames=3, max_frames=5)
    a = shapes_world_video.ensure_shapes_world_video(tmp_path / "a", **params)
    b = shapes_world_video.main(["--output", str(tmp_path / "b")] + [
        f"--{k.replace('_', '-')}={v}" for k, v in params.items()])
    for rel in ("train.json", "val.json", "train/JPEGImages/train_00001/00002.jpg"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    with open(a / "train.json") as f:
        data = json.load(f)
    assert [c["name"] for c in data["categories"]] == MetadataCatalog.get("shapes_world_video_train").thing_classes
    assert data["annotations"] and all(len(x["segmentations"]) == len(x["bboxes"]) == x["length"]
                                       for x in data["annotations"])
    with pytest.raises(shapes_world_video.ShapesWorldFolderError, match="other parameters"):
        shapes_world_video.ensure_shapes_world_video(a, **dict(params, seed=4))
    names = register_shapes_world_video(str(tmp_path), prefix=f"swv_{tmp_path.name}", dirname="c", **params)
    dicts = DatasetCatalog.get(names[0])
    assert len(dicts) == 2 and (tmp_path / "c" / "COMPLETE.json").is_file()
    assert MetadataCatalog.get(names[1]).evaluator_type == "ytvis"
    assert ("shapes_world_video_train" in DatasetCatalog.list()
            and MetadataCatalog.get("shapes_world_video_val").json_file
            == os.path.join(datasets_root(), "shapes_world_video", "val.json"))
