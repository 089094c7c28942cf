"""Custom data without code: a freshly generated shapes-world folder (COCO panoptic + instances + semantic PNGs)
registered through DATASETS.REGISTER, trained a few iterations by train_net.py and evaluated (PQ, AP, mIoU);
the instance and semantic registrations; and the errors of bad entries."""
import json
import os
import sys

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser

from mask2former.data.datasets.register_folder import (
    parse_registration,
    register_coco_instance_folder,
    register_coco_panoptic_folder,
    register_sem_seg_folder,
)
from mask2former.data.synthetic import shapes_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import train_net  # noqa: E402
from demo import demo as demo_cli  # noqa: E402

CONFIG = os.path.join(ROOT, "configs/shapes_world/maskformer2_R18_panoptic.yaml")
TINY = [
    "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", "TEST.AUG.ENABLED", "False",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.SIZE_DIVISIBILITY", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "6",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "DATALOADER.NUM_WORKERS", "0",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("my_data") / "shapes"
    shapes_world.main(["--output", str(out), "--num-train", "4", "--num-val", "2", "--min-size", "64",
                       "--max-size", "80"])
    return out


def panoptic_entry(folder, name, split):
    return (f"coco_panoptic {name} image_root={folder}/images/{split} "
            f"panoptic_json={folder}/annotations/panoptic_{split}.json panoptic_root={folder}/panoptic/{split} "
            f"sem_seg_root={folder}/semantic/{split} instances_json={folder}/annotations/instances_{split}.json")


def test_train_and_evaluate_through_the_config_route(folder, tmp_path):
    register = [panoptic_entry(folder, "my_shapes_train", "train"), panoptic_entry(folder, "my_shapes_val", "val")]
    args = default_argument_parser().parse_args([
        "--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.REGISTER", repr(register),
        "DATASETS.TRAIN", "('my_shapes_train',)", "DATASETS.TEST", "('my_shapes_val',)", *TINY])
    results = train_net.main(args)
    assert "PQ" in results["panoptic_seg"] and "AP" in results["segm"] and "mIoU" in results["sem_seg"]
    meta = MetadataCatalog.get("my_shapes_train")
    categories = json.loads((folder / "annotations" / "panoptic_train.json").read_text())["categories"]
    things = sorted((c for c in categories if c["isthing"]), key=lambda c: c["id"])
    assert meta.thing_classes == [c["name"] for c in things]  # things first, contiguous ids
    assert meta.stuff_classes[:len(things)] == meta.thing_classes and len(meta.stuff_classes) == len(categories)
    assert meta.stuff_colors[0] == things[0]["color"]
    weights = tmp_path / "out" / "model_final.pth"
    assert os.path.isfile(weights)

    # the demo takes the same registration (for the class names) from its --opts
    image = sorted((folder / "images" / "val").iterdir())[0]
    code = demo_cli.main(["--config-file", CONFIG, "--input", str(image), "--output", str(tmp_path / "demo"),
                          "--save-raw", "--confidence-threshold", "0.0", "--task", "instance", "--opts", *TINY,
                          "DATASETS.REGISTER", repr(register[1:]), "DATASETS.TRAIN", "()",
                          "DATASETS.TEST", "('my_shapes_val',)", "MODEL.WEIGHTS", str(weights)])
    assert code == 0
    (raw,) = (tmp_path / "demo").glob("*_instances.json")
    assert {i["category_name"] for i in json.loads(raw.read_text())["instances"]} <= set(meta.thing_classes)


def test_instance_and_semantic_folders(folder):
    meta = register_coco_instance_folder("my_shapes_instances", f"{folder}/images/val",
                                         f"{folder}/annotations/instances_val.json")
    dicts = DatasetCatalog.get("my_shapes_instances")
    assert len(dicts) == 2 and meta["evaluator_type"] == "coco" and len(meta["thing_classes"]) >= 1
    categories = json.loads((folder / "annotations" / "panoptic_train.json").read_text())["categories"]
    names = [c["name"] for c in sorted(categories, key=lambda c: (not c["isthing"], c["id"]))]
    func, name, kwargs = parse_registration(
        f"sem_seg my_shapes_sem image_root={folder}/images/val sem_seg_root={folder}/semantic/val "
        f"classes={','.join(names)} ignore_label=255")
    assert func is register_sem_seg_folder and kwargs["classes"] == names and kwargs["ignore_label"] == 255
    func(name, **kwargs)
    assert len(DatasetCatalog.get("my_shapes_sem")) == 2
    assert MetadataCatalog.get("my_shapes_sem").stuff_classes == names


@pytest.mark.parametrize("entry, message", [
    ("coco_panoptic", "expected 'KIND NAME"),
    ("voc my_data image_root=x", "KIND one of"),
    ("coco_panoptic my_data image_root=x", "missing: panoptic_json, panoptic_root"),
    ("coco_instance my_data image_root=x instances_json=y colour=red", "unknown: colour"),
    ("coco_instance my_data image_root", "'image_root' is not key=value"),
])
def test_bad_entries_name_the_problem(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_registration(entry)


def test_missing_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        register_coco_panoptic_folder("my_missing", str(tmp_path), str(tmp_path / "nope.json"), str(tmp_path))
