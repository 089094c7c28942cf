"""Registration of the real datasets and the preparation scripts, on small fake directory trees."""
import copy
import importlib.util
import json
import logging
import os
import pickle
import sys
import uuid
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import scipy.io
import torch
from PIL import Image

import mask2former  # noqa: F401  (registers the datasets)
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, COCO_CATEGORIES
from mask2former import add_maskformer2_config
from mask2former.data.dataset_mappers import BadDatasetItemError, build_dataset_mapper
from mask2former.data.datasets.loading import datasets_root, id2rgb, register_lazy_metadata, rgb2id
from mask2former.data.datasets.register_ade20k_full import register_ade20k_full
from mask2former.data.datasets.register_ade20k_instance import register_ade20k_instance
from mask2former.data.datasets.register_ade20k_panoptic import register_ade20k_panoptic
from mask2former.data.datasets.register_ade20k_semantic import register_ade20k_semantic
from mask2former.data.datasets.register_coco_panoptic_annos_semseg import register_coco_panoptic_annos_sem_seg
from mask2former.data.datasets.register_coco_stuff_10k import register_coco_stuff_10k
from mask2former.data.datasets.register_mapillary_vistas import register_mapillary_vistas
from mask2former.data.datasets.register_mapillary_vistas_panoptic import register_mapillary_vistas_panoptic

REPO = Path(__file__).resolve().parents[1]


def script(name):
    """Import ``datasets/<name>.py``."""
    spec = importlib.util.spec_from_file_location(name, REPO / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that worker processes can unpickle its functions
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def names():
    """Unique dataset names for one test, unregistered afterwards."""
    made = []

    def new(kind):
        made.append(f"test_{kind}_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    for name in made:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def save_image(path, h, w, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def save_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def mapper_cfg(mapper_name, num_classes, dataset_name):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.DATASETS.TRAIN = (dataset_name,)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (16,)  # the fake images are 16 pixels high: no resizing
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    return cfg


# ---------------------------------------------------------------------------------------------- official names
OFFICIAL = {
    "coco_2017_train_panoptic_with_sem_seg": ("coco_panoptic_seg", "coco/train2017"),
    "coco_2017_val_panoptic_with_sem_seg": ("coco_panoptic_seg", "coco/val2017"),
    "ade20k_sem_seg_train": ("sem_seg", "ADEChallengeData2016/images/training"),
    "ade20k_sem_seg_val": ("sem_seg", "ADEChallengeData2016/images/validation"),
    "ade20k_full_sem_seg_train": ("sem_seg", "ADE20K_2021_17_01/images_detectron2/training"),
    "ade20k_full_sem_seg_val": ("sem_seg", "ADE20K_2021_17_01/images_detectron2/validation"),
    "ade20k_panoptic_train": ("ade20k_panoptic_seg", "ADEChallengeData2016/images/training"),
    "ade20k_panoptic_val": ("ade20k_panoptic_seg", "ADEChallengeData2016/images/validation"),
    "ade20k_instance_train": ("coco", "ADEChallengeData2016/images/training"),
    "ade20k_instance_val": ("coco", "ADEChallengeData2016/images/validation"),
    "coco_2017_train_stuff_10k_sem_seg": ("sem_seg", "coco/coco_stuff_10k/images_detectron2/train"),
    "coco_2017_test_stuff_10k_sem_seg": ("sem_seg", "coco/coco_stuff_10k/images_detectron2/test"),
    "mapillary_vistas_sem_seg_train": ("sem_seg", "mapillary_vistas/training/images"),
    "mapillary_vistas_sem_seg_val": ("sem_seg", "mapillary_vistas/validation/images"),
    "mapillary_vistas_panoptic_train": ("mapillary_vistas_panoptic_seg", "mapillary_vistas/training/images"),
    "mapillary_vistas_panoptic_val": ("mapillary_vistas_panoptic_seg", "mapillary_vistas/validation/images"),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_names_are_registered_under_detectron2_datasets(name):
    evaluator_type, image_root = OFFICIAL[name]
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == evaluator_type
    assert meta.image_root == os.path.join(datasets_root(), *image_root.split("/"))


def test_the_names_the_configs_use_are_registered():
    for name in ["coco_2017_train_panoptic", "coco_2017_train", "coco_2017_val", "cityscapes_fine_sem_seg_train",
                 "cityscapes_fine_instance_seg_train", "cityscapes_fine_panoptic_train"]:
        assert name in DatasetCatalog.list()  # detectron2's own


def test_coco_panoptic_metadata_matches_detectron2_panoptic_standard():
    ours = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    theirs = MetadataCatalog.get("coco_2017_val_panoptic")
    assert len(ours.stuff_classes) == 133 and len(ours.thing_classes) == 80
    assert ours.stuff_classes == theirs.stuff_classes
    assert ours.thing_dataset_id_to_contiguous_id == theirs.thing_dataset_id_to_contiguous_id
    assert set(ours.stuff_dataset_id_to_contiguous_id.values()) == set(range(133))
    assert ours.ignore_label == 255 and ours.label_divisor == 1000
    assert MetadataCatalog.get("ade20k_sem_seg_train").stuff_classes == ADE20K_SEM_SEG_CATEGORIES


# ---------------------------------------------------------------------------------------------- lazy metadata
def test_lazy_metadata_reads_on_first_use_only(names):
    calls = []

    def loader():
        calls.append(1)
        return {"stuff_classes": ["a", "b"], "stuff_colors": [[1, 2, 3], [4, 5, 6]]}

    name = names("lazy")
    meta = register_lazy_metadata(name, loader, ["stuff_classes", "stuff_colors", "thing_colors"], ignore_label=7)
    assert MetadataCatalog.get(name) is meta and calls == []
    assert meta.ignore_label == 7 and calls == []
    assert "_lazy" not in meta.as_dict()
    assert meta.stuff_classes == ["a", "b"] and calls == [1]
    assert meta.stuff_colors == [[1, 2, 3], [4, 5, 6]] and calls == [1]
    assert meta.get("thing_colors") is None  # a lazy key the loader does not give stays absent
    meta.set(stuff_classes=["a", "b"])  # setting the same value again is fine (as detectron2 loaders do)
    with pytest.raises(AssertionError):
        meta.set(stuff_classes=["c"])


def test_lazy_metadata_can_be_copied_and_pickled():
    meta = MetadataCatalog.get("coco_2017_train_stuff_10k_sem_seg")  # class names from a package data file
    for clone in [copy.deepcopy(meta), pickle.loads(pickle.dumps(meta))]:
        assert len(clone.stuff_classes) == 171 and clone.ignore_label == 255


# ---------------------------------------------------------------------------------------------- missing files
def test_missing_files_name_the_path_and_the_preparation_step(tmp_path, names):
    root = str(tmp_path)
    cases = []

    n = names("coco_pan")
    register_coco_panoptic_annos_sem_seg(n, f"{root}/coco/val2017", f"{root}/coco/panoptic_val2017",
                                         f"{root}/coco/annotations/panoptic_val2017.json",
                                         f"{root}/coco/panoptic_semseg_val2017", f"{root}/coco/annotations/i.json")
    cases.append((n, "panoptic_val2017.json", "cocodataset.org"))
    n = names("ade_sem")
    os.makedirs(f"{root}/ade/images/validation")
    register_ade20k_semantic(n, f"{root}/ade/images/validation", f"{root}/ade/annotations_detectron2/validation")
    cases.append((n, "annotations_detectron2/validation", "prepare_ade20k_sem_seg.py"))
    n = names("ade_full")
    register_ade20k_full(n, f"{root}/full/images_detectron2/training", f"{root}/full/annotations_detectron2/training",
                         f"{root}/full/ade20k_full_categories.json")
    cases.append((n, "images_detectron2/training", "prepare_ade20k_full_sem_seg.py"))
    n = names("ade_pan")
    register_ade20k_panoptic(n, f"{root}/ade/images/validation", f"{root}/ade/ade20k_panoptic_val",
                             f"{root}/ade/ade20k_panoptic_val.json", f"{root}/ade/annotations_detectron2/validation",
                             f"{root}/ade/ade20k_instance_val.json")
    cases.append((n, "ade20k_panoptic_val.json", "prepare_ade20k_pan_seg.py"))
    n = names("ade_ins")
    register_ade20k_instance(n, f"{root}/ade/images/validation", f"{root}/ade/ade20k_instance_val.json")
    cases.append((n, "ade20k_instance_val.json", "prepare_ade20k_ins_seg.py"))
    n = names("stuff10k")
    register_coco_stuff_10k(n, f"{root}/stuff/images_detectron2/test", f"{root}/stuff/annotations_detectron2/test")
    cases.append((n, "images_detectron2/test", "prepare_coco_stuff_10k.py"))
    n = names("mapillary")
    register_mapillary_vistas(n, f"{root}/mv/training/images", f"{root}/mv/training/labels", f"{root}/mv/config.json")
    cases.append((n, "mv/training/images", "Mapillary Vistas v1.2"))
    n = names("mapillary_pan")
    register_mapillary_vistas_panoptic(n, f"{root}/mv/training/images", f"{root}/mv/training/panoptic",
                                       f"{root}/mv/training/panoptic/panoptic_2018.json", f"{root}/mv/training/labels",
                                       f"{root}/mv/config.json")
    cases.append((n, "panoptic_2018.json", "Mapillary Vistas v1.2"))

    for name, path, hint in cases:
        with pytest.raises(FileNotFoundError) as e:
            DatasetCatalog.get(name)
        assert path in str(e.value) and hint in str(e.value) and "datasets/README.md" in str(e.value), str(e.value)

    # class names that come from the data: asking for them names the missing file too
    for name, path, key in [(cases[2][0], "ade20k_full_categories.json", "stuff_classes"),
                            (cases[3][0], "ade20k_panoptic_val.json", "thing_classes"),
                            (cases[6][0], "config.json", "stuff_classes")]:
        with pytest.raises(FileNotFoundError, match=path):
            getattr(MetadataCatalog.get(name), key)


# ---------------------------------------------------------------------------------------------- COCO panoptic
def test_coco_semantic_from_panoptic_script_and_registration(tmp_path, names):
    coco = tmp_path / "coco"
    person, car = COCO_CATEGORIES[0], COCO_CATEGORIES[2]
    stuff = COCO_CATEGORIES[-1]
    assert person["isthing"] and car["isthing"] and not stuff["isthing"]
    images, annotations = [], []
    expected = {}
    for i in range(2):
        ids = np.zeros((16, 24), np.int64)
        ids[:, 12:] = 1000 + i  # stuff
        ids[2:8, 2:8] = 2000 + i  # person
        ids[10:14, 2:10] = 3000 + i  # car crowd
        stem = f"00000000000{i}"
        save_image(str(coco / "val2017" / f"{stem}.jpg"), 16, 24, seed=i)
        save_png(str(coco / "panoptic_val2017" / f"{stem}.png"), id2rgb(ids))
        images.append({"id": i, "file_name": f"{stem}.jpg", "height": 16, "width": 24})
        annotations.append({"image_id": i, "file_name": f"{stem}.png", "segments_info": [
            {"id": 1000 + i, "category_id": stuff["id"], "iscrowd": 0},
            {"id": 2000 + i, "category_id": person["id"], "iscrowd": 0},
            {"id": 3000 + i, "category_id": car["id"], "iscrowd": 1},
        ]})
        sem = np.full((16, 24), 255, np.uint8)
        sem[:, 12:] = 132
        sem[2:8, 2:8] = 0
        sem[10:14, 2:10] = 2
        expected[stem] = sem
    categories = [{k: c[k] for k in ("id", "name", "isthing")} for c in COCO_CATEGORIES]
    write_json(str(coco / "annotations" / "panoptic_val2017.json"),
               {"images": images, "annotations": annotations, "categories": categories})

    script("prepare_coco_semantic_annos_from_panoptic_annos").main(
        ["--root", str(tmp_path), "--splits", "val2017", "--workers", "2"])
    for stem, sem in expected.items():
        written = np.asarray(Image.open(coco / "panoptic_semseg_val2017" / f"{stem}.png"))
        assert np.array_equal(written, sem)

    name = names("coco_pan")
    register_coco_panoptic_annos_sem_seg(name, str(coco / "val2017"), str(coco / "panoptic_val2017"),
                                         str(coco / "annotations" / "panoptic_val2017.json"),
                                         str(coco / "panoptic_semseg_val2017"),
                                         str(coco / "annotations" / "instances_val2017.json"))
    dicts = DatasetCatalog.get(name)
    assert [d["file_name"] for d in dicts] == [str(coco / "val2017" / f"{s}.jpg") for s in sorted(expected)]
    d = dicts[1]
    assert d["sem_seg_file_name"] == str(coco / "panoptic_semseg_val2017" / "000000000001.png")
    assert (d["height"], d["width"], d["image_id"]) == (16, 24, 1)
    assert [(s["category_id"], s["isthing"]) for s in d["segments_info"]] == [(132, False), (0, True), (2, True)]

    out = build_dataset_mapper(mapper_cfg("mask_former_panoptic", 133, name))(d)
    assert out["instances"].gt_classes.tolist() == [132, 0]
    assert torch.equal(out["sem_seg"], torch.from_numpy(expected["000000000001"]).long())
    for c, m in zip(out["instances"].gt_classes, out["instances"].gt_masks):
        assert (out["sem_seg"][m] == c).all()


# ---------------------------------------------------------------------------------------------- ADE20K
def _fake_ade20k(root: Path):
    """Two images per split: wall (1, stuff), sky (3, stuff), bed (8, thing), person (13, thing)."""
    mapping = {1: 8, 4: 13}  # instance classes -> 150-class ids
    root.mkdir(parents=True)
    (root / "categoryMapping.txt").write_text("Instance100\tSceneParsing150\tFullADE20K\n1\t8\t165\n4\t13\t1831\n")
    layouts = {}
    for split, prefix in [("training", "ADE_train"), ("validation", "ADE_val")]:
        for i in range(1, 3):
            stem = f"{prefix}_{i:08d}"
            sem = np.zeros((16, 20), np.uint8)  # 0 = other
            sem[:8] = 3
            sem[8:] = 1
            sem[2:6, 2:6] = 13
            sem[10:14, 2:6] = 13
            sem[10:14, 12:18] = 8
            sem[0:2, 16:20] = 13  # a person pixel region without instance: void in panoptic
            ins = np.zeros((16, 20, 3), np.uint8)
            ins[2:6, 2:6] = (4, 1, 0)
            ins[10:14, 2:6] = (4, 2, 0)
            ins[10:14, 12:18] = (1, 3, 0)
            save_image(str(root / "images" / split / f"{stem}.jpg"), 16, 20, seed=i)
            save_png(str(root / "annotations" / split / f"{stem}.png"), sem)
            save_png(str(root / "annotations_instance" / split / f"{stem}.png"), ins)
            layouts[stem] = sem
    return mapping, layouts


def test_ade20k_scripts_and_registrations(tmp_path, names):
    ade = tmp_path / "ADEChallengeData2016"
    mapping, layouts = _fake_ade20k(ade)
    script("prepare_ade20k_sem_seg").main(["--root", str(tmp_path), "--workers", "1"])
    script("prepare_ade20k_pan_seg").main(["--root", str(tmp_path), "--workers", "2"])
    script("prepare_ade20k_ins_seg").main(["--root", str(tmp_path), "--workers", "1"])

    # semantic: 1-based -> 0-based, other -> 255
    stem = "ADE_val_00000002"
    written = np.asarray(Image.open(ade / "annotations_detectron2" / "validation" / f"{stem}.png"))
    assert np.array_equal(written, (layouts[stem].astype(int) - 1) % 256)
    name = names("ade_sem")
    register_ade20k_semantic(name, str(ade / "images" / "validation"),
                             str(ade / "annotations_detectron2" / "validation"))
    dicts = DatasetCatalog.get(name)
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    out = build_dataset_mapper(mapper_cfg("mask_former_semantic", 150, name))(dicts[1])
    assert out["instances"].gt_classes.tolist() == [0, 2, 7, 12]

    # panoptic JSON and PNGs
    with open(ade / "ade20k_panoptic_val.json") as f:
        pan_json = json.load(f)
    assert len(pan_json["categories"]) == 150
    assert [c["id"] for c in pan_json["categories"] if c["isthing"]] == [8, 13]
    assert pan_json["categories"][12]["name"] == ADE20K_SEM_SEG_CATEGORIES[12]
    ann = pan_json["annotations"][1]
    assert ann["file_name"] == f"{stem}.png" and ann["image_id"] == 2
    segments = {s["id"]: s["category_id"] for s in ann["segments_info"]}
    assert segments == {1000: 1, 3000: 3, 8003: 8, 13001: 13, 13002: 13}
    ids = rgb2id(np.asarray(Image.open(ade / "ade20k_panoptic_val" / f"{stem}.png")))
    assert (ids[2:6, 2:6] == 13001).all() and (ids[10:14, 12:18] == 8003).all()
    assert (ids[0:2, 16:20] == 0).all()  # person pixels outside any instance are void
    by_id = {s["id"]: s for s in ann["segments_info"]}
    assert by_id[13002]["bbox"] == [2, 10, 4, 4] and by_id[13002]["area"] == 16
    assert pan_json["images"][1] == {"id": 2, "file_name": f"{stem}.jpg", "width": 20, "height": 16}

    name = names("ade_pan")
    register_ade20k_panoptic(name, str(ade / "images" / "validation"), str(ade / "ade20k_panoptic_val"),
                             str(ade / "ade20k_panoptic_val.json"), str(ade / "annotations_detectron2" / "validation"),
                             str(ade / "ade20k_instance_val.json"))
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == [ADE20K_SEM_SEG_CATEGORIES[7], ADE20K_SEM_SEG_CATEGORIES[12]]
    assert meta.thing_dataset_id_to_contiguous_id == {8: 7, 13: 12} and len(meta.stuff_classes) == 150
    dicts = DatasetCatalog.get(name)
    d = dicts[1]
    assert [(s["category_id"], s["isthing"]) for s in d["segments_info"]] == [
        (0, False), (2, False), (7, True), (12, True), (12, True)]
    out = build_dataset_mapper(mapper_cfg("mask_former_panoptic", 150, name))(d)
    assert out["instances"].gt_classes.tolist() == [0, 2, 7, 12, 12]
    for c, m in zip(out["instances"].gt_classes, out["instances"].gt_masks):
        assert (out["sem_seg"][m] == c).all()

    # instance JSON
    with open(ade / "ade20k_instance_val.json") as f:
        ins_json = json.load(f)
    assert ins_json["categories"] == [{"id": 8, "name": ADE20K_SEM_SEG_CATEGORIES[7]},
                                      {"id": 13, "name": ADE20K_SEM_SEG_CATEGORIES[12]}]
    anns = [a for a in ins_json["annotations"] if a["image_id"] == 2]
    assert [a["category_id"] for a in anns] == [13, 13, 8]
    assert mask_util.decode(anns[2]["segmentation"])[10:14, 12:18].all() and anns[2]["area"] == 24
    assert len({a["id"] for a in ins_json["annotations"]}) == len(ins_json["annotations"]) == 6

    name = names("ade_ins")
    register_ade20k_instance(name, str(ade / "images" / "validation"), str(ade / "ade20k_instance_val.json"))
    dicts = DatasetCatalog.get(name)
    assert MetadataCatalog.get(name).thing_classes == [ADE20K_SEM_SEG_CATEGORIES[7], ADE20K_SEM_SEG_CATEGORIES[12]]
    assert [a["category_id"] for a in dicts[1]["annotations"]] == [1, 1, 0]
    out = build_dataset_mapper(mapper_cfg("mask_former_instance", 2, name))(dicts[1])
    assert out["instances"].gt_classes.tolist() == [1, 1, 0]
    assert out["instances"].gt_masks[2, 10:14, 12:18].all() and out["instances"].gt_masks[2].sum() == 24


def test_ade20k_label_map_without_image_is_a_bad_item(tmp_path, names, caplog):
    root = tmp_path / "ade"
    save_image(str(root / "images" / "a.jpg"), 16, 16)
    save_png(str(root / "gt" / "a.png"), np.zeros((16, 16), np.uint8))
    save_png(str(root / "gt" / "b.png"), np.zeros((16, 16), np.uint8))
    name = names("ade_sem")
    register_ade20k_semantic(name, str(root / "images"), str(root / "gt"))
    with caplog.at_level(logging.WARNING):
        dicts = DatasetCatalog.get(name)
    assert len(dicts) == 2 and "1 of 2 label maps" in caplog.text
    mapper = build_dataset_mapper(mapper_cfg("mask_former_semantic", 150, name))
    with pytest.raises(BadDatasetItemError, match="b.jpg.*does not exist"):
        mapper(dicts[1])


def test_ade20k_instance_mapping_file_errors(tmp_path):
    from mask2former.data.preparation import read_ade20k_instance_mapping

    path = tmp_path / "m.txt"
    path.write_text("header\n1 8\n1 9\n")
    with pytest.raises(ValueError, match="line 3: duplicate"):
        read_ade20k_instance_mapping(str(path))
    path.write_text("header\n1 8\nnot numbers\n")
    with pytest.raises(ValueError, match="line 3"):
        read_ade20k_instance_mapping(str(path))
    with pytest.raises(FileNotFoundError, match="--category-mapping"):
        read_ade20k_instance_mapping(str(tmp_path / "absent.txt"))


def test_ade20k_full_script_and_registration(tmp_path, names):
    full = tmp_path / "ADE20K_2021_17_01"
    objectnames = [f"object {k}" for k in range(1, 301)]
    objectnames[0], objectnames[299] = "wall", "rare thing"
    folders, filenames = [], []

    def seg_png(classes):
        r = (classes // 256 * 10).astype(np.uint8)
        g = (classes % 256).astype(np.uint8)
        return np.stack([r, g, np.zeros_like(r)], axis=-1)

    layouts = {}
    for split, prefix in [("training", "ADE_train"), ("validation", "ADE_val")]:
        for i in range(1, 3):
            stem = f"{prefix}_{i:08d}"
            folder = f"ADE20K_2021_17_01/images/ADE/{split}/scene{i}"
            classes = np.zeros((16, 20), np.int64)
            classes[:, :12] = 1  # wall: both splits, most pixels
            classes[:, 12:16] = 300  # "rare thing" (R = 10, G = 44): both splits
            if split == "training":
                classes[:4, 16:] = 5  # only in training: dropped
            save_image(str(tmp_path / folder / f"{stem}.jpg"), 16, 20, seed=i)
            save_png(str(tmp_path / folder / f"{stem}_seg.png"), seg_png(classes))
            folders.append(folder)
            filenames.append(f"{stem}.jpg")
            layouts[(split, stem)] = classes
    with open(full / "index_ade20k.pkl", "wb") as f:  # the folder exists: the images are inside it
        pickle.dump({"filename": filenames, "folder": folders, "objectnames": objectnames}, f)

    script("prepare_ade20k_full_sem_seg").main(["--root", str(tmp_path), "--workers", "1"])
    with open(full / "ade20k_full_categories.json") as f:
        categories = json.load(f)
    assert categories == [{"trainId": 0, "id": 1, "name": "wall"}, {"trainId": 1, "id": 300, "name": "rare thing"}]
    label = np.asarray(Image.open(full / "annotations_detectron2" / "training" / "ADE_train_00000001.tif"))
    assert label.dtype == np.uint16
    expected = np.full((16, 20), 65535)
    expected[:, :12] = 0
    expected[:, 12:16] = 1
    assert np.array_equal(label, expected)
    assert (full / "images_detectron2" / "validation" / "ADE_val_00000002.jpg").is_file()

    name = names("ade_full")
    register_ade20k_full(name, str(full / "images_detectron2" / "training"),
                         str(full / "annotations_detectron2" / "training"), str(full / "ade20k_full_categories.json"))
    assert MetadataCatalog.get(name).stuff_classes == ["wall", "rare thing"]
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 2 and dicts[0]["sem_seg_file_name"].endswith(".tif")
    out = build_dataset_mapper(mapper_cfg("mask_former_semantic", 2, name))(dicts[0])
    assert out["instances"].gt_classes.tolist() == [0, 1]
    assert torch.equal(out["sem_seg"], torch.from_numpy(expected))


# ---------------------------------------------------------------------------------------------- COCO-Stuff-10k
def test_coco_stuff_10k_script_and_registration(tmp_path, names):
    root = tmp_path / "coco" / "coco_stuff_10k"
    labels = np.zeros((16, 20), np.uint8)  # 0: unlabeled
    labels[:, 4:8] = 1  # person
    labels[:, 8:10] = 12  # an id COCO-Stuff does not use
    labels[:, 10:14] = 92  # banner
    labels[:, 14:] = 182  # wood
    splits = [("COCO_train2014_000000000001", "train"), ("COCO_train2014_000000000002", "test")]
    for i, (stem, split) in enumerate(splits):
        save_image(str(root / "images" / f"{stem}.jpg"), 16, 20, seed=i)
        os.makedirs(root / "annotations", exist_ok=True)
        scipy.io.savemat(str(root / "annotations" / f"{stem}.mat"), {"S": labels})
        os.makedirs(root / "imageLists", exist_ok=True)
        (root / "imageLists" / f"{split}.txt").write_text(stem + "\n")
    script("prepare_coco_stuff_10k").main(["--root", str(tmp_path), "--workers", "1"])

    written = np.asarray(Image.open(root / "annotations_detectron2" / "test" / "COCO_train2014_000000000002.png"))
    expected = np.full((16, 20), 255, np.uint8)
    expected[:, 4:8], expected[:, 10:14], expected[:, 14:] = 0, 80, 170
    assert np.array_equal(written, expected)
    assert (root / "images_detectron2" / "train" / "COCO_train2014_000000000001.jpg").is_file()

    name = names("stuff10k")
    register_coco_stuff_10k(name, str(root / "images_detectron2" / "test"),
                            str(root / "annotations_detectron2" / "test"))
    meta = MetadataCatalog.get(name)
    assert len(meta.stuff_classes) == 171 and meta.stuff_classes[0] == "person"
    assert meta.stuff_classes[80] == "banner" and meta.stuff_classes[170] == "wood"
    assert meta.stuff_dataset_id_to_contiguous_id[92] == 80
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 1
    out = build_dataset_mapper(mapper_cfg("mask_former_semantic", 171, name))(dicts[0])
    assert out["instances"].gt_classes.tolist() == [0, 80, 170]


# ---------------------------------------------------------------------------------------------- Mapillary Vistas
def _fake_mapillary(root: Path, num_panoptic_categories=65):
    labels = [{"name": f"group--class-{i}", "readable": f"Class {i}", "color": [i, 2 * i, 3 * i],
               "instances": i % 2 == 0, "evaluate": True} for i in range(65)]
    labels.append({"name": "void--unlabeled", "readable": "Unlabeled", "color": [0, 0, 0], "instances": False,
                   "evaluate": False})
    write_json(str(root / "config.json"), {"labels": labels})
    sem = np.full((16, 20), 65, np.uint8)
    sem[:, :10] = 3
    sem[4:8, 12:16] = 4
    save_image(str(root / "training" / "images" / "abc.jpg"), 16, 20)
    save_png(str(root / "training" / "labels" / "abc.png"), sem)
    ids = np.zeros((16, 20), np.int64)
    ids[:, :10] = 7
    ids[4:8, 12:16] = 8
    save_png(str(root / "training" / "panoptic" / "abc.png"), id2rgb(ids))
    categories = [{"id": i + 1, "name": f"Class {i}", "supercategory": f"group--class-{i}", "isthing": int(i % 2 == 0),
                   "color": [i, 2 * i, 3 * i]} for i in range(num_panoptic_categories)]
    write_json(str(root / "training" / "panoptic" / "panoptic_2018.json"), {
        "images": [{"id": "abc", "file_name": "abc.jpg", "height": 16, "width": 20}],
        "annotations": [{"image_id": "abc", "file_name": "abc.png", "segments_info": [
            {"id": 7, "category_id": 4, "iscrowd": 0}, {"id": 8, "category_id": 5, "iscrowd": 0}]}],
        "categories": categories,
    })
    return sem


def test_mapillary_vistas_registrations(tmp_path, names):
    root = tmp_path / "mapillary_vistas"
    sem = _fake_mapillary(root)
    name = names("mapillary")
    register_mapillary_vistas(name, str(root / "training" / "images"), str(root / "training" / "labels"),
                              str(root / "config.json"))
    meta = MetadataCatalog.get(name)
    assert meta.ignore_label == 65 and len(meta.stuff_classes) == 65 and meta.stuff_classes[3] == "Class 3"
    assert meta.stuff_colors[4] == [4, 8, 12]
    dicts = DatasetCatalog.get(name)
    out = build_dataset_mapper(mapper_cfg("mask_former_semantic", 65, name))(dicts[0])
    assert out["instances"].gt_classes.tolist() == [3, 4]
    assert torch.equal(out["sem_seg"], torch.from_numpy(sem).long())

    name = names("mapillary_pan")
    register_mapillary_vistas_panoptic(name, str(root / "training" / "images"), str(root / "training" / "panoptic"),
                                       str(root / "training" / "panoptic" / "panoptic_2018.json"),
                                       str(root / "training" / "labels"), str(root / "config.json"))
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes[:2] == ["Class 0", "Class 2"] and len(meta.stuff_classes) == 65
    assert meta.thing_dataset_id_to_contiguous_id[5] == 4 and meta.stuff_dataset_id_to_contiguous_id[4] == 3
    (d,) = DatasetCatalog.get(name)
    assert d["image_id"] == "abc" and d["sem_seg_file_name"] == str(root / "training" / "labels" / "abc.png")
    assert [(s["category_id"], s["isthing"]) for s in d["segments_info"]] == [(3, False), (4, True)]
    out = build_dataset_mapper(mapper_cfg("mask_former_panoptic", 65, name))(d)
    assert out["instances"].gt_classes.tolist() == [3, 4]
    for c, m in zip(out["instances"].gt_classes, out["instances"].gt_masks):
        assert (out["sem_seg"][m] == c).all()


def test_mapillary_vistas_inconsistent_files_are_errors(tmp_path, names):
    root = tmp_path / "mapillary_vistas"
    _fake_mapillary(root, num_panoptic_categories=64)
    name = names("mapillary_pan")
    register_mapillary_vistas_panoptic(name, str(root / "training" / "images"), str(root / "training" / "panoptic"),
                                       str(root / "training" / "panoptic" / "panoptic_2018.json"),
                                       str(root / "training" / "labels"), str(root / "config.json"))
    with pytest.raises(ValueError, match="64 categories but .*config.json' has 65"):
        DatasetCatalog.get(name)

    with open(root / "config.json") as f:
        config = json.load(f)
    write_json(str(root / "config.json"), {"labels": config["labels"][:-1]})
    name = names("mapillary")
    register_mapillary_vistas(name, str(root / "training" / "images"), str(root / "training" / "labels"),
                              str(root / "config.json"))
    with pytest.raises(ValueError, match="config.json' has 65 labels"):
        MetadataCatalog.get(name).stuff_classes
