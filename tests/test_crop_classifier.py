"""MODEL.MASK_FORMER.CROP_CLASSIFIER: off it adds nothing; on it trains on ground-truth boxes and, at inference,
refines only how each query's thing probability is shared among the thing classes."""
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from mask2former.modeling.heads.crop_classifier import CropClassifier, square_boxes
from test_model import _batch, tiny_cfg

THINGS = "crop_classifier_test_things"  # metadata only: classes 1 and 3 of the tiny config's 5 are things
MetadataCatalog.get(THINGS).set(thing_dataset_id_to_contiguous_id={11: 1, 13: 3})
ON = {"MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT": 2.0, "DATASETS.TRAIN": f"('{THINGS}',)"}


def _model(**overrides):
    torch.manual_seed(0)
    return build_model(tiny_cfg(**overrides))


def test_off_by_default_adds_nothing():
    model = _model()
    assert model.crop_classifier is None
    assert not any("crop_classifier" in k for k in model.state_dict())
    assert "loss_crop_cls" not in model.train()(_batch())


def test_needs_thing_classes():
    with pytest.raises(ValueError, match=r"CROP_CLASSIFIER\.WEIGHT > 0 needs thing classes"):
        _model(**{"MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT": 1.0})
    with pytest.raises(ValueError, match=r"CROP_CLASSIFIER\.WEIGHT must be >= 0"):
        _model(**{"MODEL.MASK_FORMER.CROP_CLASSIFIER.WEIGHT": -1.0})


def test_video_model_refuses_it():
    cfg = tiny_cfg(**{"MODEL.META_ARCHITECTURE": "VideoMaskFormer",
                      "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "VideoMultiScaleMaskedTransformerDecoder", **ON})
    with pytest.raises(ValueError, match=r"CROP_CLASSIFIER\.WEIGHT > 0 is for image models"):
        build_model(cfg)


def test_square_boxes_keep_centre_and_aspect():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # 20 wide, 40 high, centre (20, 40)
    assert torch.allclose(square_boxes(boxes, 0.5), torch.tensor([[-10.0, 10.0, 50.0, 70.0]]))


def test_training_adds_a_weighted_loss_on_the_things_only():
    model = _model(**ON).train()
    losses = model(_batch())
    assert losses["loss_crop_cls"].item() > 0
    losses["loss_crop_cls"].backward()
    net = model.crop_classifier.net
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # The batch's targets are classes 1 and 3, both things; with no things the loss is an exact zero.
    batch = _batch()
    for x in batch:
        x["instances"].gt_classes = torch.tensor([0, 2])
    assert model(batch)["loss_crop_cls"].item() == 0.0


def test_learns_to_tell_two_outlines_apart():
    """Squares (class 1) and discs (class 3) of random sizes and places, same colour: after a few dozen steps
    the classifier's loss on the ground-truth boxes falls well below chance (ln 2)."""
    torch.manual_seed(0)
    head = CropClassifier([1, 3], 5, size=16, widths=(8, 16, 16))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")

    def batch():
        images, targets = torch.zeros(4, 3, 64, 64), []
        for i in range(4):
            masks, labels = [], []
            for j, label in enumerate((1, 3)):
                r = float(torch.randint(5, 10, ()))
                cx, cy = 14.0 + 34 * j + float(torch.randint(-3, 4, ())), float(torch.randint(14, 50, ()))
                if label == 1:
                    m = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
                else:
                    m = (xx - cx) ** 2 + (yy - cy) ** 2 <= (r * 1.2) ** 2
                masks.append(m)
                labels.append(label)
                images[i, :, m] = 1.0
            targets.append({"labels": torch.tensor(labels), "masks": torch.stack(masks)})
        return images, targets

    first = head.loss(*batch()).item()
    for _ in range(60):
        loss = head.loss(*batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        last = sum(head.loss(*batch()).item() for _ in range(4)) / 4
    assert first > 0.5 and last < 0.35, (first, last)


def test_refine_keeps_no_object_stuff_and_the_thing_total():
    torch.manual_seed(0)
    head = CropClassifier([1, 3], 5, size=16).eval()
    logits = torch.randn(2, 6, 6)  # (N, Q, K + 1)
    masks = torch.randn(2, 6, 16, 16)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = head.refine(images, logits, masks)
    p, q = logits.softmax(-1), out.softmax(-1)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 6), atol=1e-5)  # log-probabilities
    for c in (0, 2, 4, 5):  # stuff classes and "no object"
        torch.testing.assert_close(q[..., c], p[..., c], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(q[..., [1, 3]].sum(-1), p[..., [1, 3]].sum(-1), atol=1e-6, rtol=1e-5)
    # A crop classifier that knows nothing (uniform output) changes nothing.
    torch.nn.init.zeros_(head.net[-1].weight)
    torch.nn.init.zeros_(head.net[-1].bias)
    with torch.no_grad():
        torch.testing.assert_close(head.refine(images, logits, masks).softmax(-1), p, atol=1e-6, rtol=1e-5)


def test_inference_uses_it_and_the_model_runs_end_to_end():
    model = _model(**ON).eval()
    batch = [{"image": x["image"]} for x in _batch()]
    with torch.no_grad():
        refined = model.predict_queries(batch)
        model.crop_classifier, head = None, model.crop_classifier
        plain = model.predict_queries(batch)
        model.crop_classifier = head
        results = model(batch)
    for r, p in zip(refined, plain):
        assert torch.equal(r["pred_masks"], p["pred_masks"])
        assert not torch.allclose(r["pred_logits"].softmax(-1), p["pred_logits"].softmax(-1))
    assert len(results) == 2 and results[0]["sem_seg"].shape[0] == 5 and len(results[0]["instances"]) > 0
