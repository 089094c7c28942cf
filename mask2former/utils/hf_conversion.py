"""HuggingFace ``Mask2FormerForUniversalSegmentation`` (Swin backbone) <-> this project's ``MaskFormer``.

* :func:`hf_config_to_opts`: config.json -> our config changes (Swin sizes, queries, layers, labels, dims);
* :func:`read_hf_folder` / :func:`write_hf_folder`: a saved HF folder (config.json + model.safetensors or
  pytorch_model.bin), read or written (tools/convert_hf_mask2former.py);
* :func:`hf_to_ours` / :func:`ours_to_hf`: state dicts, both ways. Names map one to one except HF's split
  q/k/v projections, which are our packed ``qkv`` (Swin) and ``in_proj_weight`` (decoder self-attention).

Differences in behaviour (not in the weights), documented in docs/MODEL_ZOO.md: HF's Swin turns a stage's
window shift off when its map fits in one window (ours, as the official detection Swin, always shifts), so
outputs agree for inputs whose last stage exceeds one window (>= 8 x 8 tokens, e.g. >= 256 px for window 7);
HF's matcher weighs the class cost by ``class_weight`` and its processor post-processes at a fixed size.
"""
import re
from typing import Dict, List, Tuple

import torch

__all__ = ["hf_config_to_opts", "hf_to_ours", "ours_to_hf", "ours_to_hf_config", "read_hf_folder", "write_hf_folder"]

_HF = "model."
_SWIN = _HF + "pixel_level_module.encoder.swin."
_PD = _HF + "pixel_level_module.decoder."
_TM = _HF + "transformer_module."


def hf_config_to_opts(config: dict) -> List:
    """Our config changes (KEY, VALUE, ...) for an HF Mask2Former config.json (dict) with a Swin backbone."""
    backbone = config["backbone_config"]
    if backbone.get("model_type") != "swin":
        raise ValueError(f"config.json: only Swin backbones are converted, got {backbone.get('model_type')!r}")
    if config.get("encoder_feedforward_dim", 1024) != 1024:
        raise ValueError(f"config.json: encoder_feedforward_dim {config['encoder_feedforward_dim']}: the pixel "
                         "decoder's feed-forward width is 1024 here, as in the official model")
    num_labels = len(config["id2label"]) if config.get("id2label") else config["num_labels"]
    return [
        "MODEL.BACKBONE.NAME", "D2SwinTransformer",
        "MODEL.SWIN.EMBED_DIM", backbone["embed_dim"], "MODEL.SWIN.DEPTHS", list(backbone["depths"]),
        "MODEL.SWIN.NUM_HEADS", list(backbone["num_heads"]), "MODEL.SWIN.WINDOW_SIZE", backbone["window_size"],
        "MODEL.SWIN.MLP_RATIO", float(backbone.get("mlp_ratio", 4.0)), "MODEL.SWIN.QKV_BIAS", bool(backbone.get("qkv_bias", True)),
        "MODEL.SWIN.PATCH_SIZE", backbone.get("patch_size", 4), "MODEL.SWIN.APE", bool(backbone.get("use_absolute_embeddings", False)),
        "MODEL.SWIN.PRETRAIN_IMG_SIZE", backbone.get("image_size", 224),
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_labels,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", config["feature_size"], "MODEL.SEM_SEG_HEAD.MASK_DIM", config["mask_feature_size"],
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", config["encoder_layers"],
        "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", config["num_attention_heads"],
        "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", config.get("common_stride", 4),
        "MODEL.MASK_FORMER.HIDDEN_DIM", config["hidden_dim"], "MODEL.MASK_FORMER.NHEADS", config["num_attention_heads"],
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD", config["dim_feedforward"],
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", config["num_queries"], "MODEL.MASK_FORMER.DEC_LAYERS", config["decoder_layers"],
        "MODEL.MASK_FORMER.PRE_NORM", bool(config.get("pre_norm", False)),
        "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ", bool(config.get("enforce_input_projection", False)),
    ]


# (HF pattern, our pattern) for names that map one to one; {i}, {j} stand for indices
_RULES: List[Tuple[str, str]] = [
    (_SWIN + r"embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (_SWIN + r"embeddings\.norm\.", "backbone.patch_embed.norm."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.", r"backbone.layers.\1.blocks.\2.attn.proj."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.relative_position_bias\.relative_position_bias_table",
     r"backbone.layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"backbone.layers.\1.blocks.\2.norm1."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"backbone.layers.\1.blocks.\2.norm2."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc(\d)\.", r"backbone.layers.\1.blocks.\2.mlp.fc\3."),
    (_SWIN + r"encoder\.layers\.(\d+)\.downsample\.", r"backbone.layers.\1.downsample."),
    (_HF + r"pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.", None),  # index shifts: below
    (_PD + r"level_embed", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    (_PD + r"input_projections\.(\d+)\.", r"sem_seg_head.pixel_decoder.input_proj.\1."),
    (_PD + r"encoder\.layers\.(\d+)\.self_attn\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.self_attn."),
    (_PD + r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm1."),
    (_PD + r"encoder\.layers\.(\d+)\.fc(\d)\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear\2."),
    (_PD + r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm2."),
    (_PD + r"mask_projection\.", "sem_seg_head.pixel_decoder.mask_features."),
    (_PD + r"adapter_1\.0\.", "sem_seg_head.pixel_decoder.adapter_1."),
    (_PD + r"adapter_1\.1\.", "sem_seg_head.pixel_decoder.adapter_1.norm."),
    (_PD + r"layer_1\.0\.", "sem_seg_head.pixel_decoder.layer_1."),
    (_PD + r"layer_1\.1\.", "sem_seg_head.pixel_decoder.layer_1.norm."),
    (_TM + r"queries_embedder\.", "sem_seg_head.predictor.query_embed."),
    (_TM + r"queries_features\.", "sem_seg_head.predictor.query_feat."),
    (_TM + r"level_embed\.", "sem_seg_head.predictor.level_embed."),
    (_TM + r"input_projections\.(\d+)\.", r"sem_seg_head.predictor.input_proj.\1."),
    (_TM + r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.out_proj."),
    (_TM + r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm."),
    (_TM + r"decoder\.layers\.(\d+)\.cross_attn\.", r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.multihead_attn."),
    (_TM + r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.", r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.norm."),
    (_TM + r"decoder\.layers\.(\d+)\.fc(\d)\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1.linear\2."),
    (_TM + r"decoder\.layers\.(\d+)\.final_layer_norm\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1.norm."),
    (_TM + r"decoder\.layernorm\.", "sem_seg_head.predictor.decoder_norm."),
    (_TM + r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.", r"sem_seg_head.predictor.mask_embed.layers.\1."),
    (r"class_predictor\.", "sem_seg_head.predictor.class_embed."),
]
_SKIP = re.compile(r"(^criterion\.|relative_position_index$|^" + re.escape(_SWIN) + r"layernorm\.)")
_PACKED_HF = re.compile(r"^(.*)\.(q_proj|k_proj|v_proj)\.(weight|bias)$")


def _rename(name: str) -> str:
    for pattern, target in _RULES:
        match = re.match(pattern, name)
        if match is None:
            continue
        if target is None:  # hidden_states_norms.stage{k} -> backbone.norm{k-1}
            return f"backbone.norm{int(match.group(1)) - 1}." + name[match.end():]
        return match.expand(target) + name[match.end():]
    raise KeyError(name)


def hf_to_ours(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF Mask2FormerForUniversalSegmentation state dict -> our MaskFormer state dict."""
    out, packed = {}, {}
    for name, value in state_dict.items():
        if _SKIP.search(name):
            continue
        match = _PACKED_HF.match(name)
        if match is not None and (".blocks." in name or ".decoder.layers." in name and ".self_attn." in name):
            packed.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        try:
            out[_rename(name)] = value
        except KeyError:
            raise ValueError(f"hf_to_ours: no rule for HF parameter '{name}'") from None
    for (prefix, kind), parts in packed.items():
        value = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], 0)
        if ".blocks." in prefix:  # Swin window attention: one qkv linear
            out[_rename(prefix + ".o_proj.")[: -len("proj.")] + f"qkv.{kind}"] = value
        else:  # decoder self-attention: nn.MultiheadAttention's packed in_proj
            layer = re.search(r"decoder\.layers\.(\d+)\.", prefix).group(1)
            out[f"sem_seg_head.predictor.transformer_self_attention_layers.{layer}.self_attn.in_proj_{kind}"] = value
    return out


def ours_to_hf(state_dict: Dict[str, torch.Tensor], hf_names: Dict[str, torch.Size]) -> Dict[str, torch.Tensor]:
    """Our MaskFormer state dict -> HF names (``hf_names``: the names and shapes of the HF model to fill, e.g.
    ``{k: v.shape for k, v in hf_model.state_dict().items()}``): every HF name is looked up through
    :func:`hf_to_ours`'s rules, packed projections split."""
    out = {}
    for name, shape in hf_names.items():
        if _SKIP.search(name):
            continue
        match = _PACKED_HF.match(name)
        if match is not None and (".blocks." in name or ".decoder.layers." in name and ".self_attn." in name):
            prefix, part, kind = match.groups()
            if ".blocks." in prefix:
                ours = _rename(prefix + ".o_proj.")[: -len("proj.")] + f"qkv.{kind}"
            else:
                layer = re.search(r"decoder\.layers\.(\d+)\.", prefix).group(1)
                ours = f"sem_seg_head.predictor.transformer_self_attention_layers.{layer}.self_attn.in_proj_{kind}"
            chunk = state_dict[ours].shape[0] // 3
            i = ("q_proj", "k_proj", "v_proj").index(part)
            out[name] = state_dict[ours][i * chunk:(i + 1) * chunk].clone()
        else:
            out[name] = state_dict[_rename(name)].clone()
        if tuple(out[name].shape) != tuple(shape):
            raise ValueError(f"ours_to_hf: '{name}' has shape {tuple(out[name].shape)} here, HF expects {tuple(shape)}")
    return out


def ours_to_hf_config(cfg) -> dict:
    """Keyword arguments of transformers' ``Mask2FormerConfig`` (and its ``SwinConfig``) for our config."""
    sw, head, mf = cfg.MODEL.SWIN, cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    if cfg.MODEL.BACKBONE.NAME != "D2SwinTransformer":
        raise ValueError(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME!r}: only Swin models are exported to HF")
    backbone = dict(embed_dim=sw.EMBED_DIM, depths=list(sw.DEPTHS), num_heads=list(sw.NUM_HEADS),
                    window_size=sw.WINDOW_SIZE, mlp_ratio=sw.MLP_RATIO, qkv_bias=sw.QKV_BIAS, patch_size=sw.PATCH_SIZE,
                    use_absolute_embeddings=sw.APE, image_size=sw.PRETRAIN_IMG_SIZE, drop_path_rate=sw.DROP_PATH_RATE,
                    out_features=["stage1", "stage2", "stage3", "stage4"])
    return dict(num_labels=head.NUM_CLASSES, feature_size=head.CONVS_DIM, mask_feature_size=head.MASK_DIM,
                encoder_layers=head.TRANSFORMER_ENC_LAYERS, encoder_feedforward_dim=1024,
                num_attention_heads=mf.NHEADS, hidden_dim=mf.HIDDEN_DIM, dim_feedforward=mf.DIM_FEEDFORWARD,
                num_queries=mf.NUM_OBJECT_QUERIES, decoder_layers=mf.DEC_LAYERS, pre_norm=mf.PRE_NORM,
                enforce_input_projection=mf.ENFORCE_INPUT_PROJ, common_stride=head.COMMON_STRIDE,
                no_object_weight=mf.NO_OBJECT_WEIGHT, class_weight=mf.CLASS_WEIGHT, mask_weight=mf.MASK_WEIGHT,
                dice_weight=mf.DICE_WEIGHT, train_num_points=mf.TRAIN_NUM_POINTS, backbone_config=backbone)


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("HuggingFace conversion needs transformers and safetensors: pip install transformers "
                          "safetensors (or `pip install -e .[hf]`)") from e
    return transformers


def read_hf_folder(folder: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(config.json as a dict, state dict) of a saved ``Mask2FormerForUniversalSegmentation`` folder.

    The weights are read by transformers' ``from_pretrained`` (safetensors, or pytorch_model.bin with
    weights_only), which also renames the older on-disk layouts (e.g. ``attention.self.query``) to the names
    its modules have, the names :func:`hf_to_ours` maps."""
    import json
    import os

    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"'{config_path}' does not exist: expected a HuggingFace model folder")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("model_type") != "mask2former":
        raise ValueError(f"'{config_path}': model_type is {config.get('model_type')!r}, expected 'mask2former'")
    model = _transformers().Mask2FormerForUniversalSegmentation.from_pretrained(folder)
    return config, model.state_dict()


def write_hf_folder(cfg, state_dict: Dict[str, torch.Tensor], folder: str, id2label: Dict[int, str] = None):
    """Save our model (config + state dict) as a ``Mask2FormerForUniversalSegmentation`` folder that
    ``from_pretrained`` loads; returns the HF model."""
    transformers = _transformers()
    kwargs = ours_to_hf_config(cfg)
    backbone = transformers.SwinConfig(**kwargs.pop("backbone_config"))
    if id2label:
        kwargs["id2label"] = {int(k): v for k, v in id2label.items()}
        kwargs["label2id"] = {v: int(k) for k, v in id2label.items()}
    config = transformers.Mask2FormerConfig(backbone_config=backbone, **kwargs)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    converted = ours_to_hf(state_dict, {k: v.shape for k, v in model.state_dict().items()})
    missing, unexpected = model.load_state_dict(converted, strict=False)
    left = [k for k in missing if not _SKIP.search(k)]
    if left or unexpected:
        raise ValueError(f"write_hf_folder: missing {left[:5]}, unexpected {list(unexpected)[:5]}")
    model.save_pretrained(folder)
    return model
