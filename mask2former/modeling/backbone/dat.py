"""DAT backbone (Xia et al., "Vision Transformer with Deformable Attention", CVPR 2022; version 1), as a
detectron2 ``Backbone`` registered under the name ``"D2DAT"``.

A patch stem (``patch_proj``) and four stages (``stages.{i}``) separated by 2x2 strided convolutions
(``down_projs.{i}``). Each stage is a list of pre-norm blocks, ``STAGE_SPEC[i][j]`` naming the attention of
block ``j``:

- ``"L"``: self-attention inside non-overlapping windows (:class:`LocalAttention`);
- ``"S"``: the same with windows cyclically shifted by ``ceil(window / 2)`` (:class:`ShiftWindowAttention`);
- ``"D"``: deformable attention (:class:`DAttentionBaseline`): an offset network on the queries moves a grid
  of reference points, keys and values are sampled there bilinearly, and a relative position bias is
  interpolated at the query-to-sample displacements.

The official DAT-T/S/B use "L S" in stages 1-2 and "L D" pairs in stages 3-4. Stage ``i`` gives ``res{i+2}``
(stride ``4 * 2**i``, ``DIMS[i]`` channels), normalised by its own LayerNorm ``norm{i}`` as dense-prediction
backbones do; :meth:`D2DAT.forward_stages` returns the maps before those norms.

Parameter and buffer names equal those of the official ``models/dat.py`` (classifier ``cls_norm`` /
``cls_head`` aside), so official ImageNet checkpoints load unchanged. The official code runs only at its
construction size; here any input size works. What a re-implementer must know (shift size, reference points
and ``align_corners``, offset scaling, bias displacement, other input sizes) is in
``mask2former/modeling/backbone/README.md``.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.autograd.function import once_differentiable

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .swin import DropPath, relative_position_index, window_partition, window_reverse

__all__ = ["D2DAT", "DAttentionBaseline", "LocalAttention", "ShiftWindowAttention", "TransformerStage"]

# Added to attention logits between tokens that must not see each other (as the official code does).
_MASKED_LOGIT = -100.0

# Kernel of the offset network's depthwise convolution, per stage (official values).
_OFFSET_KERNELS = (9, 7, 5, 3)


def _sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of sampling positions and bilinear sampling: at least float32. Under bf16 autocast, bf16
    positions would be off by up to W/256 key cells."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class LayerNormProxy(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (official name: the norm is ``.norm``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ChannelsLastWeightGradConv2d(torch.autograd.Function):
    """``F.conv2d`` (dilation 1) whose weight and bias gradients are computed on channels-last copies of the
    input and the output gradient; the output and the input gradient are PyTorch's own, bit for bit."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, groups, None if bias is None else [bias.shape[0]])
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, groups, bias_sizes = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias_sizes is not None

        def conv_backward(g, inp, mask):
            return torch.ops.aten.convolution_backward(
                g, inp, weight, bias_sizes, stride, padding, (1, 1), False, (0, 0), groups, mask)

        grad_x = conv_backward(grad, x, [True, False, False])[0] if need_x else None
        grad_w = grad_b = None
        if need_w or need_b:
            cl = torch.channels_last
            _, grad_w, grad_b = conv_backward(
                grad.contiguous(memory_format=cl), x.contiguous(memory_format=cl), [False, need_w, need_b])
        return grad_x, grad_w, grad_b, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise ``nn.Conv2d`` (the offset network's first layer) with a fast weight gradient on the CPU.

    oneDNN's depthwise weight-gradient kernel for NCHW tensors takes only 3x3 kernels: with the offset
    networks' 5x5 (stage 3) and larger kernels it falls back to a per-group GEMM path, the largest single cost
    of a DAT-T training step at detection sizes (docs/PERFORMANCE.md), while on channels-last tensors it runs
    a direct kernel. So on the CPU, whenever gradients are needed, the weight and bias gradients are computed
    from channels-last copies; the output and the input gradient are unchanged bit for bit, the weight and
    bias gradients differ by rounding only. Same parameters and state-dict names as ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H', W')."""
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        plain = self.padding_mode != "zeros" or self.dilation != (1, 1) or isinstance(self.padding, str)
        if x.device.type != "cpu" or not needs_grad or plain:
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):
            # Cast as autocast would for conv2d (floating inputs other than float64), then run without it, so
            # that the saved tensors are the ones the convolution sees.
            dtype = torch.get_autocast_dtype("cpu")
            x, weight, bias = (t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64
                               else t for t in (x, weight, bias))
        with torch.autocast("cpu", enabled=False):
            return _ChannelsLastWeightGradConv2d.apply(x, weight, bias, self.stride, self.padding, self.groups)


class TransformerMLP(nn.Module):
    """Per-pixel MLP ``linear1 -> GELU -> dropout -> linear2 -> dropout`` on a (B, C, H, W) map."""

    def __init__(self, channels: int, expansion: int, drop: float):
        super().__init__()
        self.chunk = nn.Sequential()
        self.chunk.add_module("linear1", nn.Linear(channels, channels * expansion))
        self.chunk.add_module("act", nn.GELU())
        self.chunk.add_module("drop1", nn.Dropout(drop))
        self.chunk.add_module("linear2", nn.Linear(channels * expansion, channels))
        self.chunk.add_module("drop2", nn.Dropout(drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.chunk(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TransformerMLPWithConv(nn.Module):
    """MLP with a 3x3 depthwise convolution after the expansion (``USE_DWC_MLPS``; unused by DAT-T/S/B)."""

    def __init__(self, channels: int, expansion: int, drop: float):
        super().__init__()
        hidden = channels * expansion
        self.linear1 = nn.Conv2d(channels, hidden, 1, 1, 0)
        self.drop1 = nn.Dropout(drop)
        self.act = nn.GELU()
        self.linear2 = nn.Conv2d(hidden, channels, 1, 1, 0)
        self.drop2 = nn.Dropout(drop)
        self.dwc = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.drop2(self.linear2(self.drop1(self.act(self.dwc(self.linear1(x))))))


def window_attention_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device
) -> Optional[torch.Tensor]:
    """Additive mask for window attention on a (height, width) map zero-padded on the bottom/right to window
    multiples and cyclically shifted by ``-shift_size``.

    Tokens see only tokens of their own region: the 3 x 3 regions that the shift brings together (as in the
    official ``ShiftWindowAttention.attn_mask``), and the padding as a region of its own, so that real tokens
    never attend to padding.

    Returns:
        (nW, window_size**2, window_size**2) float tensor, 0 within a region and -100 across, for the padded
        map's nW windows; None when nothing needs masking (no shift, no padding).
    """
    ws = window_size
    Hp, Wp = -(-height // ws) * ws, -(-width // ws) * ws
    if shift_size == 0 and (Hp, Wp) == (height, width):
        return None

    def region_ids(size: int, padded: int) -> torch.Tensor:
        ids = torch.zeros(padded, dtype=torch.long, device=device)
        if shift_size > 0:
            ids[padded - ws : padded - shift_size] = 1
            ids[padded - shift_size :] = 2
        is_pad = torch.arange(padded, device=device) >= size
        return ids, torch.roll(is_pad, -shift_size)  # the map is rolled by -shift_size before partitioning

    ids_h, pad_h = region_ids(height, Hp)
    ids_w, pad_w = region_ids(width, Wp)
    regions = ids_h[:, None] * 3 + ids_w[None, :]
    regions = regions.masked_fill(pad_h[:, None] | pad_w[None, :], 9)  # (Hp, Wp)
    regions = window_partition(regions[None, :, :, None], ws).squeeze(-1)  # (nW, ws*ws)
    return (regions[:, :, None] != regions[:, None, :]).float() * _MASKED_LOGIT


class LocalAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, with Swin's relative position bias."""

    shift_size = 0

    def __init__(self, dim: int, heads: int, window_size: int, attn_drop: float, proj_drop: float):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"{heads} heads must divide the {dim} channels")
        self.heads = heads
        self.window_size = window_size
        self.scale = (dim // heads) ** -0.5
        self.proj_qkv = nn.Linear(dim, 3 * dim)
        self.proj_out = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_drop = nn.Dropout(attn_drop)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.01)
        self.register_buffer("relative_position_index", relative_position_index(window_size))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, None, None]:
        """
        Args:
            x: (B, C, H, W) normalised map of any size; it is zero-padded to window multiples internally.

        Returns:
            (B, C, H, W), and None, None (no sampling positions) as the official blocks return.
        """
        B, C, H, W = x.shape
        ws, shift = self.window_size, self.shift_size
        y = F.pad(x, (0, (-W) % ws, 0, (-H) % ws)).permute(0, 2, 3, 1)  # (B, Hp, Wp, C)
        Hp, Wp = y.shape[1:3]
        if shift > 0:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(y, ws)  # (B * nW, N, C)
        BW, N, _ = windows.shape

        q, k, v = torch.chunk(self.proj_qkv(windows), 3, dim=2)
        q = q * self.scale
        q, k, v = (t.reshape(BW, N, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (BW, heads, N, c)
        attn = q @ k.transpose(-2, -1)  # (BW, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        mask = window_attention_mask(H, W, ws, shift, x.device)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(BW // nW, nW, self.heads, N, N) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(BW, self.heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=3))
        out = (attn @ v).transpose(1, 2).reshape(BW, N, C)
        out = self.proj_drop(self.proj_out(out))

        y = window_reverse(out, ws, Hp, Wp)
        if shift > 0:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        return y[:, :H, :W].permute(0, 3, 1, 2), None, None


class ShiftWindowAttention(LocalAttention):
    """:class:`LocalAttention` on windows cyclically shifted by ``shift_size`` (``ceil(window / 2)`` in DAT,
    one more than Swin's ``window // 2`` for odd windows).

    ``attn_mask`` is the official buffer for the construction-size map ``fmap_size``; kept so that official
    checkpoints load with identical keys. The mask actually used is built for each input's size by
    :func:`window_attention_mask` (equal to this buffer at the construction size).
    """

    def __init__(self, dim, heads, window_size, attn_drop, proj_drop, shift_size: int, fmap_size: Tuple[int, int]):
        super().__init__(dim, heads, window_size, attn_drop, proj_drop)
        if not 0 < shift_size < window_size:
            raise ValueError(f"shift size must be in (0, {window_size}), got {shift_size}")
        self.shift_size = shift_size
        mask = window_attention_mask(fmap_size[0], fmap_size[1], window_size, shift_size, torch.device("cpu"))
        self.register_buffer("attn_mask", mask)


class DAttentionBaseline(nn.Module):
    """Deformable multi-head attention (DAT v1): every query attends to the same ``Hk x Wk`` keys/values,
    sampled at learned positions of the map; one set of positions per offset group.

    Args:
        q_size: (H, W) of the stage's map at the construction size; sets the size of ``rpe_table``.
        kv_size: the same for the keys (used by ``FIXED_PES`` only).
        n_heads, n_head_channels: heads and channels per head (C = n_heads * n_head_channels).
        n_groups: offset groups; group ``g`` owns channels ``g*C/n_groups .. (g+1)*C/n_groups - 1`` and heads
            ``g*n_heads/n_groups ..``, and samples at its own positions.
        stride: stride of the offset network; the sampling grid is ``ceil(H / stride) x ceil(W / stride)``.
        offset_range_factor: offsets are ``tanh(raw) * factor / (Hk, Wk)`` in grid_sample coordinates
            (``factor / 2`` key-grid cells); <= 0: unbounded raw offsets (then positions are squashed by tanh
            if < 0).
        use_pe, dwc_pe, fixed_pe: relative position bias: interpolated from a (heads, 2H-1, 2W-1) table
            (default), or a depthwise 3x3 conv on the queries added to the output (dwc_pe), or a full
            (heads, HW, HkWk) table (fixed_pe, construction size only).
        no_off: zero offsets (keys at the reference points).
        stage_idx: stage index 0..3; selects the offset network's kernel (9, 7, 5, 3).
    """

    def __init__(
        self,
        q_size: Tuple[int, int],
        kv_size: Tuple[int, int],
        n_heads: int,
        n_head_channels: int,
        n_groups: int,
        attn_drop: float,
        proj_drop: float,
        stride: int,
        offset_range_factor: float,
        use_pe: bool,
        dwc_pe: bool,
        no_off: bool,
        fixed_pe: bool,
        stage_idx: int,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.n_head_channels = n_head_channels
        self.scale = n_head_channels**-0.5
        self.q_h, self.q_w = q_size
        self.kv_h, self.kv_w = kv_size
        self.nc = n_heads * n_head_channels
        if n_groups < 1 or n_heads % n_groups != 0:
            raise ValueError(f"{n_groups} offset groups must divide the {n_heads} heads")
        self.n_groups = n_groups
        self.n_group_channels = self.nc // n_groups
        self.n_group_heads = n_heads // n_groups
        self.use_pe, self.dwc_pe, self.fixed_pe = use_pe, dwc_pe, fixed_pe
        self.no_off = no_off
        self.offset_range_factor = offset_range_factor
        self.stride = stride

        kk = _OFFSET_KERNELS[stage_idx]
        gc = self.n_group_channels
        self.conv_offset = nn.Sequential(
            DepthwiseConv2d(gc, gc, kk, stride, kk // 2, groups=gc),
            LayerNormProxy(gc),
            nn.GELU(),
            nn.Conv2d(gc, 2, 1, 1, 0, bias=False),
        )
        self.proj_q = nn.Conv2d(self.nc, self.nc, 1, 1, 0)
        self.proj_k = nn.Conv2d(self.nc, self.nc, 1, 1, 0)
        self.proj_v = nn.Conv2d(self.nc, self.nc, 1, 1, 0)
        self.proj_out = nn.Conv2d(self.nc, self.nc, 1, 1, 0)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_drop = nn.Dropout(attn_drop)

        if use_pe and dwc_pe:
            self.rpe_table = nn.Conv2d(self.nc, self.nc, 3, 1, 1, groups=self.nc)
        elif use_pe and fixed_pe:
            self.rpe_table = nn.Parameter(torch.zeros(n_heads, self.q_h * self.q_w, self.kv_h * self.kv_w))
            nn.init.trunc_normal_(self.rpe_table, std=0.01)
        elif use_pe:
            self.rpe_table = nn.Parameter(torch.zeros(n_heads, 2 * self.q_h - 1, 2 * self.q_w - 1))
            nn.init.trunc_normal_(self.rpe_table, std=0.01)
        else:
            self.rpe_table = None

    @staticmethod
    def reference_points(H: int, W: int, batch: int, dtype, device) -> torch.Tensor:
        """(batch, H, W, 2) centres of an H x W grid, (y, x), as ``(i + 0.5) / H * 2 - 1``: the pixel-centre
        convention of ``align_corners=False``, although the official code samples with
        ``align_corners=True`` (kept: the trained weights rely on it)."""
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, H - 0.5, H, dtype=dtype, device=device),
            torch.linspace(0.5, W - 0.5, W, dtype=dtype, device=device),
            indexing="ij",
        )
        ref = torch.stack((ref_y.div(H).mul(2).sub(1), ref_x.div(W).mul(2).sub(1)), dim=-1)
        return ref[None].expand(batch, -1, -1, -1)

    def sampling_positions(self, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Positions where each group samples keys and values.

        Args:
            q: (B, C, H, W) projected queries.

        Returns:
            pos, reference: (B * groups, Hk, Wk, 2) float32 (float64 for float64 queries), (y, x) in
            grid_sample's normalised coordinates of the (H, W) map (-1 .. 1,
            ``align_corners=True``); pos = reference + scaled offset.
        """
        B = q.shape[0]
        q_off = q.reshape(B * self.n_groups, self.n_group_channels, *q.shape[2:])
        dtype = _sampling_dtype(q.dtype)
        offset = self.conv_offset(q_off).to(dtype)  # (B * g, 2, Hk, Wk)
        Hk, Wk = offset.shape[2:]
        if self.offset_range_factor > 0:
            offset_range = torch.tensor([1.0 / Hk, 1.0 / Wk], dtype=dtype, device=q.device).reshape(1, 2, 1, 1)
            offset = offset.tanh().mul(offset_range).mul(self.offset_range_factor)
        offset = offset.permute(0, 2, 3, 1)  # (B * g, Hk, Wk, 2)
        reference = self.reference_points(Hk, Wk, B * self.n_groups, dtype, q.device)
        if self.no_off:
            offset = torch.zeros_like(offset)
        pos = offset + reference
        if self.offset_range_factor < 0:
            pos = pos.tanh()
        return pos, reference

    def _attend(self, x: torch.Tensor):
        """Attention weights (B * heads, HW, Ns) before dropout, values (B * heads, c, Ns), the (B * g, Hk, Wk, 2)
        positions and references, and the dwc_pe residual (or None)."""
        B, C, H, W = x.shape
        q = self.proj_q(x)
        pos, reference = self.sampling_positions(q)
        Hk, Wk = pos.shape[1:3]
        n_sample = Hk * Wk

        x_sampled = F.grid_sample(
            x.reshape(B * self.n_groups, self.n_group_channels, H, W).to(pos.dtype),
            pos[..., (1, 0)],  # (y, x) -> (x, y)
            mode="bilinear",
            align_corners=True,
        ).to(x.dtype)  # (B * g, Cg, Hk, Wk)
        x_sampled = x_sampled.reshape(B, C, 1, n_sample)

        q = q.reshape(B * self.n_heads, self.n_head_channels, H * W)
        k = self.proj_k(x_sampled).reshape(B * self.n_heads, self.n_head_channels, n_sample)
        v = self.proj_v(x_sampled).reshape(B * self.n_heads, self.n_head_channels, n_sample)
        attn = torch.einsum("bcm,bcn->bmn", q, k).mul(self.scale)  # (B * heads, HW, Ns)

        residual_lepe = None
        if self.use_pe and self.dwc_pe:
            residual_lepe = self.rpe_table(q.reshape(B, C, H, W)).reshape(B * self.n_heads, self.n_head_channels, H * W)
        elif self.use_pe and self.fixed_pe:
            if (H * W, n_sample) != tuple(self.rpe_table.shape[1:]):
                raise ValueError(
                    f"MODEL.DAT.FIXED_PES: the bias table is built for a {self.q_h}x{self.q_w} map, got {H}x{W}; "
                    "fixed position biases work only at MODEL.DAT.PRETRAIN_IMG_SIZE"
                )
            attn = attn + self.rpe_table[None].expand(B, -1, -1, -1).reshape(B * self.n_heads, H * W, n_sample)
        elif self.use_pe:
            attn = attn + self.position_bias(pos, H, W).to(attn.dtype)
        return F.softmax(attn, dim=2), v, pos, reference, residual_lepe

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (B, C, H, W) normalised map of any size.

        Returns:
            y: (B, C, H, W) attention output (after ``proj_out``).
            pos, reference: (B, groups, Hk, Wk, 2) float32 (float64) sampling positions and their reference
                points, (y, x) in normalised coordinates (see :meth:`sampling_positions`).
        """
        B, C, H, W = x.shape
        attn, v, pos, reference, residual_lepe = self._attend(x)
        out = torch.einsum("bmn,bcn->bcm", self.attn_drop(attn), v)  # (B * heads, c, HW)
        if residual_lepe is not None:
            out = out + residual_lepe
        y = self.proj_drop(self.proj_out(out.reshape(B, C, H, W)))
        Hk, Wk = pos.shape[1:3]
        return y, pos.reshape(B, self.n_groups, Hk, Wk, 2), reference.reshape(B, self.n_groups, Hk, Wk, 2)

    def attention_weights(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """For visualisation: (B, heads, H * W, Hk * Wk) attention of every query over the samples, and the
        (B, groups, Hk, Wk, 2) sampling positions; head ``h`` samples at the positions of group
        ``h // (heads / groups)``."""
        B, _, H, W = x.shape
        attn, _, pos, _, _ = self._attend(x)
        Hk, Wk = pos.shape[1:3]
        return attn.reshape(B, self.n_heads, H * W, Hk * Wk), pos.reshape(B, self.n_groups, Hk, Wk, 2)

    def position_bias(self, pos: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Relative position bias of every query for every sample.

        The displacement query - sample, both in normalised coordinates, is halved (so that it lies in
        -1 .. 1) and the (heads, 2*q_h - 1, 2*q_w - 1) table is sampled there bilinearly
        (``align_corners=True``). At the construction size a displacement of one cell lands on the next table
        entry, as in the official code; at other sizes the table is stretched over the actual map (the
        displacement is normalised by the actual H, W).

        Args:
            pos: (B * groups, Hk, Wk, 2) sampling positions (float32 or float64).

        Returns:
            (B * heads, H * W, Hk * Wk) bias, of the dtype of ``pos``.
        """
        Bg, Hk, Wk, _ = pos.shape
        B = Bg // self.n_groups
        q_grid = self.reference_points(H, W, Bg, pos.dtype, pos.device)
        # (x, y) order for grid_sample, flipped on the small inputs rather than on the (HW, Ns) displacements
        q_xy, pos_xy = q_grid.flip(-1).reshape(Bg, H * W, 1, 2), pos.flip(-1).reshape(Bg, 1, Hk * Wk, 2)
        displacement = (q_xy - pos_xy).mul(0.5)
        table = self.rpe_table.to(pos.dtype)[None].expand(B, -1, -1, -1)
        bias = F.grid_sample(
            table.reshape(Bg, self.n_group_heads, *self.rpe_table.shape[1:]),
            displacement,
            mode="bilinear",
            align_corners=True,
        )  # (B * g, heads / g, HW, Ns)
        return bias.reshape(B * self.n_heads, H * W, Hk * Wk)


class TransformerStage(nn.Module):
    """One DAT stage: optional 1x1 input projection ``proj``, then ``depths`` pre-norm blocks
    ``x + attn(norm(x))``, ``x + mlp(norm(x))`` with stochastic depth.

    Module lists follow the official layout: ``layer_norms`` (2 per block), ``mlps``, ``attns``.
    """

    def __init__(
        self,
        fmap_size: Tuple[int, int],
        window_size: int,
        dim_in: int,
        dim_embed: int,
        depths: int,
        stage_spec: Sequence[str],
        n_groups: int,
        use_pe: bool,
        heads: int,
        stride: int,
        offset_range_factor: float,
        stage_idx: int,
        dwc_pe: bool,
        no_off: bool,
        fixed_pe: bool,
        attn_drop: float,
        proj_drop: float,
        expansion: int,
        drop: float,
        drop_path_rate: Sequence[float],
        use_dwc_mlp: bool,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.depths = depths
        self.use_checkpoint = use_checkpoint
        hc = dim_embed // heads
        self.proj = nn.Conv2d(dim_in, dim_embed, 1, 1, 0) if dim_in != dim_embed else nn.Identity()
        self.layer_norms = nn.ModuleList(LayerNormProxy(dim_embed) for _ in range(2 * depths))
        mlp = TransformerMLPWithConv if use_dwc_mlp else TransformerMLP
        self.mlps = nn.ModuleList(mlp(dim_embed, expansion, drop) for _ in range(depths))
        self.attns = nn.ModuleList()
        for kind in stage_spec:
            if kind == "L":
                self.attns.append(LocalAttention(dim_embed, heads, window_size, attn_drop, proj_drop))
            elif kind == "S":
                shift = math.ceil(window_size / 2)
                self.attns.append(
                    ShiftWindowAttention(dim_embed, heads, window_size, attn_drop, proj_drop, shift, fmap_size)
                )
            elif kind == "D":
                self.attns.append(
                    DAttentionBaseline(
                        fmap_size, fmap_size, heads, hc, n_groups, attn_drop, proj_drop, stride,
                        offset_range_factor, use_pe, dwc_pe, no_off, fixed_pe, stage_idx,
                    )
                )
            else:
                raise ValueError(
                    f"MODEL.DAT.STAGE_SPEC[{stage_idx}]: block type {kind!r} is not supported; expected 'L' "
                    "(local window), 'S' (shifted window) or 'D' (deformable)"
                )
        self.drop_path = nn.ModuleList(DropPath(p) if p > 0.0 else nn.Identity() for p in drop_path_rate)

    def block(self, d: int, x: torch.Tensor):
        """Block ``d``: (B, C, H, W) -> (B, C, H, W), positions, references (None for window blocks)."""
        y, pos, ref = self.attns[d](self.layer_norms[2 * d](x))
        x = x + self.drop_path[d](y)
        x = x + self.drop_path[d](self.mlps[d](self.layer_norms[2 * d + 1](x)))
        return x, pos, ref

    def forward(self, x: torch.Tensor):
        """
        Args:
            x: (B, dim_in, H, W)

        Returns:
            (B, dim_embed, H, W) output, and per block the (B, groups, Hk, Wk, 2) sampling positions and
            reference points (None for window blocks).
        """
        x = self.proj(x)
        positions, references = [], []
        for d in range(self.depths):
            if self.use_checkpoint and torch.is_grad_enabled():
                x, pos, ref = torch.utils.checkpoint.checkpoint(self.block, d, x, use_reentrant=False)
            else:
                x, pos, ref = self.block(d, x)
            positions.append(pos)
            references.append(ref)
        return x, positions, references


def _per_stage(name: str, values, kind=None) -> list:
    values = list(values)
    if len(values) != 4:
        raise ValueError(f"MODEL.DAT.{name} must have one entry per stage (4), got {values}")
    return [kind(v) for v in values] if kind else values


@BACKBONE_REGISTRY.register()
class D2DAT(Backbone):
    """DAT backbone giving features ``res2`` .. ``res5`` (strides 4, 8, 16, 32), each normalised by its own
    LayerNorm ``norm{i}``. Official variants (MODEL.DAT keys): DAT-T ``DIMS [96, 192, 384, 768]``,
    ``DEPTHS [2, 2, 6, 2]``, ``HEADS [3, 6, 12, 24]``, ``GROUPS [-1, -1, 3, 6]``; DAT-S: DEPTHS
    ``[2, 2, 18, 2]``; DAT-B: ``DIMS [128, 256, 512, 1024]``, ``HEADS [4, 8, 16, 32]``, ``GROUPS [-1, -1, 4, 8]``.
    """

    @configurable
    def __init__(
        self,
        *,
        in_chans: int = 3,
        img_size: int = 224,
        patch_size: int = 4,
        expansion: int = 4,
        dim_stem: int = 96,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        window_sizes: Sequence[int] = (7, 7, 7, 7),
        stage_spec: Sequence[Sequence[str]] = (("L", "S"), ("L", "S"), ("L", "D") * 3, ("L", "D")),
        groups: Sequence[int] = (-1, -1, 3, 6),
        use_pes: Sequence[bool] = (False, False, True, True),
        dwc_pes: Sequence[bool] = (False,) * 4,
        fixed_pes: Sequence[bool] = (False,) * 4,
        no_offs: Sequence[bool] = (False,) * 4,
        strides: Sequence[int] = (-1, -1, 1, 1),
        sr_ratios: Sequence[int] = (-1, -1, -1, -1),
        offset_range_factor: Sequence[float] = (-1, -1, 2, 2),
        ns_per_pts: Sequence[int] = (4, 4, 4, 4),
        use_dwc_mlps: Sequence[bool] = (False,) * 4,
        use_conv_patches: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        """
        Args (config key in brackets; the names are the official constructor's):
            in_chans: image channels (len(MODEL.PIXEL_MEAN)).
            img_size: square image size of pre-training; sets the size of the deformable blocks' ``rpe_table``
                and of the ``attn_mask`` buffers, so that checkpoints of that size load (MODEL.DAT.PRETRAIN_IMG_SIZE).
            patch_size: stride of the stem (MODEL.DAT.PATCH_SIZE).
            expansion: MLP hidden size / channels (MODEL.DAT.EXPANSION).
            dim_stem: channels of the stem (MODEL.DAT.DIM_STEM).
            dims, depths, heads, window_sizes: per stage: channels, blocks, attention heads, window side of the
                'L'/'S' blocks (MODEL.DAT.DIMS, DEPTHS, HEADS, WINDOW_SIZES).
            stage_spec: per stage, one letter per block: 'L', 'S' or 'D' (MODEL.DAT.STAGE_SPEC).
            groups: offset groups of the 'D' blocks per stage (MODEL.DAT.GROUPS).
            use_pes, dwc_pes, fixed_pes: position bias of the 'D' blocks (MODEL.DAT.USE_PES, DWC_PES, FIXED_PES;
                see :class:`DAttentionBaseline`).
            no_offs: zero offsets in the 'D' blocks (MODEL.DAT.NO_OFFS).
            strides: stride of the offset network per stage (MODEL.DAT.STRIDES).
            sr_ratios: spatial reduction of the official 'P' (pyramid) blocks, which the DAT models do not use;
                accepted for config compatibility (MODEL.DAT.SR_RATIOS).
            offset_range_factor: offset bound per stage (MODEL.DAT.OFFSET_RANGE_FACTOR).
            ns_per_pts: unused by the official v1 code; accepted for config compatibility (MODEL.DAT.NS_PER_PTS).
            use_dwc_mlps: depthwise conv in the MLPs (MODEL.DAT.USE_DWC_MLPS).
            use_conv_patches: overlapping 7x7 stem and 3x3 down-sampling convs (MODEL.DAT.USE_CONV_PATCHES).
            drop_rate, attn_drop_rate: dropout after projections / on attention weights
                (MODEL.DAT.DROP_RATE, ATTN_DROP_RATE).
            drop_path_rate: stochastic depth of the last block, linear from 0 over all blocks
                (MODEL.DAT.DROP_PATH_RATE).
            out_features: returned features among res2 .. res5 (MODEL.DAT.OUT_FEATURES).
            use_checkpoint: recompute block activations in backward (MODEL.DAT.USE_CHECKPOINT).
        """
        super().__init__()
        dims = _per_stage("DIMS", dims, int)
        depths = _per_stage("DEPTHS", depths, int)
        heads = _per_stage("HEADS", heads, int)
        window_sizes = _per_stage("WINDOW_SIZES", window_sizes, int)
        stage_spec = _per_stage("STAGE_SPEC", stage_spec, list)
        groups = _per_stage("GROUPS", groups, int)
        use_pes, dwc_pes = _per_stage("USE_PES", use_pes, bool), _per_stage("DWC_PES", dwc_pes, bool)
        fixed_pes, no_offs = _per_stage("FIXED_PES", fixed_pes, bool), _per_stage("NO_OFFS", no_offs, bool)
        strides = _per_stage("STRIDES", strides, int)
        _per_stage("SR_RATIOS", sr_ratios)
        _per_stage("NS_PER_PTS", ns_per_pts)
        offset_range_factor = _per_stage("OFFSET_RANGE_FACTOR", offset_range_factor, float)
        use_dwc_mlps = _per_stage("USE_DWC_MLPS", use_dwc_mlps, bool)
        for i in range(4):
            if len(stage_spec[i]) != depths[i]:
                raise ValueError(
                    f"MODEL.DAT.STAGE_SPEC[{i}] = {stage_spec[i]} must name one block type per block "
                    f"(MODEL.DAT.DEPTHS[{i}] = {depths[i]})"
                )
            if heads[i] < 1 or dims[i] % heads[i] != 0:
                raise ValueError(f"MODEL.DAT.HEADS[{i}] = {heads[i]} must divide MODEL.DAT.DIMS[{i}] = {dims[i]}")
            if "D" in stage_spec[i] and (groups[i] < 1 or heads[i] % groups[i] != 0):
                raise ValueError(
                    f"MODEL.DAT.GROUPS[{i}] = {groups[i]} must divide MODEL.DAT.HEADS[{i}] = {heads[i]} "
                    "(stage {i} has deformable blocks)"
                )
            if "D" in stage_spec[i] and strides[i] < 1:
                raise ValueError(f"MODEL.DAT.STRIDES[{i}] must be >= 1 for the deformable blocks, got {strides[i]}")
        for i in range(3):
            if dims[i + 1] != 2 * dims[i]:
                raise ValueError(f"MODEL.DAT.DIMS must double from stage to stage, got {dims}")
        stage_names = [f"res{i + 2}" for i in range(4)]
        unknown = [name for name in out_features if name not in stage_names]
        if unknown or len(out_features) == 0:
            raise ValueError(f"MODEL.DAT.OUT_FEATURES {list(out_features)} must be a non-empty subset of {stage_names}")

        self.patch_size = patch_size
        self.use_conv_patches = use_conv_patches
        if use_conv_patches:
            stem = nn.Conv2d(in_chans, dim_stem, 7, patch_size, 3)
        else:
            stem = nn.Conv2d(in_chans, dim_stem, patch_size, patch_size, 0)
        self.patch_proj = nn.Sequential(stem, LayerNormProxy(dim_stem))

        fmap = img_size // patch_size
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        for i in range(4):
            self.stages.append(
                TransformerStage(
                    (fmap, fmap), window_sizes[i], dim_stem if i == 0 else dims[i - 1] * 2, dims[i], depths[i],
                    stage_spec[i], groups[i], use_pes[i], heads[i], strides[i], offset_range_factor[i], i,
                    dwc_pes[i], no_offs[i], fixed_pes[i], attn_drop_rate, drop_rate, expansion, drop_rate,
                    dpr[sum(depths[:i]) : sum(depths[: i + 1])], use_dwc_mlps[i], use_checkpoint,
                )
            )
            fmap = fmap // 2
        self.down_projs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dims[i], dims[i + 1], 3, 2, 1, bias=False)
                if use_conv_patches
                else nn.Conv2d(dims[i], dims[i + 1], 2, 2, 0, bias=False),
                LayerNormProxy(dims[i + 1]),
            )
            for i in range(3)
        )

        self._out_features = [name for name in stage_names if name in out_features]
        self._out_indices = [stage_names.index(name) for name in self._out_features]
        for i in self._out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
        self._out_feature_channels = {stage_names[i]: dims[i] for i in self._out_indices}
        self._out_feature_strides = {stage_names[i]: patch_size * 2**i for i in self._out_indices}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        d = cfg.MODEL.DAT
        return {
            "in_chans": input_shape.channels if input_shape.channels is not None else 3,
            "img_size": d.PRETRAIN_IMG_SIZE,
            "patch_size": d.PATCH_SIZE,
            "expansion": d.EXPANSION,
            "dim_stem": d.DIM_STEM,
            "dims": d.DIMS,
            "depths": d.DEPTHS,
            "heads": d.HEADS,
            "window_sizes": d.WINDOW_SIZES,
            "stage_spec": d.STAGE_SPEC,
            "groups": d.GROUPS,
            "use_pes": d.USE_PES,
            "dwc_pes": d.DWC_PES,
            "fixed_pes": d.FIXED_PES,
            "no_offs": d.NO_OFFS,
            "strides": d.STRIDES,
            "sr_ratios": d.SR_RATIOS,
            "offset_range_factor": d.OFFSET_RANGE_FACTOR,
            "ns_per_pts": d.NS_PER_PTS,
            "use_dwc_mlps": d.USE_DWC_MLPS,
            "use_conv_patches": d.USE_CONV_PATCHES,
            "drop_rate": d.DROP_RATE,
            "attn_drop_rate": d.ATTN_DROP_RATE,
            "drop_path_rate": d.DROP_PATH_RATE,
            "out_features": d.OUT_FEATURES,
            "use_checkpoint": d.USE_CHECKPOINT,
        }

    def convert_pretrained(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Adapt an official DAT ImageNet state dict to this backbone (called by
        :class:`~mask2former.engine.checkpoint.MaskFormerCheckpointer` when MODEL.WEIGHTS is one).

        Drops the classifier (``cls_norm``, ``cls_head``); resizes position-bias tables of another
        pre-training size (``rpe_table``: (heads, 2H-1, 2W-1); ``relative_position_bias_table``:
        ((2w-1)**2, heads)) bicubically with ``align_corners=True``, so the largest displacements stay on the
        table's border; replaces size-dependent constant buffers (``attn_mask``, ``relative_position_index``)
        of another size by this model's.
        """
        ours = self.state_dict()
        out = {}
        for name, value in state_dict.items():
            if name.startswith(("cls_norm.", "cls_head.")) or name not in ours:
                continue
            target = ours[name]
            if value.shape != target.shape:
                if name.endswith("rpe_table") and value.dim() == 3:
                    value = F.interpolate(
                        value[None].float(), size=target.shape[1:], mode="bicubic", align_corners=True
                    )[0]
                elif name.endswith("relative_position_bias_table"):
                    side, new_side = math.isqrt(value.shape[0]), math.isqrt(target.shape[0])
                    grid = value.float().t().reshape(1, -1, side, side)
                    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=True)
                    value = grid[0].reshape(value.shape[1], -1).t()
                elif name.endswith(("attn_mask", "relative_position_index")):
                    value = target
            out[name] = value.to(target.dtype) if value.is_floating_point() else value
        return out

    def _pad(self, x: torch.Tensor, multiple: int) -> torch.Tensor:
        H, W = x.shape[-2:]
        return F.pad(x, (0, (-W) % multiple, 0, (-H) % multiple))

    def forward_stages_with_positions(
        self, x: torch.Tensor, num_stages: int = 4
    ) -> Tuple[List[torch.Tensor], Dict[str, Tuple[torch.Tensor, torch.Tensor]]]:
        """
        Args:
            x: (B, C, H, W) normalised images, any H and W (zero-padded on the bottom/right to a multiple of
                the patch size; odd stage sizes are padded by one before each 2x2 down-projection).
            num_stages: run only the first ``num_stages`` stages.

        Returns:
            the stage outputs (B, DIMS[i], ceil(H / s), ceil(W / s)), s = 4 * 2**i, before the output norms;
            and for every deformable block, by module name (``"stages.2.attns.1"``), its sampling positions
            and reference points, each (B, groups, Hk, Wk, 2) float32, (y, x) in grid_sample's normalised
            coordinates of that stage's map.
        """
        if x.dim() != 4:
            raise ValueError(f"D2DAT takes a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if not self.use_conv_patches:
            x = self._pad(x, self.patch_size)
        x = self.patch_proj(x)
        outputs, positions = [], {}
        for i in range(num_stages):
            if i > 0:
                x = self.down_projs[i - 1](x if self.use_conv_patches else self._pad(x, 2))
            x, pos, ref = self.stages[i](x)
            outputs.append(x)
            for j, (p, r) in enumerate(zip(pos, ref)):
                if p is not None:
                    positions[f"stages.{i}.attns.{j}"] = (p, r)
        return outputs, positions

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, C, H, W) images -> the four stage outputs (B, DIMS[i], ceil(H / s), ceil(W / s)), s = 4 * 2**i,
        before the output norms (the official ``stages[i]`` outputs)."""
        return self.forward_stages_with_positions(x)[0]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (B, C, H, W) normalised images, any H and W.

        Returns:
            dict mapping each out feature ``res{i+2}`` to a (B, DIMS[i], ceil(H / s), ceil(W / s)) tensor,
            s = 4 * 2**i, normalised by ``norm{i}``.
        """
        stages, _ = self.forward_stages_with_positions(x, num_stages=self._out_indices[-1] + 1)
        return {
            f"res{i + 2}": getattr(self, f"norm{i}")(stages[i].permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            for i in self._out_indices
        }

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32
