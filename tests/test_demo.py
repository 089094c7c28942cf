"""demo/demo.py end to end on a tiny randomly initialised shapes-world model whose checkpoint the tests save:
pictures (three tasks, side by side), raw outputs checked against the predictions, the explain grid, video,
bad inputs and bad checkpoints."""
import json
import logging
import os
import sys

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from mask2former.data.synthetic.shapes_world import generate_image
from mask2former.modeling.transformer_decoder.mask2former_transformer_decoder import attention_mask_from_masks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from demo import demo as demo_cli  # noqa: E402
from demo.explain import DecoderRecorder, explain  # noqa: E402
from demo.predictor import VisualizationDemo, display_metadata  # noqa: E402

CONFIG = "configs/shapes_world/maskformer2_R18_panoptic.yaml"
# Small enough for a fraction of a second per image; DEC_LAYERS 4 = the learnable queries + 3 layers (1/32, 1/16, 1/8).
TINY = [
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", "2",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.NHEADS", "2", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8", "MODEL.MASK_FORMER.DEC_LAYERS", "4",
    # a random model is never confident: keep every segment so that the outputs are not empty
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0", "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0",
]


def tiny_cfg(*extra):
    cfg = demo_cli._base_config()
    cfg.merge_from_file(os.path.join(ROOT, CONFIG))
    cfg.merge_from_list(TINY + list(extra))
    return cfg


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny model, nudged so that it predicts several thing segments, saved like the trainer does."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    with torch.no_grad():
        model.sem_seg_head.predictor.class_embed.bias[:7] += 3.0  # the 7 thing classes come first
        model.sem_seg_head.predictor.mask_embed.layers[-1].weight *= 4.0  # sharper masks
    folder = tmp_path_factory.mktemp("ckpt")
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_final")
    return str(folder / "model_final.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two shapes-world scenes of different sizes (PNG, lossless) and a file that is no image."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (h, w) in enumerate([(90, 120), (72, 56)]):
        rgb = generate_image(np.random.default_rng(i), h, w)["image"]
        paths.append(str(folder / f"scene{i}.png"))
        cv2.imwrite(paths[-1], rgb[:, :, ::-1])
    bad = folder / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG")
    return paths, str(bad)


def opts(checkpoint, *extra):
    return ["--opts", *TINY, "MODEL.WEIGHTS", checkpoint, *extra]


def messages(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("demo"))


@pytest.fixture(autouse=True)
def _log_level(caplog):
    caplog.set_level(logging.INFO, logger="demo")


def predictor_for(argv):
    args = demo_cli.get_parser().parse_args(argv)
    cfg, task, _ = demo_cli.setup_cfg(args)
    return VisualizationDemo(cfg, task, args.confidence_threshold)


# ----------------------------------------------------------------------------------------------------------
# pictures and raw outputs
# ----------------------------------------------------------------------------------------------------------
def test_pictures_side_by_side_and_raw_outputs_match_predictions(checkpoint, images, tmp_path, caplog):
    paths, _ = images
    out = tmp_path / "out"
    argv = ["--input", *paths, "--output", str(out), "--save-raw", "--side-by-side",
            "--confidence-threshold", "0.1", *opts(checkpoint)]
    assert demo_cli.main(argv) == 0
    text = messages(caplog)
    assert "task panoptic" in text  # the config enables all three: panoptic first
    assert "Done: 2 images" in text and "mean" in text and "median" in text

    demo = predictor_for(argv)
    names = demo.metadata.stuff_classes
    assert names[0] == "circle" and names[-1] == "wall"  # the shapes-world classes, not ids
    for path in paths:
        image = read_image(path, format="BGR")
        h, w = image.shape[:2]
        pred = demo.predict(image)
        stem = out / os.path.splitext(os.path.basename(path))[0]

        picture = cv2.imread(str(out / os.path.basename(path)))
        assert picture.shape == (h, 2 * w, 3)
        np.testing.assert_array_equal(picture[:, :w], image)  # left half: the input (lossless PNG)
        assert np.abs(picture[:, w:].astype(int) - image.astype(int)).mean() > 5  # right half: drawn on

        labels = cv2.imread(f"{stem}_sem_seg.png", cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint8 and labels.shape == (h, w)
        np.testing.assert_array_equal(labels, pred["sem_seg"].argmax(0).numpy())

        seg, segments = pred["panoptic_seg"]
        assert len(segments) >= 2
        rgb = cv2.imread(f"{stem}_panoptic.png")[:, :, ::-1].astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
        np.testing.assert_array_equal(ids, seg.numpy())
        with open(f"{stem}_panoptic.json") as f:
            pan = json.load(f)
        assert pan["file_name"] == os.path.basename(f"{stem}_panoptic.png") and (pan["height"], pan["width"]) == (h, w)
        assert sorted(s["id"] for s in pan["segments_info"]) == sorted(set(np.unique(ids).tolist()) - {0})
        by_id = {s["id"]: s for s in segments}
        for s in pan["segments_info"]:
            assert s["category_id"] == by_id[s["id"]]["category_id"]
            assert s["category_name"] == names[s["category_id"]]
            assert s["isthing"] == by_id[s["id"]]["isthing"] == (s["category_id"] < 7)
            assert s["area"] == int((ids == s["id"]).sum())
            ys, xs = np.nonzero(ids == s["id"])
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]

        with open(f"{stem}_instances.json") as f:
            inst = json.load(f)
        expected = pred["instances"]
        assert 0 < len(inst["instances"]) == len(expected)
        assert all(d["score"] >= 0.1 for d in inst["instances"])  # --confidence-threshold
        for d, mask, score, cls, box in zip(inst["instances"], expected.pred_masks, expected.scores,
                                             expected.pred_classes, expected.pred_boxes.tensor):
            decoded = mask_util.decode({"size": d["segmentation"]["size"],
                                        "counts": d["segmentation"]["counts"].encode("ascii")})
            np.testing.assert_array_equal(decoded, mask.numpy().astype(np.uint8))
            assert d["score"] == pytest.approx(float(score))
            assert d["category_id"] == int(cls) and d["category_name"] == names[int(cls)]
            x0, y0, x1, y1 = box.tolist()
            assert d["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
            assert d["dataset_category_id"] == int(cls) + 1  # shapes-world thing ids are 1..7


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_task_flag_draws_that_task_into_a_named_file(checkpoint, images, tmp_path, caplog, task):
    paths, _ = images
    out = tmp_path / "drawn.png"
    assert demo_cli.main(["--input", paths[1], "--output", str(out), "--task", task,
                          "--confidence-threshold", "0", *opts(checkpoint)]) == 0
    picture = cv2.imread(str(out))
    image = cv2.imread(paths[1])
    assert picture.shape == image.shape  # not side by side
    assert np.abs(picture.astype(int) - image.astype(int)).mean() > 5
    assert f"task {task}" in messages(caplog)


@pytest.mark.parametrize("config, task", [("maskformer2_R18_panoptic.yaml", "panoptic"),
                                          ("maskformer2_R18_instance.yaml", "instance"),
                                          ("maskformer2_R18_semantic.yaml", "semantic")])
def test_default_task_and_weights_follow_the_config(config, task):
    args = demo_cli.get_parser().parse_args(["--input", "x.png", "--config-file", f"configs/shapes_world/{config}"])
    cfg, chosen, hint = demo_cli.setup_cfg(args)
    assert chosen == task
    assert os.path.normpath(cfg.MODEL.WEIGHTS) == os.path.normpath(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    assert f"python train_net.py --config-file configs/shapes_world/{config}" in hint


def test_task_not_enabled_by_the_config_is_turned_on(caplog):
    args = demo_cli.get_parser().parse_args(["--input", "x.png", "--task", "semantic",
                                             "--config-file", "configs/shapes_world/maskformer2_R18_instance.yaml"])
    cfg, task, _ = demo_cli.setup_cfg(args)
    assert task == "semantic" and cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON
    assert "turning on MODEL.MASK_FORMER.TEST.SEMANTIC_ON" in messages(caplog)


def test_cuda_device_falls_back_to_cpu_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = demo_cli.get_parser().parse_args(["--input", "x.png", "--opts", "MODEL.DEVICE", "cuda"])
    cfg, _, _ = demo_cli.setup_cfg(args)
    assert cfg.MODEL.DEVICE == "cpu"
    assert "no GPU is available: running on the CPU" in messages(caplog)


def test_help_names_the_default_config_and_weights(capsys):
    with pytest.raises(SystemExit) as e:
        demo_cli.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert CONFIG in text
    assert "output/shapes_world/maskformer2_R18_panoptic/model_final.pth" in text
    for flag in ("--input", "--output", "--video-input", "--webcam", "--confidence-threshold", "--opts",
                 "--task", "--side-by-side", "--save-raw", "--explain"):
        assert flag in text


def test_display_metadata_names_every_class_of_any_dataset():
    from detectron2.data import MetadataCatalog

    inst = display_metadata(MetadataCatalog.get("shapes_world_train_instance"), 7)
    assert inst.stuff_classes == inst.thing_classes and inst.thing_classes[3] == "star"
    assert inst.thing_colors[0] == [220, 20, 60]
    none = display_metadata(None, 3)
    assert none.stuff_classes == ["class 0", "class 1", "class 2"] and len(none.stuff_colors) == 3


def test_output_names_are_unique_per_input(tmp_path):
    got = demo_cli.image_output_paths(["a/x.jpg", "b/x.jpg", "c/y.gif"], str(tmp_path))
    assert [os.path.basename(p) for p in got] == ["x.jpg", "x-2.jpg", "y.gif.png"]
    with pytest.raises(demo_cli.DemoError, match="2 inputs"):
        demo_cli.image_output_paths(["a.jpg", "b.jpg"], str(tmp_path / "one.png"))


# ----------------------------------------------------------------------------------------------------------
# explain mode
# ----------------------------------------------------------------------------------------------------------
def test_explain_grid_file(checkpoint, images, tmp_path, caplog):
    paths, _ = images
    assert demo_cli.main(["--input", paths[0], "--output", str(tmp_path), "--explain", "--explain-queries", "3",
                          *opts(checkpoint)]) == 0
    grid = cv2.imread(str(tmp_path / "scene0_explain.png"))
    # 90 x 120 image -> 120 x 160 cells (+4 px gaps); 170 px labels + 4 columns; 26 px header + 3 x 2 rows
    assert grid.shape == (26 + 6 * (120 + 4), 170 + 4 * (160 + 4), 3)
    assert (tmp_path / "scene0.png").exists()
    with pytest.raises(SystemExit):  # --explain-queries needs a number
        demo_cli.main(["--input", paths[0], "--explain-queries"])
    assert demo_cli.main(["--input", *paths, "--output", str(tmp_path), "--explain", *opts(checkpoint)]) == 2
    assert "--explain explains one image" in messages(caplog)


def test_explanation_follows_the_decoder(checkpoint, images):
    paths, _ = images
    demo = predictor_for(["--input", paths[0], *opts(checkpoint)])
    image = read_image(paths[0], format="BGR")
    with DecoderRecorder(demo.model) as rec:
        demo.predict(image)
    exp = explain(rec, demo.metadata.stuff_classes, top_n=4)
    assert exp.columns == ["init", "layer 1 (1/32)", "layer 2 (1/16)", "layer 3 (1/8)"]
    assert exp.levels == [None, 0, 1, 2]
    # 90 x 120 -> shortest edge 64: 64 x 85, padded to a multiple of 32
    assert exp.input_size == (64, 85) and exp.padded_size == (64, 96)

    # the recorded predictions are the decoder's own (same input, run directly)
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    rgb = torch.as_tensor(np.ascontiguousarray(demo.aug.get_transform(rgb).apply_image(rgb).transpose(2, 0, 1)))
    with torch.no_grad():
        images_t = demo.model.preprocess_image([{"image": rgb}])
        out = demo.model.sem_seg_head(demo.model.backbone(images_t.tensor))
    steps = out["aux_outputs"] + [out]
    assert len(rec.predictions) == len(steps) == 4
    for (logits, masks), step in zip(rec.predictions, steps):
        torch.testing.assert_close(logits, step["pred_logits"][0])
        torch.testing.assert_close(masks, step["pred_masks"][0])

    probs = torch.softmax(rec.predictions[-1][0], -1)[:, :-1]
    scores = [q.score for q in exp.queries]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(float(probs.max()))
    for q in exp.queries:
        assert q.class_name == demo.metadata.stuff_classes[int(probs[q.query].argmax())]
        assert q.attention[0] is None and len(q.mask_logits) == 4
        for j in range(1, 4):
            size = rec.level_sizes[(j - 1) % 3]
            blocked = attention_mask_from_masks(rec.predictions[j - 1][1][None], size, num_heads=1)[0, q.query]
            assert torch.equal(q.attention[j], ~blocked.view(size))
            assert torch.equal(q.mask_logits[j], rec.predictions[j][1][q.query])
    assert not demo.model.sem_seg_head.predictor._forward_hooks  # hooks removed after the context


# ----------------------------------------------------------------------------------------------------------
# video
# ----------------------------------------------------------------------------------------------------------
def write_video(path, frames=6, size=(80, 64), fps=5.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        rgb = generate_image(np.random.default_rng(100 + i), size[1], size[0])["image"]
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()


def read_video(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


@pytest.mark.parametrize("side_by_side", [False, True])
def test_video_keeps_frame_rate_and_size(checkpoint, tmp_path, caplog, side_by_side):
    src = tmp_path / "clip.avi"
    write_video(src)
    out = tmp_path / "out"
    flags = ["--side-by-side"] if side_by_side else []
    assert demo_cli.main(["--video-input", str(src), "--output", str(out), *flags, *opts(checkpoint)]) == 0
    frames, fps = read_video(out / "clip.mp4")
    assert len(frames) == 6 and fps == pytest.approx(5.0)
    assert frames[0].shape == (64, 160 if side_by_side else 80, 3)
    assert "Done: 6 frames" in messages(caplog)


def test_video_frames_are_read_one_at_a_time(checkpoint):
    demo = predictor_for(["--video-input", "x.avi", *opts(checkpoint)])

    class CountingCapture:
        reads = 0

        def read(self):
            self.reads += 1
            return True, np.full((48, 64, 3), 40 * self.reads % 255, np.uint8)

    capture = CountingCapture()  # endless: holding all frames would never return
    frames = demo.run_on_video(capture)
    first, second = next(frames), next(frames)
    assert capture.reads == 2 and first.shape == second.shape == (48, 64, 3)


def test_unreadable_video_and_missing_webcam_are_reported(checkpoint, tmp_path, caplog):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    assert demo_cli.main(["--video-input", str(junk), "--output", str(tmp_path), *opts(checkpoint)]) == 2
    assert f"cannot open video {junk}" in messages(caplog)
    missing = tmp_path / "missing.mp4"
    assert demo_cli.main(["--video-input", str(missing), "--output", str(tmp_path), *opts(checkpoint)]) == 2
    assert f"video not found: {missing}" in messages(caplog)
    assert demo_cli.main(["--webcam", "97", *opts(checkpoint)]) == 2
    assert "no webcam: cannot open camera 97" in messages(caplog)
    assert [p.name for p in tmp_path.iterdir()] == ["junk.mp4"]  # nothing written


# ----------------------------------------------------------------------------------------------------------
# bad inputs and checkpoints
# ----------------------------------------------------------------------------------------------------------
def test_unreadable_image_is_reported_and_the_others_processed(checkpoint, images, tmp_path, caplog):
    paths, bad = images
    out = tmp_path / "out"
    rc = demo_cli.main(["--input", paths[0], bad, paths[1], str(tmp_path / "nothing-*.png"),
                        "--output", str(out), *opts(checkpoint)])
    assert rc == 1
    assert sorted(os.listdir(out)) == ["scene0.png", "scene1.png"]
    text = messages(caplog)
    assert f"cannot read image {bad}" in text
    assert "2 of 4 inputs could not be processed" in text and "nothing-*.png (no file matches" in text


def test_missing_checkpoint_names_the_file_and_how_to_train(tmp_path, caplog):
    rc = demo_cli.main(["--input", "x.png", "--opts", "OUTPUT_DIR", str(tmp_path / "run")])
    assert rc == 2
    text = messages(caplog)
    assert f"checkpoint not found: {tmp_path / 'run' / 'model_final.pth'}" in text
    assert f"python train_net.py --config-file {CONFIG}" in text


def test_mismatched_checkpoint_lists_the_problems(checkpoint, images, tmp_path, caplog):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    state["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(8, 32)  # 7 classes + no object
    state["sem_seg_head.predictor.class_embed.bias"] = torch.zeros(8)
    del state["sem_seg_head.predictor.query_embed.weight"]
    state["sem_seg_head.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "other.pth"
    torch.save({"model": state}, bad)
    out = tmp_path / "out"
    rc = demo_cli.main(["--input", images[0][0], "--output", str(out), *opts(str(bad))])
    assert rc == 2 and not out.exists()  # nothing ran with partly random weights
    text = messages(caplog)
    assert f"checkpoint {bad} does not match the model" in text
    assert "sem_seg_head.predictor.class_embed.weight: (8, 32) vs (12, 32)" in text
    assert "sem_seg_head.predictor.query_embed.weight" in text
    assert "sem_seg_head.extra.weight" in text
