"""Swin Transformer backbone (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021), as a detectron2 ``Backbone`` registered under the name ``"D2SwinTransformer"``.

The image is cut into ``PATCH_SIZE`` x ``PATCH_SIZE`` patches, then four stages of transformer blocks run
self-attention inside non-overlapping ``WINDOW_SIZE`` x ``WINDOW_SIZE`` windows; every second block shifts the
windows by half a window so that information crosses window borders. Between stages a patch-merging layer
halves the resolution and doubles the channels. Stage ``i`` gives feature ``res{i+2}`` with stride
``PATCH_SIZE * 2**i`` and ``EMBED_DIM * 2**i`` channels.

Inputs of any size are accepted: the image is padded on the bottom/right to a multiple of the patch size,
each block pads its (normalised) tokens with zeros to a multiple of the window size, and patch merging pads
odd sizes by one. A feature of stride ``s`` therefore has size ``ceil(H / s) x ceil(W / s)``.

Parameter and buffer names follow the official Mask2Former checkpoints (``patch_embed``, ``layers.{i}.blocks.
{j}``, ``layers.{i}.downsample``, ``norm{i}``, ``absolute_pos_embed``), so they load without renaming.
Internally tokens are kept as ``(B, H, W, C)`` maps.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = ["D2SwinTransformer"]

# Added to attention logits between tokens that come from different image regions after the cyclic shift.
_MASKED_LOGIT = -100.0


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window_size`` -> (B * nW, window_size**2, C), windows in raster
    order per image."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window_size**2, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def shifted_window_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device
) -> torch.Tensor:
    """Additive attention mask for windows of a (height, width) map cyclically shifted by ``-shift_size``.

    After the shift, a window at the bottom/right border holds tokens from up to 3 x 3 regions that are not
    neighbours in the image; tokens may only attend to tokens of their own region.

    Returns:
        (nW, window_size**2, window_size**2) float tensor: 0 within a region, ``-100`` across regions.
    """

    def region_ids(size: int) -> torch.Tensor:
        # 0 before the last window, 1 in it up to the last shift_size tokens, 2 there; comparisons rather than
        # slice assignments, which ONNX export (tools/export_model.py) would turn into fixed-size writes
        pos = torch.arange(size, device=device)
        return (pos >= size - window_size).long() + (pos >= size - shift_size).long()

    regions = region_ids(height)[:, None] * 3 + region_ids(width)[None, :]  # (height, width)
    regions = window_partition(regions[None, :, :, None], window_size).squeeze(-1)  # (nW, ws*ws)
    different = regions[:, :, None] != regions[:, None, :]
    return different.float() * _MASKED_LOGIT


def relative_position_index(window_size: int) -> torch.Tensor:
    """(window_size**2, window_size**2) long tensor: for tokens i, j of a window (raster order), the row of
    the relative position bias table that holds the bias for the offset of j as seen from i."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # (2, ws*ws): row, column
    offsets = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (2, N, N) in [0, 2ws-2]
    return offsets[0] * (2 * window_size - 1) + offsets[1]


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the residual branch of whole samples with probability ``drop_prob``
    and scale the kept ones by ``1 / (1 - drop_prob)``. Identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device) < keep_prob
        return x * keep.to(x.dtype) / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout, on the last dimension."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned bias per head and relative offset."""

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        # One bias per head for each of the (2ws-1)^2 possible offsets between two tokens of a window.
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (B * nW, N, C) tokens of the windows, N = window_size**2, windows of one image consecutive.
            mask: optional (nW, N, N) additive mask, the same for every image.

        Returns:
            (B * nW, N, C)
        """
        BW, N, C = x.shape
        qkv = self.qkv(x).reshape(BW, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (BW, heads, N, head_dim)

        attn = (q * self.scale) @ k.transpose(-2, -1)  # (BW, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(BW // nW, nW, self.num_heads, N, N) + mask[None, :, None]
            attn = attn.view(BW, self.num_heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))

        x = (attn @ v).transpose(1, 2).reshape(BW, N, C)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """Pre-norm transformer block with (shifted) window attention and an MLP, each with a residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: float,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, shift_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            x: (B, H, W, C) token map of any size.
            shift_mask: the (nW, N, N) output of :func:`shifted_window_mask` for the padded size of ``x``;
                used only if this block shifts its windows.

        Returns:
            (B, H, W, C)
        """
        B, H, W, C = x.shape
        ws, shift = self.window_size, self.shift_size

        y = self.norm1(x)
        # zero tokens at the bottom / right; non-negative operands only, since ONNX integer division truncates
        y = F.pad(y, (0, 0, 0, (ws - W % ws) % ws, 0, (ws - H % ws) % ws))
        Hp, Wp = y.shape[1:3]
        if shift > 0:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = self.attn(window_partition(y, ws), shift_mask if shift > 0 else None)
        y = window_reverse(y, ws, Hp, Wp)
        if shift > 0:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :H, :W]

        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of tokens (padding odd sizes), normalise, and project 4C -> 2C channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H / 2), ceil(W / 2), 2C)."""
        H, W = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # Channel order of the official checkpoints: (even row, even col), (odd, even), (even, odd), (odd, odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks, the odd ones with windows shifted by half a window, then optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size,
                shift_size=0 if j % 2 == 0 else self.shift_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[j],
            )
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x: (B, H, W, C)

        Returns:
            the (B, H, W, C) output of the blocks, and its (B, ceil(H/2), ceil(W/2), 2C) merged version
            (None if this stage has no patch merging).
        """
        shift_mask = None
        if any(blk.shift_size > 0 for blk in self.blocks):
            ws = self.window_size
            Hp, Wp = (x.shape[1] + ws - 1) // ws * ws, (x.shape[2] + ws - 1) // ws * ws
            shift_mask = shifted_window_mask(Hp, Wp, ws, self.shift_size, x.device).to(x.dtype)
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, shift_mask, use_reentrant=False)
            else:
                x = blk(x, shift_mask)
        return x, (self.downsample(x) if self.downsample is not None else None)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> ``embed_dim`` channels (strided conv), optional LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, embed_dim, ceil(H / patch), ceil(W / patch)); the image is zero-padded."""
        H, W = x.shape[-2:]
        p = self.patch_size
        x = self.proj(F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p)))
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(Backbone):
    """Swin Transformer backbone giving features ``res2`` .. ``res{len(depths)+1}`` (res2..res5 for the four
    official variants: Swin-T/S/B/L), each normalised by its own LayerNorm ``norm{i}``."""

    @configurable
    def __init__(
        self,
        *,
        in_chans: int = 3,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        ape: bool = False,
        patch_norm: bool = True,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        """
        Args (config key in brackets):
            in_chans: image channels (len(MODEL.PIXEL_MEAN)).
            pretrain_img_size: image size of pre-training; only sets the size of the absolute position
                embedding, which is resized to the input (MODEL.SWIN.PRETRAIN_IMG_SIZE).
            patch_size: stride of the first stage (MODEL.SWIN.PATCH_SIZE).
            embed_dim: channels of the first stage, doubled in each next one (MODEL.SWIN.EMBED_DIM).
            depths: number of blocks per stage (MODEL.SWIN.DEPTHS).
            num_heads: attention heads per stage (MODEL.SWIN.NUM_HEADS).
            window_size: side of the attention windows (MODEL.SWIN.WINDOW_SIZE).
            mlp_ratio: MLP hidden size / channels (MODEL.SWIN.MLP_RATIO).
            qkv_bias: whether the query/key/value projection has a bias (MODEL.SWIN.QKV_BIAS).
            qk_scale: attention logit scale; None for head_dim ** -0.5 (MODEL.SWIN.QK_SCALE).
            drop_rate: dropout after the embedding, the attention projection and the MLP
                (MODEL.SWIN.DROP_RATE).
            attn_drop_rate: dropout on the attention weights (MODEL.SWIN.ATTN_DROP_RATE).
            drop_path_rate: stochastic depth rate of the last block; it increases linearly from 0 over
                all blocks (MODEL.SWIN.DROP_PATH_RATE).
            ape: add a learned absolute position embedding after the patch embedding (MODEL.SWIN.APE).
            patch_norm: LayerNorm after the patch embedding (MODEL.SWIN.PATCH_NORM).
            out_features: returned features, among res2 .. res{len(depths)+1} (MODEL.SWIN.OUT_FEATURES).
            use_checkpoint: recompute block activations in the backward pass instead of storing them
                (activation checkpointing; MODEL.SWIN.USE_CHECKPOINT).
        """
        super().__init__()
        depths, num_heads = list(depths), list(num_heads)
        if len(depths) == 0 or len(depths) != len(num_heads):
            raise ValueError(
                f"MODEL.SWIN.DEPTHS ({depths}) and MODEL.SWIN.NUM_HEADS ({num_heads}) must be non-empty "
                "lists of the same length (one entry per stage)"
            )
        if any(d < 1 for d in depths):
            raise ValueError(f"MODEL.SWIN.DEPTHS must be positive block counts, got {depths}")
        num_features = [embed_dim * 2**i for i in range(len(depths))]
        for i, (dim, heads) in enumerate(zip(num_features, num_heads)):
            if heads < 1 or dim % heads != 0:
                raise ValueError(
                    f"MODEL.SWIN.NUM_HEADS[{i}] = {heads} must divide the {dim} channels of stage {i} "
                    f"(MODEL.SWIN.EMBED_DIM * 2**{i})"
                )
        if window_size < 1 or patch_size < 1:
            raise ValueError(
                f"MODEL.SWIN.WINDOW_SIZE ({window_size}) and MODEL.SWIN.PATCH_SIZE ({patch_size}) must be >= 1"
            )
        stage_names = [f"res{i + 2}" for i in range(len(depths))]
        unknown = [name for name in out_features if name not in stage_names]
        if unknown or len(out_features) == 0:
            raise ValueError(
                f"MODEL.SWIN.OUT_FEATURES {list(out_features)} must be a non-empty subset of {stage_names}"
                + (f"; unknown: {unknown}" if unknown else "")
            )

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)

        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            SwinStage(
                num_features[i],
                depths[i],
                num_heads[i],
                window_size,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop_rate,
                attn_drop_rate,
                drop_path=drop_path[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i < len(depths) - 1,
                use_checkpoint=use_checkpoint,
            )
            for i in range(len(depths))
        )

        # Keep the stage order whatever the order of out_features.
        self._out_features = [name for name in stage_names if name in out_features]
        self._out_indices = [stage_names.index(name) for name in self._out_features]
        for i in self._out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(num_features[i]))
        self._out_feature_channels = {stage_names[i]: num_features[i] for i in self._out_indices}
        self._out_feature_strides = {stage_names[i]: patch_size * 2**i for i in self._out_indices}

        self.apply(self._init_weights)
        if self.absolute_pos_embed is not None:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        for layer in self.layers:
            for blk in layer.blocks:
                nn.init.trunc_normal_(blk.attn.relative_position_bias_table, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        sw = cfg.MODEL.SWIN
        return {
            "in_chans": input_shape.channels if input_shape.channels is not None else 3,
            "pretrain_img_size": sw.PRETRAIN_IMG_SIZE,
            "patch_size": sw.PATCH_SIZE,
            "embed_dim": sw.EMBED_DIM,
            "depths": sw.DEPTHS,
            "num_heads": sw.NUM_HEADS,
            "window_size": sw.WINDOW_SIZE,
            "mlp_ratio": sw.MLP_RATIO,
            "qkv_bias": sw.QKV_BIAS,
            "qk_scale": sw.QK_SCALE,
            "drop_rate": sw.DROP_RATE,
            "attn_drop_rate": sw.ATTN_DROP_RATE,
            "drop_path_rate": sw.DROP_PATH_RATE,
            "ape": sw.APE,
            "patch_norm": sw.PATCH_NORM,
            "out_features": sw.OUT_FEATURES,
            "use_checkpoint": sw.USE_CHECKPOINT,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (B, C, H, W) normalised images, any H and W.

        Returns:
            dict mapping each out feature ``res{i+2}`` to a (B, EMBED_DIM * 2**i, ceil(H / s), ceil(W / s))
            tensor, s = PATCH_SIZE * 2**i.
        """
        if x.dim() != 4:
            raise ValueError(f"D2SwinTransformer takes a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # (B, C, Wh, Ww)
        if self.absolute_pos_embed is not None:
            x = x + F.interpolate(self.absolute_pos_embed, size=x.shape[-2:], mode="bicubic")
        x = self.pos_drop(x.permute(0, 2, 3, 1))  # (B, Wh, Ww, C)

        outputs = {}
        for i in range(self._out_indices[-1] + 1):  # later stages would only compute unused features
            out, x = self.layers[i](x)
            if i in self._out_indices:
                out = getattr(self, f"norm{i}")(out)
                outputs[f"res{i + 2}"] = out.permute(0, 3, 1, 2).contiguous()
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32
