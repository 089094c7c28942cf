"""Tests of the Mask2Former training losses: point sampling, Hungarian matching and SetCriterion."""
import math
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

from mask2former.modeling.criterion import (
    SetCriterion,
    _matched_target_masks,
    build_criterion,
    build_loss_weight_dict,
    dice_loss,
    semantic_targets,
    sigmoid_ce_loss,
)
from mask2former.modeling.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost
from mask2former.modeling.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from mask2former.modeling.sigmoid_ops import sigmoid_bce_terms


class FixedMatcher(torch.nn.Module):
    """Returns a given assignment, consuming no random numbers."""

    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return [(torch.as_tensor(i), torch.as_tensor(j)) for i, j in self.indices]


def _criterion(num_classes=4, matcher=None, eos_coef=0.1, num_points=64, aux_layers=0):
    matcher = matcher or HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=num_points)
    return SetCriterion(
        num_classes,
        matcher,
        build_loss_weight_dict(2.0, 5.0, 5.0, aux_layers + 1),
        eos_coef=eos_coef,
        losses=["labels", "masks"],
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def _blob_masks(n, h, w, generator):
    """n distinct binary masks: random rectangles, (n, h, w) bool."""
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for k in range(n):
        y0, x0 = torch.randint(0, h // 2, (2,), generator=generator).tolist()
        y1 = y0 + int(torch.randint(h // 4, h // 2, (1,), generator=generator))
        x1 = x0 + int(torch.randint(w // 4, w // 2, (1,), generator=generator))
        masks[k, y0:y1, x0:x1] = True
    return masks


def _confident_predictions(labels, masks, perm, num_queries, num_classes, scale=12.0):
    """Predictions where query perm[j] confidently predicts target j (class and mask); others predict nothing.

    ``masks`` is (N, ...) for images or videos; returns (Q, K + 1) logits and (Q, ...) mask logits.
    """
    logits = torch.full((num_queries, num_classes + 1), -scale)
    logits[:, num_classes] = scale
    pred_masks = torch.full((num_queries,) + tuple(masks.shape[1:]), -scale)
    for j, q in enumerate(perm):
        logits[q] = -scale
        logits[q, labels[j]] = scale
        pred_masks[q] = scale * (2 * masks[j].float() - 1)
    return logits, pred_masks


# ---------------------------------------------------------------------------------------------- point sampling


def test_point_sample_ramp_exact():
    h, w = 4, 8
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ramp = (10 * ys + xs)[None, None]  # value at pixel (row i, column j) = 10 i + j
    # align_corners=False: normalised x maps to pixel coordinate x * W - 0.5 (pixel centres at (j + 0.5) / W),
    # and bilinear interpolation of a linear ramp is exact.
    pts = torch.tensor([[[0.5 / 8, 0.5 / 4], [3.5 / 8, 2.5 / 4], [0.5, 0.5], [0.3125, 0.625], [7.5 / 8, 3.5 / 4]]])
    expected = torch.tensor([0.0, 23.0, 18.5, 22.0, 37.0])  # 10 * (y * 4 - 0.5) + (x * 8 - 0.5)
    out = point_sample(ramp, pts)
    assert out.shape == (1, 1, 5)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-5)
    # align_corners=True is passed through: x maps to x * (W - 1).
    out = point_sample(ramp, torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.5, 1 / 3]]]), align_corners=True)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 37.0, 13.5]), rtol=0, atol=1e-5)

    # Several channels and a (N, Hg, Wg, 2) grid keep their layout.
    two = torch.cat([ramp, -ramp], dim=1)
    grid = pts.reshape(1, 5, 1, 2).expand(1, 5, 3, 2)
    out = point_sample(two, grid)
    assert out.shape == (1, 2, 5, 3)
    torch.testing.assert_close(out[0, 1, :, 2], -expected, rtol=0, atol=1e-5)


def test_point_sample_rejects_bad_shapes():
    with pytest.raises(ValueError, match="point_coords"):
        point_sample(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="items"):
        point_sample(torch.zeros(2, 1, 4, 4), torch.zeros(1, 5, 2))


def test_calculate_uncertainty():
    logits = torch.tensor([[[-3.0, 0.0, 2.0]]])
    torch.testing.assert_close(calculate_uncertainty(logits), torch.tensor([[[-3.0, 0.0, -2.0]]]))
    with pytest.raises(ValueError):
        calculate_uncertainty(torch.zeros(2, 3, 4))


def test_importance_sampling_picks_uncertain_points():
    torch.manual_seed(0)
    n, size = 3, 32
    logits = torch.full((n, 1, size, size), 10.0)
    logits[:, :, :16, :16] = 0.0  # only the top-left quadrant is uncertain
    num_points, ratio, beta = 200, 3.0, 0.5
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, num_points, ratio, beta)
    assert coords.shape == (n, num_points, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    num_uncertain = int(beta * num_points)
    # A sampled logit is exactly 0 iff its pixel coordinate u = x * 32 - 0.5 is <= 15 in both axes.
    limit = 15.5 / size
    chosen = coords[:, :num_uncertain]
    assert (chosen <= limit).all(), "the importance-sampled points must all lie in the uncertain quadrant"
    sampled = point_sample(logits, chosen)
    assert (sampled == 0).all()
    # The remaining points are uniform: they are not confined to the quadrant (1/4 of the area).
    rest = coords[:, num_uncertain:]
    in_quadrant = ((rest <= limit).all(-1)).float().mean()
    assert in_quadrant < 0.5

    # beta = 1: all points from the uncertain region (8 * 50 candidates, about 100 of them in the quadrant).
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 50, 8.0, 1.0)
    assert coords.shape == (n, 50, 2) and (coords <= limit).all()
    with pytest.raises(ValueError, match="oversample_ratio"):
        get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 10, 0.5, 0.5)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 10, 3.0, 1.5)


# ---------------------------------------------------------------------------------------------- hand-computed costs


def _bce(x, t):
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _dice(xs, ts):
    ps = [1 / (1 + math.exp(-x)) for x in xs]
    return 1 - (2 * sum(p * t for p, t in zip(ps, ts)) + 1) / (sum(ps) + sum(ts) + 1)


def test_hand_computed_costs_and_losses():
    # Two queries and two targets at three points.
    pred = [[2.0, -1.0, 0.5], [-3.0, 0.0, 1.5]]
    tgt = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.25]]
    bce = batch_sigmoid_ce_cost(torch.tensor(pred), torch.tensor(tgt))
    dice = batch_dice_cost(torch.tensor(pred), torch.tensor(tgt))
    expected_bce = [[sum(_bce(x, t) for x, t in zip(p, g)) / 3 for g in tgt] for p in pred]
    expected_dice = [[_dice(p, g) for g in tgt] for p in pred]
    torch.testing.assert_close(bce, torch.tensor(expected_bce), rtol=0, atol=1e-6)
    torch.testing.assert_close(dice, torch.tensor(expected_dice), rtol=0, atol=1e-6)
    # Spot check one entry fully by hand: query 0 vs target 0.
    s = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0)), 1 / (1 + math.exp(-0.5))]
    assert float(dice[0, 0]) == pytest.approx(1 - (2 * (s[0] + s[2]) + 1) / (sum(s) + 2 + 1), abs=1e-6)
    assert float(bce[0, 0]) == pytest.approx(
        (-math.log(s[0]) - math.log(1 - s[1]) - math.log(s[2])) / 3, abs=1e-6
    )

    # The losses of matched pairs (q0 <-> t0, q1 <-> t1), normalised by num_masks.
    num_masks = 4.0
    loss_mask = sigmoid_ce_loss(torch.tensor(pred), torch.tensor(tgt), num_masks)
    loss_dice = dice_loss(torch.tensor(pred), torch.tensor(tgt), num_masks)
    assert float(loss_mask) == pytest.approx((expected_bce[0][0] + expected_bce[1][1]) / num_masks, abs=1e-6)
    assert float(loss_dice) == pytest.approx((expected_dice[0][0] + expected_dice[1][1]) / num_masks, abs=1e-6)


def test_bce_cost_exact_on_large_logits():
    # Trained mask logits reach |x| > 87, where exp(-|x|) is subnormal: the fast BCE terms must still be
    # softplus(-x) and softplus(x) to float32 precision, tails like 1e-30 included, at and around both cut-offs.
    x = torch.cat([
        torch.linspace(-300, 300, 6001),
        torch.tensor([-104.0, -103.0, -88.0, -87.5, -87.0, -86.9, -16.7, -16.6, -1e-6, 0.0, 1e-6, 16.6, 16.7,
                      86.9, 87.0, 87.5, 88.0, 103.0, 104.0]),
    ])
    pos, neg = sigmoid_bce_terms(x)
    x64 = x.double()
    # Two units in the last place, plus the designed bound of the clamp: tails below exp(-87) = 1.65e-38 (what
    # float32 can only hold as a subnormal number) come out as exp(-87).
    torch.testing.assert_close(pos.double(), F.softplus(-x64), rtol=2.4e-7, atol=1.7e-38)
    torch.testing.assert_close(neg.double(), F.softplus(x64), rtol=2.4e-7, atol=1.7e-38)
    targets = (torch.rand(3, x.numel(), generator=torch.Generator().manual_seed(0)) > 0.5).double()
    expected = torch.stack([(t * F.softplus(-x64) + (1 - t) * F.softplus(x64)).mean() for t in targets])
    torch.testing.assert_close(batch_sigmoid_ce_cost(x[None], targets.float()).double(), expected[None],
                               rtol=1e-6, atol=0)


def test_matcher_cost_class_term():
    matcher = HungarianMatcher(cost_class=1, cost_mask=0, cost_dice=0)
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    target = {"labels": torch.tensor([1, 0]), "masks": torch.zeros(2, 4, 4)}
    cost = matcher.cost_matrix(logits, torch.zeros(2, 4, 4), target)
    probs = logits.softmax(-1)
    torch.testing.assert_close(cost, -probs[:, [1, 0]])


# ---------------------------------------------------------------------------------------------- matcher


def test_matcher_recovers_permutation_images():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    num_classes, num_queries = 5, 8
    targets, preds_l, preds_m, perms = [], [], [], []
    for n in (4, 3):
        labels = torch.randint(0, num_classes, (n,), generator=g)
        masks = _blob_masks(n, 32, 32, g)
        perm = torch.randperm(num_queries, generator=g)[:n].tolist()
        logits, pred_masks = _confident_predictions(labels, masks[:, ::2, ::2], perm, num_queries, num_classes)
        targets.append({"labels": labels, "masks": masks})  # targets at twice the prediction resolution
        preds_l.append(logits)
        preds_m.append(pred_masks)
        perms.append(perm)
    matcher = HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=300)
    indices = matcher({"pred_logits": torch.stack(preds_l), "pred_masks": torch.stack(preds_m)}, targets)
    for (rows, cols), perm in zip(indices, perms):
        assert rows.dtype == torch.int64 and cols.dtype == torch.int64
        assert len(rows) == len(perm)
        assert {(int(r), int(c)) for r, c in zip(rows, cols)} == {(q, j) for j, q in enumerate(perm)}


def test_matcher_recovers_permutation_video_from_all_frames():
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    num_classes, num_queries, t = 3, 6, 3
    # Two instances of the same class with the same mask in frame 0: only frames 1 and 2 tell them apart.
    masks = torch.zeros(2, t, 16, 16, dtype=torch.bool)
    masks[:, 0, 2:10, 2:10] = True
    masks[0, 1:, 0:6, 0:8] = True
    masks[1, 1:, 8:16, 6:16] = True
    labels = torch.tensor([1, 1])
    perm = [4, 1]
    logits, pred_masks = _confident_predictions(labels, masks, perm, num_queries, num_classes)
    matcher = HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=200)
    outputs = {"pred_logits": logits[None], "pred_masks": pred_masks[None]}  # (1, Q, T, H, W)
    (rows, cols), = matcher(outputs, [{"labels": labels, "masks": masks}])
    assert {(int(r), int(c)) for r, c in zip(rows, cols)} == {(4, 0), (1, 1)}

    # The cost treats the clip as one spatio-temporal mask: a perfect prediction of all frames costs less
    # than one that is perfect in frame 0 only.
    swapped = pred_masks.clone()
    swapped[4, 1:], swapped[1, 1:] = pred_masks[1, 1:], pred_masks[4, 1:]
    torch.manual_seed(3)
    cost = matcher.cost_matrix(logits, pred_masks, {"labels": labels, "masks": masks})
    torch.manual_seed(3)
    cost_swapped = matcher.cost_matrix(logits, swapped, {"labels": labels, "masks": masks})
    assert cost[4, 0] < cost_swapped[4, 0] - 1.0

    with pytest.raises(ValueError, match="same T"):
        matcher(outputs, [{"labels": labels, "masks": masks[:, :2]}])


def test_matcher_zero_targets():
    matcher = HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=50)
    outputs = {"pred_logits": torch.randn(2, 5, 4), "pred_masks": torch.randn(2, 5, 8, 8)}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)},
        {"labels": torch.tensor([2]), "masks": torch.ones(1, 16, 16, dtype=torch.bool)},
    ]
    (r0, c0), (r1, c1) = matcher(outputs, targets)
    assert r0.numel() == 0 and c0.numel() == 0 and r0.dtype == torch.int64
    assert r1.numel() == 1 and int(c1) == 0


def test_matcher_costs_fp32_under_autocast():
    g = torch.Generator().manual_seed(4)
    matcher = HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=400)
    logits = torch.randn(6, 5, generator=g)
    masks = torch.randn(6, 12, 12, generator=g)
    target = {"labels": torch.tensor([0, 3, 1]), "masks": _blob_masks(3, 24, 24, g)}
    torch.manual_seed(5)
    reference = matcher.cost_matrix(logits, masks, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        cost = matcher.cost_matrix(logits, masks, target)
        torch.manual_seed(5)
        cost_bf16_inputs = matcher.cost_matrix(logits.bfloat16(), masks.bfloat16(), target)
    assert cost.dtype == torch.float32 and cost_bf16_inputs.dtype == torch.float32
    torch.testing.assert_close(cost, reference, rtol=0, atol=1e-6)
    # bf16 inputs (as produced under AMP) are only rounded once, at the input: the costs stay close.
    torch.testing.assert_close(cost_bf16_inputs, reference, rtol=0, atol=5e-2)


def test_matcher_validation_and_repr():
    with pytest.raises(ValueError, match="num_points"):
        HungarianMatcher(cost_class=1, cost_mask=1, cost_dice=1, num_points=0)
    with pytest.raises(ValueError, match="all be 0"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0, num_points=10)
    text = repr(HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=10))
    assert text.splitlines() == [
        "Matcher HungarianMatcher",
        "    cost_class: 2",
        "    cost_mask: 5",
        "    cost_dice: 5",
        "    num_points: 10",
    ]


# ---------------------------------------------------------------------------------------------- criterion


def _random_batch(num_queries=6, num_classes=4, aux=0, t=None, requires_grad=False):
    g = torch.Generator().manual_seed(6)
    frames = () if t is None else (t,)

    def out():
        return {
            "pred_logits": torch.randn(2, num_queries, num_classes + 1, generator=g).requires_grad_(requires_grad),
            "pred_masks": torch.randn((2, num_queries) + frames + (8, 8), generator=g).requires_grad_(requires_grad),
        }

    outputs = out()
    if aux:
        outputs["aux_outputs"] = [out() for _ in range(aux)]
    targets = [
        {"labels": torch.tensor([1, 3]), "masks": torch.rand((2,) + frames + (32, 32), generator=g) > 0.5},
        {"labels": torch.tensor([0]), "masks": torch.rand((1,) + frames + (32, 32), generator=g) > 0.5},
    ]
    return outputs, targets


def test_weight_dict_and_loss_keys_with_aux_layers():
    weight_dict = build_loss_weight_dict(2.0, 5.0, 5.0, dec_layers=3)
    names = ["loss_ce", "loss_mask", "loss_dice"]
    assert set(weight_dict) == set(names + [f"{n}_{i}" for n in names for i in (0, 1)])
    assert weight_dict["loss_ce_1"] == 2.0 and weight_dict["loss_mask_0"] == 5.0 and weight_dict["loss_dice"] == 5.0
    assert set(build_loss_weight_dict(2.0, 5.0, 5.0, dec_layers=3, deep_supervision=False)) == set(names)

    criterion = _criterion(aux_layers=2)
    assert criterion.weight_dict == weight_dict
    outputs, targets = _random_batch(aux=2)
    losses = criterion(outputs, targets)
    assert set(losses) == set(weight_dict)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_empty_weight_buffer_and_repr():
    criterion = _criterion(num_classes=4, eos_coef=0.1)
    assert "empty_weight" in criterion.state_dict()
    torch.testing.assert_close(criterion.empty_weight, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.1]))
    lines = repr(criterion).splitlines()
    assert lines[0] == "Criterion SetCriterion"
    assert "    matcher: Matcher HungarianMatcher" in lines
    assert "        cost_mask: 5" in lines
    assert "    eos_coef: 0.1" in lines and "    num_points: 64" in lines


def test_loss_ce_weights_no_object_by_eos_coef():
    num_classes, eos = 4, 0.1
    indices = [([3, 0], [1, 0]), ([5], [0])]
    criterion = _criterion(num_classes=num_classes, matcher=FixedMatcher(indices), eos_coef=eos)
    outputs, targets = _random_batch(num_classes=num_classes)
    loss = criterion(outputs, targets)["loss_ce"]

    target_classes = torch.full((2, 6), num_classes)
    target_classes[0, 3], target_classes[0, 0], target_classes[1, 5] = 3, 1, 0
    weight = torch.tensor([1.0] * num_classes + [eos])
    expected = F.cross_entropy(outputs["pred_logits"].transpose(1, 2), target_classes, weight=weight)
    torch.testing.assert_close(loss, expected)
    # Explicitly: the weighted mean of -log p(target), where no-object queries count eos_coef each.
    logp = outputs["pred_logits"].log_softmax(-1)
    nll = -logp.gather(-1, target_classes[..., None])[..., 0]
    w = weight[target_classes]
    torch.testing.assert_close(loss, (w * nll).sum() / w.sum())
    unweighted = F.cross_entropy(outputs["pred_logits"].transpose(1, 2), target_classes)
    assert not torch.allclose(loss, unweighted)


def test_gradients_flow_to_logits_and_masks():
    criterion = _criterion(aux_layers=1)
    outputs, targets = _random_batch(aux=1, requires_grad=True)
    losses = criterion(outputs, targets)
    sum(criterion.weight_dict[k] * v for k, v in losses.items()).backward()
    for out in (outputs, outputs["aux_outputs"][0]):
        assert out["pred_logits"].grad is not None and out["pred_logits"].grad.abs().sum() > 0
        assert out["pred_masks"].grad is not None
        per_query = out["pred_masks"].grad.abs().flatten(2).sum(-1)  # (B, Q)
        assert (per_query > 0).sum() == 3  # exactly the three matched queries get mask gradients


def test_perfect_predictions_have_lower_mask_losses():
    g = torch.Generator().manual_seed(7)
    masks = [_blob_masks(2, 32, 32, g), _blob_masks(1, 32, 32, g)]
    targets = [{"labels": torch.tensor([1, 2]), "masks": masks[0]}, {"labels": torch.tensor([3]), "masks": masks[1]}]
    indices = [([0, 1], [0, 1]), ([0], [0])]
    criterion = _criterion(matcher=FixedMatcher(indices), num_points=256)
    perfect = torch.full((2, 4, 32, 32), -20.0)
    perfect[0, :2] = 20 * (2 * masks[0].float() - 1)
    perfect[1, :1] = 20 * (2 * masks[1].float() - 1)
    logits = torch.zeros(2, 4, 5)
    torch.manual_seed(8)
    good = criterion({"pred_logits": logits, "pred_masks": perfect}, targets)
    torch.manual_seed(8)
    bad = criterion({"pred_logits": logits, "pred_masks": torch.randn(2, 4, 32, 32, generator=g)}, targets)
    # Importance sampling puts most points on mask boundaries, where the bilinearly sampled targets are soft
    # (about 0.5) and even a perfect prediction pays their entropy: the BCE of perfect masks stays well above 0.
    assert good["loss_mask"] < 0.5 * bad["loss_mask"]
    assert good["loss_dice"] < 0.2 * bad["loss_dice"]
    assert bad["loss_mask"] > 0.5 and bad["loss_dice"] > 0.3


def test_zero_targets_in_batch():
    criterion = _criterion()
    outputs, _ = _random_batch(requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}
    losses = criterion(outputs, [empty, empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    # Every query is "no object": loss_ce is the plain mean of -log p(no object).
    expected = -outputs["pred_logits"].log_softmax(-1)[..., -1].mean()
    torch.testing.assert_close(losses["loss_ce"], expected)
    sum(losses.values()).backward()  # still part of the graph (needed by DDP)
    assert outputs["pred_masks"].grad is not None


def test_video_rows_per_frame_normalised_by_instances():
    """(N, T, H, W) masks give N * T rows but are divided by N, i.e. T times the per-frame image loss."""
    t, num_queries = 3, 4
    outputs, targets = _random_batch(num_queries=num_queries, t=t)
    indices = [([2, 0], [0, 1]), ([3], [0])]
    video = _criterion(matcher=FixedMatcher(indices))
    torch.manual_seed(9)
    video_losses = video(outputs, targets)

    # The same frames as an image batch: every frame of every instance is one image instance.
    image_outputs = {
        "pred_logits": outputs["pred_logits"].repeat_interleave(t, dim=1),
        "pred_masks": outputs["pred_masks"].flatten(1, 2),
    }
    image_targets = [
        {"labels": tg["labels"].repeat_interleave(t), "masks": tg["masks"].flatten(0, 1)} for tg in targets
    ]
    image_indices = [
        ([q * t + f for q in src for f in range(t)], [j * t + f for j in tgt for f in range(t)]) for src, tgt in indices
    ]
    image = _criterion(matcher=FixedMatcher(image_indices))
    torch.manual_seed(9)
    image_losses = image(image_outputs, image_targets)
    for name in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(video_losses[name], t * image_losses[name])

    # End to end with the Hungarian matcher.
    losses = _criterion(aux_layers=1)(dict(outputs, aux_outputs=[dict(outputs)]), targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_losses_fp32_under_autocast():
    criterion = _criterion(matcher=FixedMatcher([([0, 1], [0, 1]), ([2], [0])]))
    outputs, targets = _random_batch()
    torch.manual_seed(10)
    reference = criterion(outputs, targets)
    half = {k: v.bfloat16() for k, v in outputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(10)
        same = criterion(outputs, targets)
        torch.manual_seed(10)
        from_bf16 = criterion(half, targets)
    for name in reference:
        assert same[name].dtype == torch.float32 and from_bf16[name].dtype == torch.float32
        torch.testing.assert_close(same[name], reference[name], rtol=0, atol=1e-6)


def test_num_masks_normalisation_and_distributed():
    outputs, targets = _random_batch()
    indices = [([0, 1], [0, 1]), ([2], [0])]
    criterion = _criterion(matcher=FixedMatcher(indices))
    torch.manual_seed(11)
    losses = criterion(outputs, targets)
    # num_masks = 3 target instances: the loss is the per-mask sum / 3.
    src = torch.stack([outputs["pred_masks"][0, 0], outputs["pred_masks"][0, 1], outputs["pred_masks"][1, 2]])
    tgt = torch.cat([targets[0]["masks"], targets[1]["masks"]]).float()
    torch.manual_seed(11)
    coords = get_uncertain_point_coords_with_randomness(src[:, None], calculate_uncertainty, 64, 3.0, 0.75)
    logits = point_sample(src[:, None], coords).squeeze(1)
    labels = point_sample(tgt[:, None], coords).squeeze(1)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
    torch.testing.assert_close(losses["loss_mask"], bce.sum() / 3)

    # The same with a (single-process) distributed group: the all-reduced count divided by the world size.
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method="file://" + os.path.join(tmp, "store"), rank=0, world_size=1)
        try:
            torch.manual_seed(11)
            dist_losses = criterion(outputs, targets)
        finally:
            dist.destroy_process_group()
    torch.testing.assert_close(dist_losses["loss_mask"], losses["loss_mask"])


def test_targets_of_different_sizes_are_zero_padded():
    a = torch.ones(1, 4, 6, dtype=torch.bool)
    b = torch.ones(2, 5, 3, dtype=torch.bool)
    padded = _matched_target_masks(
        [{"masks": a}, {"masks": b}], [(torch.tensor([0]), torch.tensor([0])), (torch.tensor([0]), torch.tensor([1]))],
        torch.device("cpu"),
    )
    assert padded.shape == (2, 5, 6) and padded.dtype == torch.float32
    assert padded[0, :4].all() and not padded[0, 4].any()
    assert padded[1, :, :3].all() and not padded[1, :, 3:].any()


def test_criterion_validation():
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(3, FixedMatcher([]), {}, 0.1, ["boxes"], 10, 3.0, 0.75)
    criterion = _criterion(num_classes=4)
    assert not criterion.check_label_values  # the mappers check ids; no host sync per step by default
    criterion.check_label_values = True
    outputs, targets = _random_batch()
    targets[1]["labels"] = torch.tensor([4])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        criterion(outputs, targets)
    targets[1] = {"labels": torch.tensor([0])}
    with pytest.raises(KeyError, match="masks"):
        criterion(outputs, targets)


def _default_cfg(num_classes):
    """Our config defaults (add_maskformer2_config) with NUM_CLASSES set."""
    from detectron2.config import get_cfg

    from mask2former import add_maskformer2_config

    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    return cfg


def test_build_criterion_from_config():
    cfg = _default_cfg(133)
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0  # as in the official Mask2Former configs
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0
    criterion = build_criterion(cfg)
    assert criterion.num_classes == 133 and criterion.empty_weight.shape == (134,)
    assert float(criterion.empty_weight[-1]) == pytest.approx(0.1)
    assert (criterion.matcher.cost_class, criterion.matcher.cost_mask, criterion.matcher.cost_dice) == (2.0, 5.0, 5.0)
    assert criterion.matcher.num_points == criterion.num_points == 112 * 112
    assert (criterion.oversample_ratio, criterion.importance_sample_ratio) == (3.0, 0.75)
    assert len(criterion.weight_dict) == 3 * 10 and criterion.weight_dict["loss_mask_8"] == 5.0
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = False
    assert set(build_criterion(cfg).weight_dict) == {"loss_ce", "loss_mask", "loss_dice"}


# ------------------------------------------------------------------------------ auxiliary per-pixel loss


def test_semantic_targets_first_mask_wins_and_void_is_ignored():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True  # rows 0-1: label 5
    masks[1, 1:3] = True  # rows 1-2: label 2, but row 1 belongs to the first mask
    masks[2, 3, :2] = True  # row 3, left half: label 7; right half of row 3 is void
    small = {"labels": torch.tensor([1]), "masks": torch.ones(1, 2, 3, dtype=torch.bool)}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 4, 4, dtype=torch.bool)}
    maps = semantic_targets([{"labels": torch.tensor([5, 2, 7]), "masks": masks}, small, empty])
    expected = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5], [2, 2, 2, 2], [7, 7, -1, -1]])
    assert maps.shape == (3, 4, 4) and maps.dtype == torch.int64
    assert torch.equal(maps[0], expected)
    assert torch.equal(maps[1], torch.tensor([[1, 1, 1, -1], [1, 1, 1, -1], [-1] * 4, [-1] * 4]))  # padded
    assert (maps[2] == -1).all()
    video = semantic_targets([{"labels": torch.tensor([3]), "masks": torch.ones(1, 2, 4, 4, dtype=torch.bool)}])
    assert video.shape == (2, 4, 4) and (video == 3).all()  # one map per frame


def test_aux_sem_seg_loss_is_cross_entropy_at_cell_centres():
    criterion = SetCriterion(4, FixedMatcher([([0], [0]), ([1], [0])]), {}, 0.1, ["labels", "masks", "sem_seg"],
                             16, 3.0, 0.75)
    outputs, targets = _random_batch()
    g = torch.Generator().manual_seed(1)
    outputs["aux_sem_seg"] = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)  # 1/4 of the 32 px targets
    losses = criterion(outputs, targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_aux_sem_seg"}
    full = semantic_targets(targets)
    centres = full[:, 2::4, 2::4]  # the target pixel at the centre of each 4 x 4 cell
    expected = F.cross_entropy(outputs["aux_sem_seg"], centres, ignore_index=-1)
    torch.testing.assert_close(losses["loss_aux_sem_seg"], expected)
    losses["loss_aux_sem_seg"].backward()
    assert outputs["aux_sem_seg"].grad.abs().sum() > 0

    # Nothing labelled: zero loss, gradient still defined.
    for t in targets:
        t["masks"] = torch.zeros_like(t["masks"])
    outputs["aux_sem_seg"].grad = None
    loss = criterion(outputs, targets)["loss_aux_sem_seg"]
    assert loss.item() == 0.0
    loss.backward()
    assert outputs["aux_sem_seg"].grad is not None

    del outputs["aux_sem_seg"]
    with pytest.raises(KeyError, match="AUX_SEM_SEG_WEIGHT"):
        criterion(outputs, targets)


def test_aux_sem_seg_from_config():
    cfg = _default_cfg(5)
    assert "sem_seg" not in build_criterion(cfg).losses  # off by default, as the official model
    cfg.MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT = 2.0
    criterion = build_criterion(cfg)
    assert "sem_seg" in criterion.losses and criterion.weight_dict["loss_aux_sem_seg"] == 2.0
    cfg.MODEL.MASK_FORMER.AUX_SEM_SEG_WEIGHT = -1.0
    with pytest.raises(ValueError, match="AUX_SEM_SEG_WEIGHT"):
        build_criterion(cfg)
