"""The video model: 3D positional encoding, video decoder, VideoMaskFormer training and inference."""
import math

import pytest
import torch
from detectron2.modeling import build_model

from mask2former.modeling.transformer_decoder.mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder
from mask2former.modeling.transformer_decoder.position_encoding import PositionEmbeddingSine, PositionEmbeddingSine3D
from mask2former.modeling.transformer_decoder.video_mask2former_transformer_decoder import (
    VideoMultiScaleMaskedTransformerDecoder,
)

from video_testing import box_masks, clip_instances, tiny_video_cfg


# ------------------------------------------------------------------------------------------- position encoding
def test_position_encoding_3d_is_2d_plus_time_encoding():
    """Written out from the definition: per frame, the normalised 2D (y, x) sine encoding plus a sine encoding
    of the normalised frame position t / T * 2 pi with 2 * num_pos_feats channels (dim_t on that width)."""
    n, t, h, w, f = 2, 3, 4, 5, 8
    x = torch.zeros(n, t, 1, h, w)
    pos = PositionEmbeddingSine3D(f, normalize=True)(x)
    assert pos.shape == (n, t, 2 * f, h, w)
    pos2d = PositionEmbeddingSine(f, normalize=True)(torch.zeros(1, 1, h, w))[0]  # (2f, h, w)
    for k in range(t):
        z = (k + 1) / (t + 1e-6) * 2 * math.pi
        dim = torch.arange(2 * f, dtype=torch.float32)
        dim_t = 10000 ** (2 * torch.div(dim, 2, rounding_mode="floor") / (2 * f))
        ang = z / dim_t
        time_enc = torch.where(dim % 2 == 0, ang.sin(), ang.cos())
        expected = pos2d + time_enc[:, None, None]
        torch.testing.assert_close(pos[0, k], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(pos[1, k], expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------- decoder
class ZeroPE(torch.nn.Module):
    def forward(self, x, mask=None):
        return torch.zeros_like(x)


def _decoders(num_frames=2):
    cfg = tiny_video_cfg("INPUT.SAMPLING_FRAME_NUM", num_frames)
    torch.manual_seed(0)
    video = VideoMultiScaleMaskedTransformerDecoder(cfg, 32, True).eval()
    image = MultiScaleMaskedTransformerDecoder(cfg, 32, True).eval()
    image.load_state_dict(video.state_dict())
    return video, image


def _features(num, generator):
    levels = [torch.randn(num, 32, s, s + 1, generator=generator) for s in (2, 4, 8)]
    return levels, torch.randn(num, 32, 16, 18, generator=generator)


def test_video_decoder_has_the_image_decoder_parameters():
    video, image = _decoders()
    shapes = [(k, v.shape) for k, v in video.state_dict().items()]
    assert shapes == [(k, v.shape) for k, v in image.state_dict().items()]
    assert isinstance(video.pe_layer, PositionEmbeddingSine3D)


def test_video_decoder_without_time_matches_the_image_decoder():
    """With the positional encodings removed, a one-frame clip is an image, and a clip of two identical frames
    attends to duplicated keys, which leaves attention unchanged: both must give the image decoder's output."""
    video, image = _decoders()
    video.pe_layer, image.pe_layer = ZeroPE(), ZeroPE()
    g = torch.Generator().manual_seed(1)
    x, mf = _features(1, g)
    with torch.no_grad():
        ref = image(x, mf)
        one = video(x, mf)
        two = video([torch.cat([f, f]) for f in x], torch.cat([mf, mf]))
    assert one["pred_masks"].shape == (1, 6, 1, 16, 18)
    assert two["pred_masks"].shape == (1, 6, 2, 16, 18)
    for out in (one, two):
        torch.testing.assert_close(out["pred_logits"], ref["pred_logits"], atol=1e-5, rtol=0)
        for t in range(out["pred_masks"].shape[2]):
            torch.testing.assert_close(out["pred_masks"][:, :, t], ref["pred_masks"], atol=1e-4, rtol=0)
        for a, b in zip(out["aux_outputs"], ref["aux_outputs"]):
            torch.testing.assert_close(a["pred_logits"], b["pred_logits"], atol=1e-5, rtol=0)


def test_video_decoder_is_equivariant_to_frame_order_without_time_encoding():
    """Keys are ordered frame by frame in the memory and in the attention masks: reversing the frames must
    reverse the masks' time axis and keep the class logits (only the time encoding knows the order)."""
    video, _ = _decoders(num_frames=3)
    video.pe_layer = ZeroPE()
    g = torch.Generator().manual_seed(2)
    x, mf = _features(3, g)
    rev = [f.flip(0) for f in x]
    with torch.no_grad():
        a, b = video(x, mf), video(rev, mf.flip(0))
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["pred_masks"], b["pred_masks"].flip(2), atol=1e-4, rtol=0)


def test_video_decoder_uses_the_time_encoding_and_attends_across_frames():
    video, _ = _decoders(num_frames=2)
    g = torch.Generator().manual_seed(3)
    x, mf = _features(2, g)
    with torch.no_grad():
        out = video(x, mf)
        # changing frame 1 changes the masks predicted for frame 0: queries see both frames
        x2 = [f.clone() for f in x]
        x2[0][1] += 1.0
        out2 = video(x2, mf)
    assert not torch.allclose(out["pred_masks"][:, :, 0], out2["pred_masks"][:, :, 0])


def test_video_decoder_training_batches_of_clips():
    video, _ = _decoders(num_frames=2)
    video.train()
    g = torch.Generator().manual_seed(4)
    x, mf = _features(4, g)  # 2 clips x 2 frames
    out = video(x, mf)
    assert out["pred_logits"].shape == (2, 6, 4) and out["pred_masks"].shape == (2, 6, 2, 16, 18)
    x, mf = _features(3, g)
    with pytest.raises(ValueError, match="INPUT.SAMPLING_FRAME_NUM"):
        video(x, mf)


# ------------------------------------------------------------------------------------------- meta-architecture
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_video_cfg())


def _video(num_frames=2, h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for _ in range(num_frames)]
    return frames


def test_build_from_official_video_config(model):
    assert type(model).__name__ == "VideoMaskFormer"
    assert type(model.sem_seg_head.predictor).__name__ == "VideoMultiScaleMaskedTransformerDecoder"
    assert model.num_frames == 2 and model.test_topk_per_video == 10 and model.clip_length == 0


def test_training_losses_and_gradients(model):
    masks = box_masks(2, 64, 96, [[(5, 5, 30, 30), (8, 6, 33, 31)], [None, (50, 20, 90, 60)]])
    video = {"image": _video(), "instances": clip_instances(masks, [0, 2], [7, 9]), "height": 64, "width": 96}
    model.train()
    losses = model([video, video])
    model.eval()
    assert set(losses) >= {"loss_ce", "loss_mask", "loss_dice", "loss_ce_2"} and len(losses) == 12
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.sem_seg_head.predictor.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    model.zero_grad()


def test_training_clip_without_instances(model):
    empty = clip_instances(torch.zeros(0, 2, 32, 32, dtype=torch.bool), [], [])
    model.train()
    try:
        losses = model([{"image": _video(2, 32, 32), "instances": empty}])
    finally:
        model.eval()
    assert losses["loss_ce"] > 0 and losses["loss_mask"] == 0 and losses["loss_dice"] == 0


def test_prepare_targets_keeps_instances_seen_in_any_frame_with_their_class(model):
    masks = box_masks(3, 32, 32, [[(0, 0, 8, 8), None, None], [None, None, (4, 4, 9, 9)], [None, None, None]])
    insts = clip_instances(masks, [1, 2, 0], [5, 6, 7])
    insts[0].gt_classes = torch.tensor([1, -1, -1])  # absent instances may carry -1 (the official dummy class)
    images = model.preprocess_frames(_video(3, 32, 32))
    (target,) = model.prepare_targets([{"instances": insts}], images)
    assert target["labels"].tolist() == [1, 2]
    assert target["ids"].tolist() == [[5, -1, -1], [-1, -1, 6]]
    assert target["masks"].shape == (2, 3, 32, 32)
    assert target["masks"][0, 0, :8, :8].all() and not target["masks"][0, 1:].any()


def test_inference_output_format_and_topk(model):
    frames = _video(3, 64, 96)
    with torch.no_grad():
        (out,) = model([{"image": frames, "height": 128, "width": 200}])
    assert out["image_size"] == (128, 200)
    assert len(out["pred_scores"]) == len(out["pred_labels"]) == len(out["pred_masks"]) == 10
    assert out["pred_scores"] == sorted(out["pred_scores"], reverse=True)
    assert all(0 <= c < 3 for c in out["pred_labels"])
    assert all(m.shape == (3, 128, 200) and m.dtype == torch.bool for m in out["pred_masks"])


def test_inference_matches_the_official_postprocessing(model):
    """Top-k (query, class) pairs by class probability; masks upsampled to the padded input, cropped, resized
    to the output size, thresholded at 0 (computed here for all queries, as the official code does)."""
    import torch.nn.functional as F

    frames = _video(2, 50, 70, seed=5)
    with torch.no_grad():
        outputs, images = model.predict(frames)
        (out,) = model([{"image": frames, "height": 100, "width": 140}])
    logits, masks = outputs["pred_logits"][0], outputs["pred_masks"][0]
    probs = F.softmax(logits, -1)[:, :-1]
    scores, idx = probs.flatten().topk(10)
    full = F.interpolate(masks, size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
    full = F.interpolate(full[:, :, :50, :70], size=(100, 140), mode="bilinear", align_corners=False) > 0
    assert out["pred_scores"] == pytest.approx(scores.tolist())
    assert out["pred_labels"] == (idx % 3).tolist()
    for m, q in zip(out["pred_masks"], (idx // 3).tolist()):
        assert torch.equal(m, full[q])


def test_topk_per_video_key():
    torch.manual_seed(0)
    m = build_model(tiny_video_cfg("MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO", 4)).eval()
    with torch.no_grad():
        (out,) = m([{"image": _video(2, 32, 32)}])
    assert len(out["pred_scores"]) == 4 and out["image_size"] == (32, 32)
    with pytest.raises(ValueError, match="DETECTIONS_PER_VIDEO"):
        build_model(tiny_video_cfg("MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO", 0))


def test_bad_inputs_get_clear_errors(model):
    frames = _video(2, 32, 32) + [torch.zeros(3, 40, 32, dtype=torch.uint8)]
    with pytest.raises(ValueError, match=r"frame 2 \(c.jpg\) is 32x40.*frame 0 is 32x32"):
        with torch.no_grad():
            model([{"image": frames, "file_names": ["a.jpg", "b.jpg", "c.jpg"]}])
    with pytest.raises(ValueError, match="non-empty list"):
        model([{"image": []}])
    with pytest.raises(ValueError, match="one video per batch"):
        model([{"image": _video(1)}, {"image": _video(1)}])
    model.train()
    try:
        with pytest.raises(ValueError, match="has 3 frames, expected INPUT.SAMPLING_FRAME_NUM = 2"):
            model([{"image": _video(3), "instances": []}])
    finally:
        model.eval()


def test_aux_sem_seg_loss_on_every_frame():
    """MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT works on clips: one per-pixel class map per frame."""
    torch.manual_seed(0)
    aux = build_model(tiny_video_cfg("MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT", 2.0))
    masks = box_masks(2, 64, 96, [[(5, 5, 30, 30), None], [None, (50, 20, 90, 60)]])
    video = {"image": _video(), "instances": clip_instances(masks, [0, 2], [7, 9]), "height": 64, "width": 96}
    aux.train()
    outputs = aux.sem_seg_head(aux.backbone(torch.zeros(4, 3, 64, 96)))  # 2 clips x 2 frames
    assert outputs["aux_sem_seg"].shape == (4, 3, 16, 24)
    losses = aux([video, video])
    assert len(losses) == 13 and losses["loss_aux_sem_seg"] > 0
    sum(losses.values()).backward()
    assert aux.sem_seg_head.aux_sem_seg_predictor.weight.grad.abs().sum() > 0
