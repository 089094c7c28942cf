"""The image network as one graph for deployment (ONNX; see tools/export_model.py and docs/MODEL_ZOO.md).

:class:`ExportableMaskFormer` wraps a :class:`~mask2former.modeling.meta_arch.mask_former.MaskFormer`:

    image (1, 3, H, W) float32, raw pixel values in INPUT.FORMAT (normalisation happens inside)
      -> pred_logits (1, Q, K+1)   class logits of the last decoder layer (the last is "no object")
         pred_masks  (1, Q, H'/4, W'/4)   mask logits, H' and W' = H and W padded up to a multiple of the
                                          model's size divisibility (32): for such H, W exactly H/4, W/4

Post-processing (not in the graph; it is data-dependent) is what MaskFormer.inference_single does: upsample
pred_masks bilinearly to (H', W'), crop to (H, W), then semantic = einsum("qc,qhw->chw", softmax(logits)[:, :-1],
sigmoid(masks)); panoptic / instance as in mask2former/modeling/postprocessing.py.
"""
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .modeling.pixel_decoder.deformable_attention import MSDeformAttn

__all__ = ["ExportableMaskFormer", "export_onnx"]


class ExportableMaskFormer(nn.Module):
    """Normalise, pad, backbone, pixel decoder, transformer decoder: the tensors in, the last layer's queries out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().view(1, -1, 1, 1), False)
        self.size_divisibility = int(model.size_divisibility)
        self.crop_classifier = getattr(model, "crop_classifier", None)

    def forward(self, image: torch.Tensor):
        x = (image - self.pixel_mean) / self.pixel_std
        if self.size_divisibility > 1:
            d = self.size_divisibility
            h, w = x.shape[-2:]
            # zeros after normalisation, as ImageList.from_tensors pads
            x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
        outputs = self.sem_seg_head(self.backbone(x))
        logits = outputs["pred_logits"]
        if self.crop_classifier is not None:  # MODEL.MASK_FORMER.CROP_CLASSIFIER: log-probabilities, as in inference
            logits = self.crop_classifier.refine(x, logits, outputs["pred_masks"])
        return logits, outputs["pred_masks"]


def export_onnx(model: nn.Module, path: str, height: int, width: int, opset: int = 17) -> None:
    """Write ``model`` (a MaskFormer) to ``path`` as ONNX with dynamic height and width (example input
    ``height`` x ``width``); inputs and outputs as in the module docstring."""
    wrapper = ExportableMaskFormer(model).eval()
    example = torch.rand(1, 3, height, width) * 255
    # The graph holds the pure-PyTorch deformable attention (grid_sample, which ONNX has): the fused kernels are
    # custom ops that onnxruntime does not know.
    layers = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    impls = [m.impl for m in layers]
    for m in layers:
        m.impl = "pytorch"
    # The tracer warns about every Python value derived from a tensor; the ones here are checked (the graph is
    # compared with PyTorch at other sizes in tests/test_export_onnx.py), so the warnings say nothing actionable.
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # The TorchScript-based exporter is chosen on purpose (dynamo=False: it keeps height and width
            # dynamic through the Python-side size arithmetic); torch's notices about it are not for the user.
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
            torch.onnx.export(
                wrapper, (example,), path, input_names=["image"], output_names=["pred_logits", "pred_masks"],
                dynamic_axes={"image": {2: "height", 3: "width"}, "pred_masks": {2: "mask_height", 3: "mask_width"}},
                opset_version=opset, dynamo=False, do_constant_folding=False,
            )
    finally:
        for m, impl in zip(layers, impls):
            m.impl = impl
