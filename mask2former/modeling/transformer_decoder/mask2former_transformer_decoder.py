"""Masked-attention transformer decoder (Mask2Former, Sec. 3.2).

Learnable queries are refined layer by layer. Each layer does masked cross-attention to one feature level
(round-robin from the coarsest), where a query only sees the pixels inside its mask predicted by the
previous layer, then self-attention among queries, then a feed-forward block. A prediction (class logits and
mask logits) is made from the initial queries and after every layer (deep supervision).

Training switches (ours, off by default; docs/RESULTS.md, "Fast-start training switches"):

* ``query_selection`` (MODEL.MASK_FORMER.QUERY_SELECTION, two-stage as in Mask DINO): the initial queries are
  the Q memory tokens the class head scores highest, their first prediction is made from the (projected)
  tokens and trained like every other, and the layers start from the detached tokens and their predicted
  masks, instead of from learnable embeddings.
* ``dn_groups`` (MODEL.MASK_FORMER.DN.NUM_GROUPS): denoising query groups (query_groups.py), training only.
* ``num_o2m_queries`` (MODEL.MASK_FORMER.ONE_TO_MANY.NUM_QUERIES): one-to-many queries, training only.
"""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
import fvcore.nn.weight_init as weight_init
from torch import nn

from .position_encoding import PositionEmbeddingSine
from .query_groups import denoising_queries, self_attention_mask

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = "Registry for Mask2Former transformer decoders (the 'predictor')."


def build_transformer_decoder(cfg, in_channels, mask_classification=True):
    """Build the decoder named by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    try:
        decoder_cls = TRANSFORMER_DECODER_REGISTRY.get(name)
    except KeyError:
        raise KeyError(f"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME '{name}' is not registered; known: "
                       f"{sorted(k for k, _ in TRANSFORMER_DECODER_REGISTRY)}") from None
    return decoder_cls(cfg, in_channels, mask_classification)


def _with_pos(x, pos):
    return x if pos is None else x + pos


def _xavier_init(module):
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries with a residual connection. Tensors are (Q, N, C)."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt, tgt_mask=None, tgt_key_padding_mask=None, query_pos=None):
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = _with_pos(x, query_pos)
        x = self.self_attn(q, k, value=x, attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask)[0]
        tgt = tgt + self.dropout(x)
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Queries (Q, N, C) attend to memory (HW, N, C); ``memory_mask`` (N*heads, Q, HW) is True where blocked."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt, memory, memory_mask=None, memory_key_padding_mask=None, pos=None, query_pos=None):
        x = self.norm(tgt) if self.normalize_before else tgt
        x = self.multihead_attn(query=_with_pos(x, query_pos), key=_with_pos(memory, pos), value=memory,
                                attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask)[0]
        tgt = tgt + self.dropout(x)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Two-layer feed-forward block with a residual connection."""

    def __init__(self, d_model, dim_feedforward=2048, dropout=0.0, normalize_before=False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt):
        x = self.norm(tgt) if self.normalize_before else tgt
        x = self.linear2(self.dropout(F.relu(self.linear1(x))))
        tgt = tgt + self.dropout(x)
        return tgt if self.normalize_before else self.norm(tgt)


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def attention_mask_from_masks(mask_logits, size, num_heads):
    """The masked-attention mask: True where a query must NOT attend.

    Args:
        mask_logits: (N, Q, H, W) predicted mask logits (or (N, Q, T, H, W) for video: frames are
            resized separately and concatenated along the key axis).
        size: (h, w) of the feature level the next layer attends to.
    Returns:
        (N * num_heads, Q, h * w [* T]) bool. A query whose mask would block every key is allowed
        everywhere (otherwise its attention would be undefined).
    """
    if mask_logits.dim() == 5:
        n, q, t = mask_logits.shape[:3]
        resized = F.interpolate(mask_logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
        resized = resized.view(n, q, t * size[0] * size[1])
    else:
        resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False).flatten(2)
    blocked = resized.sigmoid() < 0.5
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return blocked.unsqueeze(1).repeat(1, num_heads, 1, 1).flatten(0, 1).detach()


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's transformer decoder ("predictor").

    forward(x, mask_features, mask=None):
        x: 3 tensors (N, C_in, H_l, W_l), coarsest first (the pixel decoder's multi-scale features).
        mask_features: (N, mask_dim, H/4, W/4) per-pixel embeddings.
        targets: in training with denoising groups, the B dicts {"labels", "masks"} of the criterion.
    returns {"pred_logits": (N, Q, K+1), "pred_masks": (N, Q, H/4, W/4),
             "aux_outputs": [{"pred_logits", "pred_masks"}, ...] for the earlier predictions}
        and in training, with the extra groups on,
             "dn_outputs": the same keys for the denoising queries (G * M of them), whose "aux_outputs" has
                 None first (the prediction before any layer has not seen the noised mask and is not
                 trained), plus "query_valid" (N, G * M) bool, "indices" (their fixed targets) and
                 "num_groups";
             "o2m_outputs": the same keys as the main output for the one-to-many queries.
    """

    @configurable
    def __init__(self, in_channels, mask_classification=True, *, num_classes: int, hidden_dim: int,
                 num_queries: int, nheads: int, dim_feedforward: int, dec_layers: int, pre_norm: bool,
                 mask_dim: int, enforce_input_project: bool, query_selection: bool = False, dn_groups: int = 0,
                 dn_label_noise: float = 0.2, dn_mask_noise: float = 0.4, num_o2m_queries: int = 0):
        super().__init__()
        if not mask_classification:
            raise ValueError("Mask2Former's decoder always classifies masks (mask_classification=True)")
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.query_selection = query_selection
        if query_selection:
            # Memory tokens -> query content (Deformable DETR's two-stage projection); queries take the
            # positional encoding of their token, so there are no learnable query embeddings.
            self.query_select_proj = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        else:
            self.query_feat = nn.Embedding(num_queries, hidden_dim)  # learnable query features
            self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learnable query positions
        self.num_classes = num_classes
        self.dn_groups = dn_groups
        self.dn_label_noise = dn_label_noise
        self.dn_mask_noise = dn_mask_noise
        if dn_groups:
            self.dn_label_embed = nn.Embedding(num_classes + 1, hidden_dim)  # the last one for padding slots
        self.num_o2m_queries = num_o2m_queries
        if num_o2m_queries and not query_selection:
            self.o2m_query_feat = nn.Embedding(num_o2m_queries, hidden_dim)
            self.o2m_query_embed = nn.Embedding(num_o2m_queries, hidden_dim)
        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # DEC_LAYERS counts the prediction from the learnable queries too (10 = 9 layers + 1).
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            **training_switches(cfg),
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Model-zoo files store the query features under their MaskFormer name.
        old, new = prefix + "static_query.weight", prefix + "query_feat.weight"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x, mask_features, mask=None, targets=None):
        return self.decode(*self.prepare_memory(x), mask_features, targets=targets)

    def prepare_memory(self, x):
        """The image's multi-scale features as attention memory.

        Args:
            x: 3 tensors (N, C_in, H_l, W_l), coarsest first.
        Returns:
            src, pos: per level, memory and its positional encoding (H_l * W_l, N, C); sizes: per level (H_l, W_l).
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        src, pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            sizes.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i]).flatten(2).permute(2, 0, 1))  # (HW, N, C)
            feat = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(feat.permute(2, 0, 1))
        return src, pos, sizes

    def decode(self, src, pos, sizes, mask_features, targets=None, queries=None, attn_masks=None,
               query_padding_mask=None):
        """The query refinement loop over prepared memory (shared by the image and video decoders).

        Args:
            src, pos: per feature level, memory and its positional encoding (L, N, C) (L = h * w, or
                T * h * w for video clips).
            sizes: per level, the (h, w) the attention masks are resized to.
            mask_features: per-pixel embeddings that ``forward_prediction_heads`` expects.
            targets: the training targets; the denoising queries (``MODEL.MASK_FORMER.DN``) are made from them.
            queries: optional (content, position), each (Q, N, C), in place of the learnable queries.
            attn_masks: optional fixed attention masks, one per level (N * heads, Q, L) bool, in place of the
                ones predicted by the previous layer (the mask classifier attends inside given masks).
            query_padding_mask: optional (N, Q) bool, True for padding queries that other queries must not
                attend to in self-attention.
        """
        bs = src[0].shape[1]
        if queries is not None:
            # Given queries (the mask classifier) replace the learnable ones; the training switches do not apply.
            output, query_pos = queries
            first_output, num_o2m, groups, dn, self_attn_mask = output, 0, [None], None, None
        else:
            num_o2m = self.num_o2m_queries if self.training else 0
            if self.query_selection:
                # The layers start from the detached tokens; their first prediction keeps the gradients.
                selected, query_pos = self.select_queries(src, pos, max(self.num_queries, num_o2m))
                o2o = (selected[:self.num_queries].detach(), query_pos[:self.num_queries],
                       selected[:self.num_queries])
                o2m = (selected[:num_o2m].detach(), query_pos[:num_o2m], selected[:num_o2m])
            else:
                query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)  # (Q, N, C)
                output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)
                o2o = (output, query_pos, output)
                if num_o2m:
                    o2m_out = self.o2m_query_feat.weight.unsqueeze(1).repeat(1, bs, 1)
                    o2m = (o2m_out, self.o2m_query_embed.weight.unsqueeze(1).repeat(1, bs, 1), o2m_out)
            groups = [o2o] if not num_o2m else [o2o, o2m]

            dn = None
            if self.dn_groups and self.training:
                if targets is None:
                    raise ValueError("MODEL.MASK_FORMER.DN.NUM_GROUPS > 0 needs the targets in training: call the "
                                     "head with targets=")
                dn = denoising_queries(targets, self.dn_groups, self.num_classes, self.dn_label_noise,
                                       self.dn_mask_noise, mask_features.shape[-2:])
                if dn[0].shape[1] == 0:  # no targets in the whole batch: nothing to denoise
                    dn = None
            if dn is not None:
                dn_content = self.dn_label_embed(dn[0]).transpose(0, 1)  # (G * M, N, C)
                groups = [(dn_content, torch.zeros_like(dn_content), dn_content)] + groups
            sizes_q = [g[0].shape[0] for g in groups]
            self_attn_mask = None
            if len(groups) > 1:
                num_dn = sizes_q[0] if dn is not None else 0
                self_attn_mask = self_attention_mask(num_dn, self.dn_groups, self.num_queries, num_o2m,
                                                     src[0].device)
                output = torch.cat([g[0] for g in groups])
                query_pos = torch.cat([g[1] for g in groups])
                first_output = torch.cat([g[2] for g in groups])
            else:
                output, query_pos, first_output = o2o

        classes, masks = [], []
        cls, msk, attn_mask = self.forward_prediction_heads(first_output, mask_features, sizes[0])
        if dn is not None:
            # The denoising queries' first attention is their noised target mask (as +-1 pseudo-logits).
            dn_attn = attention_mask_from_masks(dn[1] * 2 - 1, sizes[0], self.num_heads)
            attn_mask = attn_mask.view(bs, self.num_heads, *attn_mask.shape[1:]).clone()
            attn_mask[:, :, :sizes_q[0]] = dn_attn.view(bs, self.num_heads, *dn_attn.shape[1:])
            attn_mask = attn_mask.flatten(0, 1)
        classes.append(cls)
        masks.append(msk)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            if attn_masks is not None:
                attn_mask = attn_masks[level]
            output = self.transformer_cross_attention_layers[i](
                output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_pos)
            output = self.transformer_self_attention_layers[i](
                output, tgt_mask=self_attn_mask, tgt_key_padding_mask=query_padding_mask, query_pos=query_pos)
            output = self.transformer_ffn_layers[i](output)
            cls, msk, attn_mask = self.forward_prediction_heads(
                output, mask_features, sizes[(i + 1) % self.num_feature_levels])
            classes.append(cls)
            masks.append(msk)
        if len(groups) == 1:
            return _predictions(classes, masks)
        # Split [DN | matching | one-to-many] along the query axis; inference sees the matching queries only.
        parts = [(torch.split(c, sizes_q, dim=1), torch.split(m, sizes_q, dim=1)) for c, m in zip(classes, masks)]
        part = 0
        out = {}
        if dn is not None:
            dn_out = _predictions([p[0][0] for p in parts], [p[1][0] for p in parts])
            dn_out["aux_outputs"][0] = None
            for aux in dn_out["aux_outputs"][1:]:
                aux["query_valid"] = dn[2]
            dn_out.update({"query_valid": dn[2], "indices": dn[3], "num_groups": self.dn_groups})
            out["dn_outputs"] = dn_out
            part = 1
        out.update(_predictions([p[0][part] for p in parts], [p[1][part] for p in parts]))
        if num_o2m:
            out["o2m_outputs"] = _predictions([p[0][part + 1] for p in parts], [p[1][part + 1] for p in parts])
        return out

    def select_queries(self, src, pos, k):
        """Query selection: the k memory tokens (all levels) whose best foreground class scores highest.

        Returns (k, N, C) projected token features (with gradients: their first prediction trains the
        projection, the heads and the pixel decoder) and their positional encodings (k, N, C).
        """
        memory = torch.cat(src)  # (L, N, C)
        if memory.shape[0] < k:
            raise ValueError(f"MODEL.MASK_FORMER.QUERY_SELECTION needs at least {k} memory tokens (queries), the "
                             f"feature maps have {memory.shape[0]}")
        feats = self.query_select_proj(memory)
        with torch.no_grad():
            scores = self.class_embed(self.decoder_norm(feats)).softmax(-1)[..., :-1].amax(-1)  # (L, N)
            top = scores.topk(k, dim=0).indices  # (k, N)
        index = top[..., None].expand(-1, -1, feats.shape[-1])
        selected = feats.gather(0, index)
        return selected, torch.cat(pos).gather(0, index)

    def forward_prediction_heads(self, output, mask_features, attn_mask_target_size):
        """(Q, N, C) queries -> class logits (N, Q, K+1), mask logits (N, Q, H, W), next attention mask."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = attention_mask_from_masks(outputs_mask, attn_mask_target_size, self.num_heads)
        return outputs_class, outputs_mask, attn_mask


def _predictions(classes, masks):
    return {
        "pred_logits": classes[-1],
        "pred_masks": masks[-1],
        "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1])],
    }


def training_switches(cfg) -> dict:
    """The decoder arguments of the training switches (MODEL.MASK_FORMER.QUERY_SELECTION, DN.*, ONE_TO_MANY.*)."""
    mf = cfg.MODEL.MASK_FORMER
    if mf.DN.NUM_GROUPS < 0 or mf.ONE_TO_MANY.NUM_QUERIES < 0:
        raise ValueError("MODEL.MASK_FORMER.DN.NUM_GROUPS and MODEL.MASK_FORMER.ONE_TO_MANY.NUM_QUERIES must be >= 0 "
                         f"(0 = off), got {mf.DN.NUM_GROUPS} and {mf.ONE_TO_MANY.NUM_QUERIES}")
    if mf.QUERY_SELECTION and not mf.DEEP_SUPERVISION:
        raise ValueError("MODEL.MASK_FORMER.QUERY_SELECTION trains the selected tokens through the first (auxiliary) "
                         "prediction: it needs MODEL.MASK_FORMER.DEEP_SUPERVISION True")
    return {
        "query_selection": mf.QUERY_SELECTION,
        "dn_groups": mf.DN.NUM_GROUPS,
        "dn_label_noise": mf.DN.LABEL_NOISE,
        "dn_mask_noise": mf.DN.MASK_NOISE,
        "num_o2m_queries": mf.ONE_TO_MANY.NUM_QUERIES,
    }
