"""Optimizer parameter groups, full-model gradient clipping and the poly LR schedule."""
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.engine import hooks
from detectron2.layers import FrozenBatchNorm2d

from mask2former import add_maskformer2_config
from mask2former.engine.solver import WarmupPolyLR, build_lr_scheduler, build_optimizer


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight + bias: decay
        self.bn = nn.BatchNorm2d(4)  # 2: norm
        self.frozen_bn = FrozenBatchNorm2d(4)  # buffers only
        self.relative_position_bias_table = nn.Parameter(torch.zeros(5, 2))  # embed
        self.ln = nn.LayerNorm(4)  # 2: norm


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.proj = nn.Linear(4, 4)  # 2: decay
        self.gn = nn.GroupNorm(2, 4)  # 2: norm
        self.query_embed = nn.Embedding(3, 4)  # embed
        self.level_embed = nn.Parameter(torch.zeros(3, 4))  # embed
        self.decoder_norm = nn.LayerNorm(4)  # 2: norm
        self.proj_tied = nn.Linear(4, 4)
        self.proj_tied.weight = self.proj.weight  # shared: must appear once
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)  # not trainable: in no group


def _cfg(**solver):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.01
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.02
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def _hyperparams_by_name(optimizer):
    out = {}
    for group in optimizer.param_groups:
        for name in group["param_names"]:
            assert name not in out, f"{name} is in two param groups"
            out[name] = (group["lr"], group["weight_decay"])
    return out


def test_param_groups_rules_and_counts():
    model = _Model()
    optimizer = build_optimizer(_cfg(), model)
    assert type(optimizer) is torch.optim.AdamW

    all_params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}), "a parameter is in two groups"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}  # parameters() deduplicates
    assert {id(p) for p in all_params} == trainable
    assert len(all_params) == 16

    hp = _hyperparams_by_name(optimizer)
    bb, base = 1e-4, 1e-3
    assert hp["backbone.conv.weight"] == pytest.approx((bb, 0.05))
    assert hp["backbone.conv.bias"] == pytest.approx((bb, 0.05))
    assert hp["backbone.bn.weight"] == pytest.approx((bb, 0.01))
    assert hp["backbone.ln.bias"] == pytest.approx((bb, 0.01))
    assert hp["backbone.relative_position_bias_table"] == pytest.approx((bb, 0.02))
    assert hp["proj.weight"] == pytest.approx((base, 0.05))
    assert hp["gn.weight"] == pytest.approx((base, 0.01))
    assert hp["decoder_norm.bias"] == pytest.approx((base, 0.01))
    assert hp["query_embed.weight"] == pytest.approx((base, 0.02))
    assert hp["level_embed"] == pytest.approx((base, 0.02))
    assert "proj_tied.weight" not in hp and "frozen.weight" not in hp

    counts = {}
    for lr, wd in hp.values():
        counts[(lr == pytest.approx(bb), wd)] = counts.get((lr == pytest.approx(bb), wd), 0) + 1
    assert counts == {
        (True, 0.05): 2, (True, 0.01): 4, (True, 0.02): 1,  # backbone: decay, norm, embed
        (False, 0.05): 3, (False, 0.01): 4, (False, 0.02): 2,  # proj w+b, proj_tied bias; norms; embeds
    }
    assert len(optimizer.param_groups) == 6  # one group per distinct (lr, weight decay)


def test_adamw_is_fused_and_steps_like_the_reference_adamw():
    """The fused AdamW kernel gives the per-parameter AdamW update, with the same groups and clipping."""
    torch.manual_seed(0)
    model = _Model()
    reference = _Model()
    reference.load_state_dict(model.state_dict())
    cfg = _cfg(CLIP_GRADIENTS=get_cfg().SOLVER.CLIP_GRADIENTS.clone())
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.05
    optimizer = build_optimizer(cfg, model)
    assert all(g["fused"] for g in optimizer.param_groups)
    ref_optimizer = build_optimizer(cfg, reference)
    for g in ref_optimizer.param_groups:
        g["fused"] = False
    x = torch.randn(5, 3, 3, 3)
    for _ in range(3):
        for m, opt in ((model, optimizer), (reference, ref_optimizer)):
            opt.zero_grad()
            y = m.decoder_norm(m.proj(m.gn(m.backbone.conv(x).flatten(1))) + m.query_embed.weight[0] + m.level_embed[1])
            (y ** 2).sum().backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_sgd_and_unknown_optimizer():
    optimizer = build_optimizer(_cfg(OPTIMIZER="SGD", MOMENTUM=0.8), _Model())
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 for g in optimizer.param_groups)
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), _Model())


class _TwoParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2))
        self.b = nn.Parameter(torch.zeros(2))


def _clipped_step(clip_type):
    cfg = _cfg(OPTIMIZER="SGD", MOMENTUM=0.0, BASE_LR=1.0, WEIGHT_DECAY=0.0, BACKBONE_MULTIPLIER=1.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    model = _TwoParams()
    optimizer = build_optimizer(cfg, model)
    model.a.grad = torch.tensor([3.0, 0.0])
    model.b.grad = torch.tensor([0.0, 4.0])  # global norm 5, each param's norm <= 4
    optimizer.step()
    return model, optimizer


def test_full_model_clipping_clips_global_norm():
    model, _ = _clipped_step("full_model")
    global_norm = torch.cat([model.a.grad, model.b.grad]).norm()
    assert global_norm.item() == pytest.approx(1.0, rel=1e-5)
    # gradients scaled by 1/5 together; SGD with lr 1 moves by minus the clipped gradient
    torch.testing.assert_close(model.a.detach(), torch.tensor([-0.6, 0.0]))
    torch.testing.assert_close(model.b.detach(), torch.tensor([0.0, -0.8]))


def test_per_parameter_norm_clipping_differs():
    model, _ = _clipped_step("norm")  # detectron2's clipping: each parameter to norm 1
    torch.testing.assert_close(model.a.detach(), torch.tensor([-1.0, 0.0]))
    torch.testing.assert_close(model.b.detach(), torch.tensor([0.0, -1.0]))
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        _clipped_step("global")


def _poly_optimizer(base_lr=0.1):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)


def _lrs(scheduler, optimizer, iters):
    """lr used at each iteration 0..iters-1 (the LRScheduler hook steps after every iteration)."""
    out = []
    for _ in range(iters):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_poly_lr_matches_formula():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=100, WARMUP_ITERS=10, WARMUP_FACTOR=0.01,
               WARMUP_METHOD="linear", POLY_LR_POWER=0.9, POLY_LR_CONSTANT_ENDING=0.0)
    optimizer = _poly_optimizer()
    scheduler = build_lr_scheduler(cfg, optimizer)
    assert isinstance(scheduler, WarmupPolyLR)
    lrs = _lrs(scheduler, optimizer, 100)
    for it in (10, 20, 50, 99):
        assert lrs[it] == pytest.approx(0.1 * (1 - it / 100) ** 0.9, rel=1e-9)
    assert lrs[0] == pytest.approx(0.1 * 0.01, rel=1e-9)
    alpha = 5 / 10
    assert lrs[5] == pytest.approx(0.1 * (0.01 * (1 - alpha) + alpha) * (1 - 5 / 100) ** 0.9, rel=1e-9)
    assert all(b < a for a, b in zip(lrs[10:], lrs[11:])), "lr must decrease after warmup"


def test_poly_lr_constant_ending_and_past_max_iter():
    optimizer = _poly_optimizer()
    scheduler = WarmupPolyLR(optimizer, max_iters=100, warmup_iters=0, power=0.9, constant_ending=0.3)
    lrs = _lrs(scheduler, optimizer, 110)
    assert lrs[50] == pytest.approx(0.1 * 0.5 ** 0.9, rel=1e-9)  # 0.536 > 0.3
    assert lrs[95] == pytest.approx(0.1 * 0.3, rel=1e-9)  # 0.05 ** 0.9 = 0.067 < 0.3
    assert lrs[105] == pytest.approx(0.1 * 0.3, rel=1e-9)

    optimizer = _poly_optimizer()
    scheduler = WarmupPolyLR(optimizer, max_iters=10, warmup_iters=0, power=0.9)
    assert _lrs(scheduler, optimizer, 13)[10:] == [0.0, 0.0, 0.0]  # never negative nor NaN


def test_poly_lr_state_saved_by_detectron2_hook():
    optimizer = _poly_optimizer()
    scheduler = WarmupPolyLR(optimizer, max_iters=100, warmup_iters=10, power=0.9)
    _lrs(scheduler, optimizer, 30)
    state = hooks.LRScheduler(optimizer, scheduler).state_dict()
    assert state["last_epoch"] == 30

    optimizer2 = _poly_optimizer()
    scheduler2 = WarmupPolyLR(optimizer2, max_iters=100, warmup_iters=10, power=0.9)
    hooks.LRScheduler(optimizer2, scheduler2).load_state_dict(state)
    assert scheduler2.last_epoch == 30
    scheduler.step()
    scheduler2.step()
    expected = 0.1 * (1 - 31 / 100) ** 0.9
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)


def test_detectron2_schedulers_still_available():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupMultiStepLR", MAX_ITER=20, STEPS=(10,), GAMMA=0.1, WARMUP_ITERS=0)
    optimizer = _poly_optimizer()
    lrs = _lrs(build_lr_scheduler(cfg, optimizer), optimizer, 20)
    assert lrs[9] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="WARMUP_METHOD"):
        WarmupPolyLR(_poly_optimizer(), max_iters=10, warmup_method="cubic")
