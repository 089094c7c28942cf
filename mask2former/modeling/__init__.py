"""Model components, registered in detectron2's registries on import."""
from .backbone.dat import D2DAT  # noqa: F401
from .backbone.swin import D2SwinTransformer  # noqa: F401
from .pixel_decoder.fpn import BasePixelDecoder  # noqa: F401
from .pixel_decoder.msdeform_pixel_decoder import MSDeformAttnPixelDecoder  # noqa: F401
from .heads.mask_former_head import MaskFormerHead  # noqa: F401
from .transformer_decoder.mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder  # noqa: F401
from .meta_arch.mask_former import MaskFormer  # noqa: F401
from .meta_arch.video_mask_former import VideoMaskFormer  # noqa: F401  (video: meta-arch + decoder)
from .meta_arch.mask_classifier import MaskClassifier  # noqa: F401  (classes for given masks)
