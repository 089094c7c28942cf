"""ONNX export (tools/export_model.py, mask2former/export.py): onnxruntime on the CPU matches PyTorch within 1e-3
on the golden tiny Swin COCO panoptic model, at the traced size and at other sizes (dynamic height and width),
with normalisation inside the graph; the official R50 COCO panoptic config at 512x640 (random weights) too."""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from mask2former import add_maskformer2_config, add_maskformer2_video_config
from mask2former.export import ExportableMaskFormer, export_onnx
from shared_paths import GOLDEN, require

onnx = pytest.importorskip("onnx", reason="pip install onnx onnxruntime (extras 'export')")
ort = pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime (extras 'export')")
require(GOLDEN)

import test_golden_parity as golden  # noqa: E402  (the golden model's config and files)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-3


def golden_model():
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    cfg.merge_from_file(golden.CONFIG)
    cfg.merge_from_list([str(v) if not isinstance(v, str) else v for v in golden.OVERRIDES])
    model = build_model(cfg).eval()
    model.load_state_dict(golden.load("model_state_dict.pt"))
    return model


def run(path, image):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(x) for x in session.run(None, {"image": image.numpy()})]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = golden_model()
    image = golden.load("input.pt")
    path = str(tmp_path_factory.mktemp("onnx") / "model.onnx")
    export_onnx(model, path, image.shape[1], image.shape[2])
    return model, path, image


def test_graph_interface(exported):
    _, path, _ = exported
    graph = onnx.load(path)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (image,) = graph.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and dims == [1, 3, "height", "width"]
    assert [o.name for o in graph.graph.output] == ["pred_logits", "pred_masks"]


def test_golden_input_matches_pytorch_and_the_model(exported):
    model, path, image = exported
    logits, masks = run(path, image[None].float())
    queries = model.predict_queries([{"image": image}])[0]  # the model's own forward, normalisation included
    assert logits.shape == (1, 20, 134) and masks.shape == (1, 20, image.shape[1] // 4, image.shape[2] // 4)
    torch.testing.assert_close(logits[0], queries["pred_logits"], atol=ATOL, rtol=0)
    upsampled = torch.nn.functional.interpolate(masks, size=image.shape[1:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsampled[0], queries["pred_masks"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("size", [(96, 160), (100, 130), (256, 192)])
def test_other_sizes_dynamic_height_and_width(exported, size):
    model, path, _ = exported
    torch.manual_seed(sum(size))
    image = torch.rand(1, 3, *size) * 255
    with torch.no_grad():
        expected = ExportableMaskFormer(model).eval()(image)
    got = run(path, image)
    padded = [-(-s // 32) * 32 for s in size]
    assert got[1].shape[-2:] == (padded[0] // 4, padded[1] // 4)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=ATOL, rtol=0)


def test_official_r50_coco_panoptic_at_512x640(tmp_path):
    """The official config unchanged but for random weights, through tools/export_model.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_model", os.path.join(REPO, "tools", "export_model.py"))
    export_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_model)

    config = os.path.join(REPO, "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml")
    model, path = export_model.export(["--config-file", config, "--format", "onnx", "--output", str(tmp_path),
                                       "--height", "512", "--width", "640", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    assert path == str(tmp_path / "model.onnx")
    result = export_model.check_onnx(model, path, 512, 640)
    assert result["pred_logits"] < ATOL and result["pred_masks"] < ATOL, result


def test_crop_classifier_is_in_the_graph(tmp_path):
    """With MODEL.MASK_FORMER.CROP_CLASSIFIER on, the graph's pred_logits are the refined log-probabilities."""
    from test_crop_classifier import ON, _model

    model = _model(**ON).eval()
    path = str(tmp_path / "model.onnx")
    export_onnx(model, path, 64, 96)
    image = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        expected = model.predict_queries([{"image": image[0]}], upsample=False)[0]
    logits, masks = run(path, image)
    torch.testing.assert_close(masks[0], expected["pred_masks"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[0], expected["pred_logits"], atol=ATOL, rtol=0)
