"""The demo and the predictor on odd pictures (grayscale, RGBA, 16-bit, 1x1, EXIF-rotated, 10000 px wide), very
large inputs (shrunk to --max-size first, which bounds memory) and a video that stops decoding half-way (the
frames before are written, the error names the frame), in the image model's demo and the video model's."""
import io
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from test_demo import checkpoint, messages, opts, predictor_for, read_video  # noqa: F401 (fixture)
from demo import demo as demo_cli


def _odd_pictures(folder):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    pictures = {
        "gray.png": Image.fromarray(rgb[:, :, 0], "L"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)]), "RGBA"),
        "deep.png": Image.fromarray(rng.integers(0, 65536, (40, 60), dtype=np.uint16)),
        "one.png": Image.fromarray(rgb[:1, :1]),
        "wide.png": Image.fromarray(np.tile(rgb[:8], (1, 170, 1))[:, :10000]),
    }
    paths = {}
    for name, image in pictures.items():
        paths[name] = folder / name
        image.save(paths[name])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown: the drawing must be 60 high, 40 wide
    paths["rotated.jpg"] = folder / "rotated.jpg"
    Image.fromarray(rgb).save(paths["rotated.jpg"], exif=exif.tobytes())
    return paths


def test_demo_on_odd_pictures(checkpoint, tmp_path, caplog):  # noqa: F811
    paths = _odd_pictures(tmp_path)
    out = tmp_path / "out"
    argv = ["--input", *map(str, paths.values()), "--output", str(out), "--max-size", "4096", *opts(checkpoint)]
    assert demo_cli.main(argv) == 0, messages(caplog)
    sizes = {name: cv2.imread(str(out / name)).shape[:2] for name in paths}
    assert sizes["gray.png"] == sizes["rgba.png"] == sizes["deep.png"] == (40, 60)
    assert sizes["one.png"] == (1, 1)
    assert sizes["rotated.jpg"] == (60, 40)  # EXIF orientation applied
    assert sizes["wide.png"] == (3, 4096)  # 8 x 10000 shrunk to --max-size 4096 (longer side)
    assert "shrunk to 4096x" in messages(caplog)


def test_predictor_bounds_the_output_size_of_large_inputs(checkpoint):  # noqa: F811
    demo = predictor_for(["--input", "x.png", *opts(checkpoint)])
    demo.max_side = 256
    image = np.random.default_rng(1).integers(0, 256, (600, 1000, 3), dtype=np.uint8)
    predictions, drawing = demo.run_on_image(image)
    assert drawing.shape[:2] == (154, 256)
    seg, _ = predictions["panoptic_seg"]
    assert tuple(seg.shape) == (154, 256)  # the model's outputs are at the shrunk size, not 600 x 1000


def test_a_16_bit_picture_is_scaled_not_clipped(checkpoint, tmp_path):  # noqa: F811
    from mask2former.data.dataset_mappers.checks import read_image

    deep = np.linspace(0, 65535, 40 * 60).reshape(40, 60).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    image = read_image(str(tmp_path / "deep.png"), "BGR")
    assert image.shape == (40, 60, 3) and image.max() == 255 and image.min() == 0
    assert len(np.unique(image[:, :, 0])) > 200  # a clipped read would be 0 or 255 almost everywhere


def _write_avi(path, n, size=(80, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, size)
    for i in range(n):
        writer.write(np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()


def _truncated_avi(path, n):
    """A video whose container says ``n`` frames but whose second half is cut off; returns the frames that decode."""
    _write_avi(path, n)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    decodable = 0
    while capture.read()[0]:
        decodable += 1
    capture.release()
    assert count == n and 0 < decodable < n - 2
    return decodable


def test_a_video_that_stops_decoding_keeps_the_frames_so_far_and_names_the_frame(checkpoint, tmp_path,  # noqa: F811
                                                                                  caplog):
    src = tmp_path / "clip.avi"
    decodable = _truncated_avi(src, 12)
    out = tmp_path / "out.avi"
    assert demo_cli.main(["--video-input", str(src), "--output", str(out), *opts(checkpoint)]) == 2  # DemoError
    assert f"frame {decodable} of 12 cannot be decoded" in messages(caplog)
    frames, _ = read_video(out)
    assert len(frames) == decodable  # everything before the damage is written


def test_a_complete_video_is_not_reported(checkpoint, tmp_path, caplog):  # noqa: F811
    src = tmp_path / "clip.avi"
    _write_avi(src, 6)
    assert demo_cli.main(["--video-input", str(src), "--output", str(tmp_path / "o.avi"), *opts(checkpoint)]) == 0
    assert "cannot be decoded" not in messages(caplog)


@pytest.fixture(scope="module")
def video_config(tmp_path_factory):
    """A config file of a tiny VideoMaskFormer with (random) weights."""
    import torch
    from detectron2.modeling import build_model

    from video_testing import tiny_video_cfg

    folder = tmp_path_factory.mktemp("video_model")
    torch.manual_seed(0)
    torch.save({"model": build_model(tiny_video_cfg()).state_dict()}, folder / "model.pth")
    (folder / "cfg.yaml").write_text(tiny_video_cfg("MODEL.WEIGHTS", str(folder / "model.pth"),
                                                    "INPUT.MIN_SIZE_TEST", 32).dump())
    return str(folder / "cfg.yaml")


def _video_demo(config, src, out, *extra):
    from demo.video_demo import main as video_demo

    return video_demo(["--config-file", config, "--input", str(src), "--output", str(out), "--confidence-threshold",
                       "0", "--clip-length", "4", "--clip-overlap", "2", *extra])


def test_the_video_model_demo_on_a_video_that_stops_decoding(video_config, tmp_path, caplog):
    src = tmp_path / "clip.avi"
    decodable = _truncated_avi(src, 12)
    out = tmp_path / "out.avi"
    assert _video_demo(video_config, src, out, "--save-json", str(tmp_path / "results.json")) == 2
    assert f"{src}: frame {decodable} of 12 cannot be decoded" in messages(caplog)
    assert f"frames 0-{decodable - 1} were processed" in messages(caplog)
    frames, _ = read_video(out)
    assert len(frames) == decodable  # everything before the damage is drawn
    results = json.loads((tmp_path / "results.json").read_text())
    assert results and all(len(r["segmentations"]) == decodable for r in results)


def test_the_video_model_demo_on_frames_of_which_one_cannot_be_read(video_config, tmp_path, caplog):
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(6):
        cv2.imwrite(str(frames / f"{t:05d}.jpg"), np.random.default_rng(t).integers(0, 256, (40, 56, 3), np.uint8))
    (frames / "00004.jpg").write_bytes(b"not a picture")
    assert _video_demo(video_config, frames, tmp_path / "pngs") == 2
    assert f"{frames / '00004.jpg'} (frame 4 of 6) does not exist or cannot be read" in messages(caplog)
    assert sorted(os.listdir(tmp_path / "pngs")) == [f"{t:05d}.png" for t in range(4)]


def test_the_video_model_demo_on_a_complete_video_is_not_reported(video_config, tmp_path, caplog):
    src = tmp_path / "clip.avi"
    _write_avi(src, 6)
    assert _video_demo(video_config, src, tmp_path / "out.avi") == 0, messages(caplog)
    assert "cannot be decoded" not in messages(caplog)
    assert len(read_video(tmp_path / "out.avi")[0]) == 6
