"""Inference with an official config needs no dataset: the class lists ship in mask2former/data/metadata/, every
official config builds its model with $DETECTRON2_DATASETS pointing to an empty folder, and the demo runs with the
official ADE20K panoptic config there; loading the dataset itself still reads (and checks) the dataset's files."""
import glob
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
METADATA = REPO / "mask2former" / "data" / "metadata"
OFFICIAL = sorted(p for p in glob.glob(str(REPO / "configs" / "**" / "*.yaml"), recursive=True)
                  if "shapes_world" not in p and "/Base-" not in p)


def run_python(code: str, tmp_path, timeout=240):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "no_datasets"), PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("file_name, count, things", [
    ("ade20k_150.json", 150, 100), ("mapillary_vistas_65.json", 65, 37), ("ytvis_2019.json", 40, None),
    ("ytvis_2021.json", 40, None), ("ovis.json", 25, None), ("coco_stuff_171.json", 171, 80),
    ("ade20k_full_847.json", 847, None), ("coco_panoptic_133.json", 133, 80), ("cityscapes_19.json", 19, 8),
])
def test_shipped_class_lists(file_name, count, things):
    data = json.loads((METADATA / file_name).read_text())
    assert len(data["description"]) > 80  # says where its facts come from
    categories = data["categories"]
    assert len(categories) == count and len({c["id"] for c in categories}) == count
    assert len({c["name"] for c in categories}) == count
    if things is not None:
        assert sum(c["isthing"] for c in categories) == things
    if "color" in categories[0]:
        assert all(len(c["color"]) == 3 and all(0 <= v <= 255 for v in c["color"]) for c in categories)


def test_every_official_config_builds_without_datasets(tmp_path):
    out = run_python(f"""
        import json, torch
        from detectron2.config import get_cfg
        from detectron2.modeling import META_ARCH_REGISTRY
        import mask2former
        from mask2former import add_maskformer2_config, add_maskformer2_video_config
        from mask2former.modeling.meta_arch.mask_former import dataset_metadata
        from demo.predictor import display_metadata
        report = {{}}
        for path in {OFFICIAL!r}:
            cfg = get_cfg(); add_maskformer2_config(cfg); add_maskformer2_video_config(cfg)
            cfg.merge_from_file(path)
            cfg.MODEL.DEVICE = "cpu"
            with torch.device("meta"):
                model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
            meta = dataset_metadata(cfg)
            test = cfg.MODEL.MASK_FORMER.TEST
            instance_only = "Video" in cfg.MODEL.META_ARCHITECTURE or not (test.SEMANTIC_ON or test.PANOPTIC_ON)
            classes = meta.thing_classes if instance_only else meta.stuff_classes
            shown = display_metadata(meta, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
            report[path] = [len(classes), cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, shown.stuff_classes[0], classes[0]]
        print(json.dumps(report))
    """, tmp_path)
    report = json.loads(out.strip().splitlines()[-1])
    assert len(report) == len(OFFICIAL) >= 50
    for path, (num_names, num_classes, shown, first) in report.items():
        assert num_names == num_classes, path
        assert shown == first, path  # the demo draws the model's classes by their names


def test_official_ade20k_panoptic_demo_runs_without_the_dataset(tmp_path):
    """The official R50 config and a (random) checkpoint saved as the model zoo's would be: the demo draws and
    saves raw outputs named with ADE20K classes; asking for the dataset still names the missing file."""
    out = run_python("""
        import json, os, sys, torch
        sys.path.insert(0, os.environ["PYTHONPATH"])
        import cv2, numpy as np
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.data import DatasetCatalog
        from detectron2.modeling import build_model
        from demo import demo as demo_cli
        config = os.path.join(os.environ["PYTHONPATH"], "configs/ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k.yaml")
        opts = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
                        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0", "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True"]
        cfg = demo_cli._base_config(); cfg.merge_from_file(config); cfg.merge_from_list(opts)
        torch.manual_seed(0)
        DetectionCheckpointer(build_model(cfg), save_dir=".").save("model_final")
        cv2.imwrite("scene.png", np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
        code = demo_cli.main(["--config-file", config, "--input", "scene.png", "--output", "out", "--save-raw",
                              "--confidence-threshold", "0.0", "--opts", *opts, "MODEL.WEIGHTS", "model_final.pth"])
        assert code == 0, code
        raw = [f for f in os.listdir("out") if f.endswith("_instances.json")]
        segments = json.load(open(os.path.join("out", raw[0])))["instances"]
        try:
            DatasetCatalog.get("ade20k_panoptic_val")
            missing = ""
        except FileNotFoundError as e:
            missing = str(e)
        print(json.dumps({"files": sorted(os.listdir("out")), "raw": segments, "missing": missing}))
    """, tmp_path)
    result = json.loads(out.strip().splitlines()[-1])
    assert any(f.endswith(".png") for f in result["files"])
    text = json.dumps(result["raw"])
    from mask2former.data.datasets.loading import shipped_categories

    names = {c["name"] for c in shipped_categories("ade20k_150.json")}
    assert result["raw"] and all(s["category_name"] in names for s in result["raw"]), text[:500]
    assert "ade20k_panoptic_val.json" in result["missing"] and "prepare_ade20k_pan_seg.py" in result["missing"]


def test_dataset_categories_are_checked_against_the_shipped_list(tmp_path):
    """A panoptic JSON numbered like the official preparation script (ids 0..149) is refused on loading."""
    from detectron2.data import DatasetCatalog

    from mask2former.data.datasets.loading import shipped_categories
    from mask2former.data.datasets.register_ade20k_panoptic import register_ade20k_panoptic

    categories = shipped_categories("ade20k_150.json")
    shifted = [dict(c, id=c["id"] - 1) for c in categories]
    (tmp_path / "images").mkdir()
    (tmp_path / "pan").mkdir()
    (tmp_path / "pan.json").write_text(json.dumps({"images": [], "annotations": [], "categories": shifted}))
    name = "test_ade20k_panoptic_shifted_ids"
    register_ade20k_panoptic(name, str(tmp_path / "images"), str(tmp_path / "pan"), str(tmp_path / "pan.json"),
                             str(tmp_path / "sem"), str(tmp_path / "ins.json"), categories=categories)
    try:
        with pytest.raises(ValueError, match="categories differ.*prepare_ade20k_pan_seg.py"):
            DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)


def test_ade20k_full_names_without_the_dataset_and_checked_on_loading(tmp_path):
    """ade20k_full_sem_seg_* name the official 847 classes with no dataset on disk; a prepared folder whose
    categories file lists other classes is refused when the dataset is loaded."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from mask2former.data.datasets.register_ade20k_full import register_ade20k_full

    meta = MetadataCatalog.get("ade20k_full_sem_seg_val")
    assert len(meta.stuff_classes) == 847 and meta.stuff_classes[0] == "wall"
    assert meta.stuff_classes[846] == "adding machine, totalizer, totaliser"
    shipped = json.loads((METADATA / "ade20k_full_847.json").read_text())["categories"]
    assert [c["trainId"] for c in shipped] == list(range(847))
    other = [dict(c, id=c["id"] + 1) if c["trainId"] == 5 else c for c in shipped]
    (tmp_path / "cats.json").write_text(json.dumps(other))
    name = "test_ade20k_full_other_classes"
    register_ade20k_full(name, str(tmp_path / "images"), str(tmp_path / "labels"), str(tmp_path / "cats.json"),
                         shipped=True)
    try:
        assert MetadataCatalog.get(name).stuff_classes == meta.stuff_classes
        with pytest.raises(ValueError, match="cats.json.*847.*differ first at trainId 5"):
            DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_coco_and_cityscapes_lists_match_the_registered_datasets():
    """The shipped COCO and Cityscapes lists are the class orders of the datasets the official configs name."""
    from detectron2.data import MetadataCatalog

    import mask2former  # noqa: F401  (registers the datasets)

    coco = json.loads((METADATA / "coco_panoptic_133.json").read_text())["categories"]
    assert len(coco) == 133 and [c["isthing"] for c in coco] == [1] * 80 + [0] * 53
    panoptic = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert panoptic.stuff_classes == [c["name"] for c in coco]
    assert panoptic.thing_classes == [c["name"] for c in coco[:80]]
    assert MetadataCatalog.get("coco_2017_val").thing_classes == [c["name"] for c in coco[:80]]

    cityscapes = json.loads((METADATA / "cityscapes_19.json").read_text())["categories"]
    assert [c["trainId"] for c in cityscapes] == list(range(19))
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").stuff_classes == [c["name"] for c in cityscapes]
    things = [c["name"] for c in cityscapes if c["isthing"]]
    assert MetadataCatalog.get("cityscapes_fine_instance_seg_val").thing_classes == things
    colors = MetadataCatalog.get("cityscapes_fine_panoptic_val").stuff_colors
    assert [list(c) for c in colors] == [c["color"] for c in cityscapes]
