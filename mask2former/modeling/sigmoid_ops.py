"""The sigmoid binary cross-entropy terms of mask logits for the matching cost, fast on large logits.

``sigmoid_bce_terms`` gives what ``F.binary_cross_entropy_with_logits`` gives against all-ones and all-zeros
targets, ``softplus(-x)`` and ``softplus(x)``, to float32 precision (against zeros more closely: PyTorch's
formula cancels there, e.g. 1.717e-5 instead of 1.670e-5 at x = -11).

Why not PyTorch's: it computes ``log1p(exp(-|x|))``, and x86 vector code takes a slow path, about 10x slower per
element, wherever an intermediate result is a subnormal number (below 1.2e-38): ``exp`` for ``|x|`` above 87,
``log1p`` (whose polynomial takes powers of its argument) for some ranges of ``|x|`` above about 30. The mask
logits of a trained model get there, which made the matching cost of a training step slower late in training than
at the start (docs/PERFORMANCE.md, "Training step"). Here the argument of ``exp`` is clamped at ``-EXP_ARG_MIN`` (a tail below exp(-87) = 1.65e-38
comes out as 1.65e-38, invisible in any float32 sum of such terms) and ``log1p`` only sees arguments where it
differs from the identity (below).
"""
import torch

__all__ = ["sigmoid_bce_terms"]

EXP_ARG_MIN = 87.0  # exp(-87) = 1.6e-38, the last power of e above float32's smallest normal number
LOG1P_IDENTITY_MAX = 2.0**-24  # below it, log1p(y) rounds to y in float32


def _log1p_exp_neg_abs(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(-|x|))``, the smooth part shared by ``softplus(x)`` and ``softplus(-x)``.

    ``log1p(y)`` is ``y`` in float32 for ``y < 2**-24`` (the next term, ``y**2 / 2``, is below half a unit in
    the last place), and ``log1p`` is slow for such ``y`` too (its ``y**2`` lands among the subnormal numbers),
    so it only sees larger ``y``.
    """
    y = torch.exp(-x.abs().clamp(max=EXP_ARG_MIN))
    return torch.where(y < LOG1P_IDENTITY_MAX, y, torch.log1p(y.clamp(min=LOG1P_IDENTITY_MAX)))


def sigmoid_bce_terms(logits: torch.Tensor):
    """The two BCE terms of every logit ``x``: ``-log sigmoid(x)`` (target 1) and ``-log(1 - sigmoid(x))``
    (target 0), i.e. ``softplus(-x)`` and ``softplus(x)``. Not meant for autograd (the matching cost).

    Args:
        logits: any shape, float.

    Returns:
        (pos, neg), each of the shape of ``logits``.
    """
    tail = _log1p_exp_neg_abs(logits)
    return (-logits).clamp(min=0) + tail, logits.clamp(min=0) + tail
