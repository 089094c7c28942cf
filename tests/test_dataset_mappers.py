"""Dataset mappers: output format, consistency of masks with the annotations, augmentations, bad items."""
import logging
import pickle

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

import mask2former  # noqa: F401  (registers the mappers)
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.structures import polygons_to_bitmask
from mask2former import add_maskformer2_config
from mask2former.data.dataset_mappers import (
    MAPPER_REGISTRY,
    BadDatasetItemError,
    ColorAugSSDTransform,
    build_dataset_mapper,
    num_skipped_items,
    reset_skipped_items,
    skipped_items_summary,
)
from mask2former.data.datasets.loading import id2rgb

H, W = 40, 60
NUM_CLASSES = 5


def make_cfg(name="mask_former_semantic", **input_options):
    """A config whose training augmentations keep the image as it is, unless options say otherwise."""
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.INPUT.DATASET_MAPPER_NAME = name
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = 2 * H
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.COLOR_AUG_SSD = False
    for key, value in input_options.items():
        node, _, leaf = key.rpartition(".")
        target = cfg.INPUT
        for part in filter(None, node.split(".")):
            target = target[part]
        target[leaf] = value
    return cfg


def image_array(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_image(path, h=H, w=W, seed=0):
    image = image_array(seed, h, w)
    Image.fromarray(image).save(path)  # PNG: lossless, so outputs can be compared exactly
    return image


def label_map(h=H, w=W):
    sem = np.zeros((h, w), np.uint8)
    sem[:, 20:] = 1
    sem[10:20, 5:15] = 3
    sem[30:, :] = 255
    return sem


def write_sem_seg(tmp_path, sem=None):
    sem = label_map() if sem is None else sem
    path = str(tmp_path / "sem.png")
    Image.fromarray(sem).save(path)
    return path, sem


def pan_annotation():
    """ids (H, W) and segments_info: 2 things, 1 stuff, 1 crowd, void elsewhere."""
    ids = np.zeros((H, W), np.int64)
    ids[0:10, 0:30] = 300  # stuff, class 4
    ids[12:22, 5:15] = 5 + 256 * 7  # thing, class 0
    ids[25:35, 30:50] = 70000  # thing, class 2
    ids[36:39, 50:58] = 11  # crowd, class 2
    segments = [
        {"id": 300, "category_id": 4, "iscrowd": 0, "isthing": False},
        {"id": 5 + 256 * 7, "category_id": 0, "iscrowd": 0, "isthing": True},
        {"id": 70000, "category_id": 2, "iscrowd": 0, "isthing": True},
        {"id": 11, "category_id": 2, "iscrowd": 1, "isthing": True},
    ]
    return ids, segments


def write_pan(tmp_path, ids):
    path = str(tmp_path / "pan.png")
    Image.fromarray(id2rgb(ids)).save(path)
    return path


SQUARE = [10.0, 5.0, 30.0, 5.0, 30.0, 25.0, 10.0, 25.0]


def rle_of(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def instance_annotations():
    blob = np.zeros((H, W), np.uint8)
    blob[20:35, 35:55] = 1
    blob[22:25, 40:42] = 0
    return [
        {"category_id": 1, "segmentation": [SQUARE], "iscrowd": 0},
        {"category_id": 4, "segmentation": rle_of(blob), "iscrowd": 0},
        {"category_id": 2, "segmentation": [[0, 0, 5, 0, 5, 5]], "iscrowd": 1},
    ], blob


# ---------------------------------------------------------------------------------------------- registry
IMAGE_MAPPERS = ["mask_former_semantic", "mask_former_instance", "mask_former_panoptic", "coco_instance_lsj",
                 "coco_panoptic_lsj"]


def test_registry_has_the_official_mapper_names():
    assert set(IMAGE_MAPPERS) <= {name for name, _ in MAPPER_REGISTRY}
    for name in IMAGE_MAPPERS:
        mapper = build_dataset_mapper(make_cfg(name), is_train=True)
        assert isinstance(mapper, MAPPER_REGISTRY.get(name))


def test_unknown_mapper_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"INPUT.DATASET_MAPPER_NAME.*'no_such_mapper'.*mask_former_semantic"):
        build_dataset_mapper(make_cfg("no_such_mapper"))


def test_unknown_random_flip_value_is_a_clear_error():
    with pytest.raises(ValueError, match="INPUT.RANDOM_FLIP"):
        build_dataset_mapper(make_cfg(RANDOM_FLIP="diagonal"))


# ---------------------------------------------------------------------------------------------- semantic
def test_semantic_mapper_gives_one_mask_per_class_and_pads(tmp_path):
    image = write_image(tmp_path / "img.png")
    sem_path, sem = write_sem_seg(tmp_path)
    mapper = build_dataset_mapper(make_cfg(SIZE_DIVISIBILITY=32))
    out = mapper({"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": sem_path})

    assert (out["height"], out["width"]) == (H, W)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 64, 64)
    assert torch.equal(out["image"][:, :H, :W], torch.from_numpy(image).permute(2, 0, 1))
    assert (out["image"][:, H:, :] == 128).all() and (out["image"][:, :, W:] == 128).all()
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == (64, 64)
    assert torch.equal(out["sem_seg"][:H, :W], torch.from_numpy(sem).long())
    assert (out["sem_seg"][H:, :] == 255).all() and (out["sem_seg"][:, W:] == 255).all()

    inst = out["instances"]
    assert inst.image_size == (64, 64)
    assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.tolist() == [0, 1, 3]
    assert inst.gt_masks.dtype == torch.bool and inst.gt_masks.shape == (3, 64, 64)
    for c, m in zip(inst.gt_classes, inst.gt_masks):
        assert torch.equal(m, out["sem_seg"] == c)


def test_semantic_mapper_random_augmentations_keep_masks_consistent(tmp_path):
    write_image(tmp_path / "img.png")
    sem_path, sem = write_sem_seg(tmp_path)
    cfg = make_cfg(MIN_SIZE_TRAIN=(30, 50, 70), RANDOM_FLIP="horizontal", COLOR_AUG_SSD=True, SIZE_DIVISIBILITY=16,
                   **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": (24, 32)})
    mapper = build_dataset_mapper(cfg)
    np.random.seed(0)
    for _ in range(10):
        out = mapper({"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": sem_path})
        h, w = out["image"].shape[1:]
        assert h % 16 == 0 and w % 16 == 0 and out["sem_seg"].shape == (h, w)
        labels = set(out["sem_seg"].unique().tolist()) - {255}
        assert set(out["instances"].gt_classes.tolist()) == labels <= {0, 1, 3}
        for c, m in zip(out["instances"].gt_classes, out["instances"].gt_masks):
            assert torch.equal(m, out["sem_seg"] == c)


def test_crop_single_category_area_constraint(tmp_path):
    """Class 0 covers 3/4 of the image: the constraint makes crops that hold both classes far more likely."""
    sem = np.zeros((H, 64), np.uint8)
    sem[:, 48:] = 1
    write_image(tmp_path / "img.png", w=64)
    sem_path, _ = write_sem_seg(tmp_path, sem)

    def balanced_fraction(max_area):
        cfg = make_cfg(MIN_SIZE_TRAIN=(H,), **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": (16, 16),
                                               "CROP.SINGLE_CATEGORY_MAX_AREA": max_area})
        mapper = build_dataset_mapper(cfg)
        np.random.seed(0)
        ok = 0
        for _ in range(40):
            out = mapper({"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": sem_path})
            assert out["sem_seg"].shape == (16, 16)
            counts = torch.bincount(out["sem_seg"].flatten(), minlength=2)
            ok += int(counts.max() < 0.75 * counts.sum())
        return ok / 40

    constrained, plain = balanced_fraction(0.75), balanced_fraction(1.0)
    assert constrained >= 0.5 and plain <= 0.3, (constrained, plain)


def test_semantic_mapper_reads_16_bit_label_maps_with_large_ignore(tmp_path):
    """ADE20K-full style: uint16 TIFF labels, ignore 65535, resized with the float path of detectron2."""
    name = "test_mappers_uint16_ignore"
    MetadataCatalog.get(name).set(ignore_label=65535)
    write_image(tmp_path / "img.png")
    sem = np.full((H, W), 65535, np.uint16)
    sem[:, :30] = 300
    sem[:, 30:50] = 2
    Image.fromarray(sem).save(tmp_path / "sem.tif")
    cfg = make_cfg(MIN_SIZE_TRAIN=(2 * H,))
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 847
    mapper = build_dataset_mapper(cfg)
    assert mapper.ignore_label == 65535
    out = mapper({"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": str(tmp_path / "sem.tif")})
    assert out["sem_seg"].shape == (2 * H, 2 * W)
    assert set(out["sem_seg"].unique().tolist()) == {2, 300, 65535}
    assert out["instances"].gt_classes.tolist() == [2, 300]
    assert torch.equal(out["instances"].gt_masks[1], out["sem_seg"] == 300)


def test_semantic_mapper_at_test_time_resizes_and_does_not_pad(tmp_path):
    write_image(tmp_path / "img.png")
    sem_path, _ = write_sem_seg(tmp_path)
    mapper = build_dataset_mapper(make_cfg(SIZE_DIVISIBILITY=32), is_train=False)
    out = mapper({"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": sem_path})
    assert out["image"].shape == (3, 2 * H, 2 * W) and out["sem_seg"].shape == (2 * H, 2 * W)
    assert (out["height"], out["width"]) == (H, W)
    assert out["instances"].gt_classes.tolist() == [0, 1, 3]
    out = mapper({"file_name": str(tmp_path / "img.png")})  # no ground truth: just the image
    assert set(out) == {"file_name", "image", "height", "width"}


def test_training_without_ground_truth_is_a_dataset_mismatch(tmp_path):
    write_image(tmp_path / "img.png")
    for name in ["mask_former_semantic", "mask_former_instance", "mask_former_panoptic"]:
        with pytest.raises(ValueError, match="INPUT.DATASET_MAPPER_NAME") as e:
            build_dataset_mapper(make_cfg(name))({"file_name": str(tmp_path / "img.png")})
        assert not isinstance(e.value, BadDatasetItemError)


# ---------------------------------------------------------------------------------------------- instance
def test_instance_mapper_masks_match_polygons_and_rle(tmp_path):
    image = write_image(tmp_path / "img.png")
    annotations, blob = instance_annotations()
    mapper = build_dataset_mapper(make_cfg("mask_former_instance", SIZE_DIVISIBILITY=32))
    out = mapper({"file_name": str(tmp_path / "img.png"), "height": H, "width": W, "annotations": annotations})
    assert "annotations" not in out and out["image"].shape == (3, 64, 64)
    assert torch.equal(out["image"][:, :H, :W], torch.from_numpy(image).permute(2, 0, 1))
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [1, 4]  # the crowd annotation is left out
    assert inst.gt_masks.shape == (2, 64, 64) and inst.gt_masks.dtype == torch.bool
    square = polygons_to_bitmask([np.array(SQUARE)], H, W)
    assert torch.equal(inst.gt_masks[0, :H, :W], torch.from_numpy(square))
    assert torch.equal(inst.gt_masks[1, :H, :W], torch.from_numpy(blob.astype(bool)))
    assert not inst.gt_masks[:, H:, :].any() and not inst.gt_masks[:, :, W:].any()
    assert not inst.has("gt_boxes")


def test_instance_mapper_flip_moves_polygons_and_rle_together(tmp_path):
    write_image(tmp_path / "img.png")
    annotations, blob = instance_annotations()
    mapper = build_dataset_mapper(make_cfg("mask_former_instance", RANDOM_FLIP="horizontal"))
    square = polygons_to_bitmask([np.array(SQUARE)], H, W)
    np.random.seed(1)
    flips = set()
    for _ in range(8):
        out = mapper({"file_name": str(tmp_path / "img.png"), "annotations": annotations})
        masks = out["instances"].gt_masks.numpy()
        flipped = bool((masks[1] == blob[:, ::-1].astype(bool)).all())
        flips.add(flipped)
        expected = [square[:, ::-1], blob[:, ::-1]] if flipped else [square, blob]
        for m, e in zip(masks, expected):
            assert (m == e.astype(bool)).all()
    assert flips == {True, False}


def test_instance_mapper_drops_instances_cropped_away(tmp_path):
    write_image(tmp_path / "img.png")
    annotations, _ = instance_annotations()
    cfg = make_cfg("mask_former_instance", **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": (8, 8)})
    mapper = build_dataset_mapper(cfg)
    np.random.seed(0)
    counts = set()
    for _ in range(20):
        inst = mapper({"file_name": str(tmp_path / "img.png"), "annotations": annotations})["instances"]
        assert inst.gt_masks.shape[1:] == (8, 8) and inst.gt_masks.flatten(1).any(1).all()
        counts.add(len(inst))
    assert 0 in counts and len(counts) > 1


# ---------------------------------------------------------------------------------------------- panoptic
@pytest.mark.parametrize("with_sem_seg", [False, True])
def test_panoptic_mapper_one_mask_per_non_crowd_segment(tmp_path, with_sem_seg):
    write_image(tmp_path / "img.png")
    ids, segments = pan_annotation()
    item = {"file_name": str(tmp_path / "img.png"), "pan_seg_file_name": write_pan(tmp_path, ids),
            "segments_info": segments}
    if with_sem_seg:
        sem = np.full((H, W), 255, np.uint8)
        for s in segments:
            sem[ids == s["id"]] = s["category_id"]
        item["sem_seg_file_name"], _ = write_sem_seg(tmp_path, sem)
    mapper = build_dataset_mapper(make_cfg("mask_former_panoptic", SIZE_DIVISIBILITY=32))
    out = mapper(item)
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [4, 0, 2]
    for s, m in zip(segments[:3], inst.gt_masks):
        assert torch.equal(m[:H, :W], torch.from_numpy(ids == s["id"])) and not m[H:].any()
    assert ("sem_seg" in out) == with_sem_seg
    if with_sem_seg:
        assert torch.equal(out["sem_seg"][:H, :W], torch.from_numpy(sem).long())
        assert (out["sem_seg"][H:] == 255).all()


def test_panoptic_mapper_crop_constraint_without_semantic_map(tmp_path):
    """The category-area crop works from the panoptic segments when the item has no semantic map."""
    write_image(tmp_path / "img.png")
    ids, segments = pan_annotation()
    cfg = make_cfg("mask_former_panoptic", RANDOM_FLIP="horizontal",
                   **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": (20, 20),
                      "CROP.SINGLE_CATEGORY_MAX_AREA": 0.8})
    mapper = build_dataset_mapper(cfg)
    assert mapper.crop_needs_sem_seg
    np.random.seed(0)
    for _ in range(10):
        out = mapper({"file_name": str(tmp_path / "img.png"), "pan_seg_file_name": write_pan(tmp_path, ids),
                      "segments_info": segments})
        assert out["image"].shape == (3, 20, 20) and "sem_seg" not in out
        assert out["instances"].gt_masks.shape[1:] == (20, 20)


# ---------------------------------------------------------------------------------------------- LSJ
def test_lsj_instance_mapper_output_size_and_boxes(tmp_path):
    write_image(tmp_path / "img.png")
    annotations, _ = instance_annotations()
    cfg = make_cfg("coco_instance_lsj", IMAGE_SIZE=48, MIN_SCALE=0.5, MAX_SCALE=2.0, RANDOM_FLIP="horizontal")
    mapper = build_dataset_mapper(cfg)
    np.random.seed(0)
    for _ in range(10):
        out = mapper({"file_name": str(tmp_path / "img.png"), "annotations": annotations})
        assert out["image"].shape == (3, 48, 48)
        inst = out["instances"]
        assert inst.image_size == (48, 48) and inst.gt_masks.shape[1:] == (48, 48)
        assert set(inst.gt_classes.tolist()) <= {1, 4}
        for box, mask in zip(inst.gt_boxes.tensor, inst.gt_masks):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    # at test time: resized, not padded, boxes too
    out = build_dataset_mapper(cfg, is_train=False)({"file_name": str(tmp_path / "img.png"),
                                                      "annotations": annotations})
    assert out["image"].shape == (3, 2 * H, 2 * W) and len(out["instances"].gt_boxes) == 2


def test_lsj_panoptic_mapper_pads_to_image_size(tmp_path):
    write_image(tmp_path / "img.png")
    ids, segments = pan_annotation()
    sem = np.full((H, W), 255, np.uint8)
    sem[ids == 300] = 4
    sem_path, _ = write_sem_seg(tmp_path, sem)
    cfg = make_cfg("coco_panoptic_lsj", IMAGE_SIZE=64, MIN_SCALE=0.5, MAX_SCALE=0.5)  # 60x40 -> 32x21, then pad
    out = build_dataset_mapper(cfg)({"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": sem_path,
                                     "pan_seg_file_name": write_pan(tmp_path, ids), "segments_info": segments})
    assert out["image"].shape == (3, 64, 64) and out["sem_seg"].shape == (64, 64)
    assert (out["image"][:, 21:, :] == 128).all() and (out["image"][:, :, 32:] == 128).all()
    assert (out["sem_seg"][21:, :] == 255).all() and (out["sem_seg"][:, 32:] == 255).all()
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [4, 0, 2] and inst.gt_boxes.tensor.shape == (3, 4)
    assert not inst.gt_masks[:, 21:, :].any() and not inst.gt_masks[:, :, 32:].any()
    assert torch.equal(inst.gt_masks[0], out["sem_seg"] == 4)


# ---------------------------------------------------------------------------------------------- colour
def test_color_aug_ssd_transform():
    image = image_array(3)
    t = ColorAugSSDTransform("RGB", brightness_delta=20.0)
    assert np.array_equal(t.apply_image(image), np.clip(image.astype(int) + 20, 0, 255).astype(np.uint8))
    t = ColorAugSSDTransform("RGB", contrast_alpha=0.5)
    assert np.array_equal(t.apply_image(image), np.round(image * 0.5).astype(np.uint8))

    t = ColorAugSSDTransform("BGR", saturation_alpha=0.0)
    gray = t.apply_image(image)
    assert np.abs(gray.astype(int) - gray[:, :, :1]).max() <= 1  # no saturation left: grey
    t = ColorAugSSDTransform("BGR", hue_delta=30)
    hsv_in = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(int)
    hsv_out = cv2.cvtColor(t.apply_image(image), cv2.COLOR_BGR2HSV).astype(int)
    saturated = (hsv_in[:, :, 1] > 100) & (hsv_in[:, :, 2] > 100)
    shift = (hsv_out[:, :, 0] - hsv_in[:, :, 0]) % 180
    assert np.median(shift[saturated]) == 30

    # RGB and BGR images get the same colour change; segmentations and coordinates are untouched
    params = dict(brightness_delta=-10.0, contrast_alpha=1.3, saturation_alpha=0.7, hue_delta=-5, contrast_last=True)
    rgb = ColorAugSSDTransform("RGB", **params).apply_image(image)
    bgr = ColorAugSSDTransform("BGR", **params).apply_image(np.ascontiguousarray(image[:, :, ::-1]))
    assert np.array_equal(rgb, bgr[:, :, ::-1])
    t = ColorAugSSDTransform("RGB", **params)
    seg = label_map()
    assert np.array_equal(t.apply_segmentation(seg), seg)
    coords = np.array([[1.0, 2.0]])
    assert np.array_equal(t.apply_coords(coords.copy()), coords)
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        build_dataset_mapper(make_cfg(COLOR_AUG_SSD=True, FORMAT="YUV-BT.601"))


def test_color_aug_ssd_in_the_training_augmentations():
    augs = build_dataset_mapper(make_cfg(COLOR_AUG_SSD=True)).augmentations.augs
    assert any(type(a).__name__ == "ColorAugSSD" for a in augs)
    np.random.seed(0)
    image = image_array(4)
    changed = [not np.array_equal(T.AugmentationList(augs)(T.AugInput(image.copy())).apply_image(image), image)
               for _ in range(8)]
    assert any(changed)


# ---------------------------------------------------------------------------------------------- bad items
def _bad_items(tmp_path):
    """name -> (mapper name, item, expected message part), for every kind of bad input."""
    write_image(tmp_path / "img.png")
    good = str(tmp_path / "img.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    sem_path, _ = write_sem_seg(tmp_path)
    small = str(tmp_path / "small.png")
    Image.fromarray(label_map()[:20]).save(small)
    bad_label = label_map()
    bad_label[0, 0] = 9
    Image.fromarray(bad_label).save(tmp_path / "bad_label.png")
    ids, segments = pan_annotation()
    pan = write_pan(tmp_path, ids)
    Image.fromarray(id2rgb(ids[:, :30])).save(tmp_path / "pan_small.png")
    annotations, blob = instance_annotations()

    def inst(segmentation, category_id=1):
        return {"file_name": good, "annotations": [{"category_id": category_id, "segmentation": segmentation}]}

    good_rle = rle_of(blob)
    return {
        "missing image": ("mask_former_semantic", {"file_name": str(tmp_path / "nope.jpg"),
                                                   "sem_seg_file_name": sem_path}, "does not exist"),
        "corrupt image": ("mask_former_semantic", {"file_name": str(tmp_path / "corrupt.jpg"),
                                                   "sem_seg_file_name": sem_path}, "cannot be decoded"),
        "missing label map": ("mask_former_semantic", {"file_name": good, "sem_seg_file_name": str(tmp_path / "x.png")},
                              "semantic label file .* does not exist"),
        "polygon too short": ("mask_former_instance", inst([[1, 2, 3, 4]]), "polygon 0 has 4 coordinates"),
        "polygon odd length": ("coco_instance_lsj", inst([SQUARE + [3.0]]), "polygon 0 has 9 coordinates"),
        "polygon not numbers": ("mask_former_instance", inst([["a", "b", "c", "d", "e", "f"]]), "not a flat list"),
        "empty polygon list": ("mask_former_instance", inst([]), "empty polygon list"),
        "invalid compressed RLE": ("mask_former_instance", inst({"size": [H, W], "counts": "01"}), "malformed"),
        "invalid uncompressed RLE": ("mask_former_instance", inst({"size": [H, W], "counts": [3, 20]}),
                                     "summing to height"),
        "RLE without counts": ("mask_former_instance", inst({"size": [H, W]}), "needs 'size' and 'counts'"),
        "unknown instance category": ("mask_former_instance", inst([SQUARE], category_id=7),
                                      r"category_id 7; expected a contiguous id in \[0, 5\)"),
        "non-integer category": ("coco_instance_lsj", inst([SQUARE], category_id="cat"), "category_id 'cat'"),
        "unknown segment category": ("mask_former_panoptic", {
            "file_name": good, "pan_seg_file_name": pan,
            "segments_info": [dict(segments[0], category_id=NUM_CLASSES)]}, r"segments_info\[0\] \(id 300\)"),
        "unknown label value": ("mask_former_semantic", {"file_name": good,
                                                         "sem_seg_file_name": str(tmp_path / "bad_label.png")},
                                r"contains label\(s\) \[9\]"),
        "size differs from dataset": ("mask_former_semantic", {"file_name": good, "height": H + 1, "width": W,
                                                               "sem_seg_file_name": sem_path}, "the dataset says"),
        "label map size differs": ("mask_former_semantic", {"file_name": good, "sem_seg_file_name": small},
                                   "but the image is 60x40"),
        "panoptic size differs": ("coco_panoptic_lsj", {"file_name": good, "segments_info": segments,
                                                        "pan_seg_file_name": str(tmp_path / "pan_small.png")},
                                  "panoptic file .* is 30x40"),
        "RLE size differs": ("mask_former_instance", inst(dict(good_rle, size=[H, W + 2])), "RLE size is"),
    }


BAD_CASES = [
    "missing image", "corrupt image", "missing label map", "polygon too short", "polygon odd length",
    "polygon not numbers", "empty polygon list", "invalid compressed RLE", "invalid uncompressed RLE",
    "RLE without counts", "unknown instance category", "non-integer category", "unknown segment category",
    "unknown label value", "size differs from dataset", "label map size differs", "panoptic size differs",
    "RLE size differs",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_item_raises_naming_the_file_and_problem(tmp_path, case):
    mapper_name, item, message = _bad_items(tmp_path)[case]
    with pytest.raises(BadDatasetItemError, match=message) as e:
        build_dataset_mapper(make_cfg(mapper_name))(item)
    assert e.value.file_name == item["file_name"] and item["file_name"] in str(e.value)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_item_is_skipped_with_a_counted_warning(tmp_path, case, caplog):
    mapper_name, item, _ = _bad_items(tmp_path)[case]
    cfg = make_cfg(mapper_name)
    cfg.DATALOADER.SKIP_BAD_ITEMS = True
    reset_skipped_items()
    with caplog.at_level(logging.WARNING):
        assert build_dataset_mapper(cfg)(item) is None
    assert num_skipped_items() == 1
    assert any(item["file_name"] in r.getMessage() and "SKIP_BAD_ITEMS" in r.getMessage() for r in caplog.records)
    assert skipped_items_summary().startswith("1 bad dataset item")
    reset_skipped_items()
    assert skipped_items_summary() == "No bad dataset items were skipped."


def test_map_dataset_replaces_a_skipped_item(tmp_path):
    bad = _bad_items(tmp_path)["corrupt image"][1]
    sem_path, _ = write_sem_seg(tmp_path)
    good = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": sem_path}
    cfg = make_cfg()
    cfg.DATALOADER.SKIP_BAD_ITEMS = True
    reset_skipped_items()
    dataset = MapDataset(DatasetFromList([bad, good], copy=False, serialize=False), build_dataset_mapper(cfg))
    assert dataset[0]["file_name"] == good["file_name"]
    assert num_skipped_items() == 1
    reset_skipped_items()


def test_skips_in_dataloader_workers_are_counted_in_the_main_process(tmp_path):
    bad = _bad_items(tmp_path)["missing image"][1]
    sem_path, _ = write_sem_seg(tmp_path)
    good = {"file_name": str(tmp_path / "img.png"), "sem_seg_file_name": sem_path}
    cfg = make_cfg()
    cfg.DATALOADER.SKIP_BAD_ITEMS = True
    reset_skipped_items()
    dataset = MapDataset(DatasetFromList([bad, good, good, good], copy=False, serialize=False),
                         build_dataset_mapper(cfg))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    outputs = list(loader)
    assert len(outputs) == 4 and all(o["file_name"] == good["file_name"] for o in outputs)
    assert num_skipped_items() == 1
    reset_skipped_items()

    cfg.DATALOADER.SKIP_BAD_ITEMS = False  # raised in a worker, re-raised as itself in the main process
    dataset = MapDataset(DatasetFromList([bad], copy=False, serialize=False), build_dataset_mapper(cfg))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context="fork")
    with pytest.raises(BadDatasetItemError, match="nope.jpg"):
        list(loader)


def test_valid_rles_of_random_masks_pass_the_checks():
    from mask2former.data.dataset_mappers.checks import decode_segmentation

    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = (int(x) for x in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.random()
        for segm in [rle_of(mask), mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))]:
            kind, decoded = decode_segmentation(segm, (h, w), "annotation 0", "x.jpg")
            assert kind == "mask" and np.array_equal(decoded, mask)
    with pytest.raises(BadDatasetItemError, match="non-ASCII"):
        decode_segmentation({"size": [2, 2], "counts": "é"}, (2, 2), "annotation 0", "x.jpg")


def test_bad_item_error_survives_pickling_and_worker_reraise():
    e = BadDatasetItemError("the image cannot be decoded", "a.jpg")
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) == "dataset item 'a.jpg': the image cannot be decoded" and e2.file_name == "a.jpg"
    assert str(BadDatasetItemError("message from a worker")) == "message from a worker"  # PyTorch's re-raise
    assert isinstance(e, ValueError)
