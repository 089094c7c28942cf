"""Pixel-decoder factory: the registry lookup behind MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME."""
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY


def build_pixel_decoder(cfg, input_shape):
    """Build the pixel decoder named by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    try:
        decoder_cls = SEM_SEG_HEADS_REGISTRY.get(name)
    except KeyError:
        raise KeyError(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME '{name}' is not registered in "
                       "SEM_SEG_HEADS_REGISTRY") from None
    model = decoder_cls(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME '{name}' has no forward_features(); "
                         "it is not a pixel decoder")
    return model
