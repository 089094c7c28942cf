"""tools/visualize_dat_offsets.py: sample points and attention of DAT's deformable blocks, drawn over an image."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/shapes_world/dat/maskformer2_dat_panoptic.yaml"
spec = importlib.util.spec_from_file_location("visualize_dat_offsets", REPO / "tools/visualize_dat_offsets.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def test_sampling_points_in_image_pixels():
    torch.manual_seed(0)
    _, model = tool.build(str(CONFIG), ["MODEL.WEIGHTS", ""])
    backbone = model.backbone
    blocks = tool.default_blocks(backbone)
    assert blocks == ["stages.2.attns.1", "stages.3.attns.1"]
    data = tool.sampling_points(backbone, torch.randn(1, 3, 150, 230), blocks, [(10, 10), (200, 140)])
    for name, stride, groups, heads in (("stages.2.attns.1", 16, 2, 4), ("stages.3.attns.1", 32, 4, 8)):
        d = data[name]
        Hk, Wk = -(-150 // stride), -(-230 // stride)
        assert d["stride"] == stride
        assert d["points"].shape == (groups, Hk * Wk, 2)
        assert d["weights"].shape == (2, groups, Hk * Wk)
        # each head's attention sums to one over the samples
        np.testing.assert_allclose(d["weights"].sum(axis=(1, 2)), heads, rtol=1e-5)
        # queries snap to cell centres; samples stay within one cell of the padded map
        np.testing.assert_allclose(d["queries"][0], (stride / 2, stride / 2))
        assert (d["points"] > -stride).all()
        assert (d["points"][..., 0] < Wk * stride + stride).all() and (d["points"][..., 1] < Hk * stride + stride).all()


def test_main_writes_a_figure(tmp_path):
    image = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "offsets.png"
    assert tool.main(["--config-file", str(CONFIG), "--input", str(tmp_path / "in.png"), "--output", str(out),
                      "--queries", "20,30", "100,80", "--top-k", "8", "--opts", "MODEL.WEIGHTS", ""]) == 0
    drawn = np.asarray(Image.open(out))
    assert drawn.shape[0] > 100 and drawn.shape[1] > 200


def test_bad_arguments_are_named(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "in.png")
    with pytest.raises(SystemExit, match="--queries"):
        tool.main(["--config-file", str(CONFIG), "--input", str(tmp_path / "in.png"), "--queries", "3",
                   "--opts", "MODEL.WEIGHTS", ""])
    with pytest.raises(SystemExit, match="MODEL.WEIGHTS"):
        tool.main(["--config-file", str(CONFIG), "--input", str(tmp_path / "in.png"), "--opts", "MODEL.WEIGHTS", "nope.pth"])
    with pytest.raises(SystemExit, match="--input"):
        tool.main(["--config-file", str(CONFIG), "--input", str(tmp_path / "missing.png")])
