"""Thing classes from image crops of each mask's box, all resized to one size.

A dense model sees every object at its own scale. Where the thing classes differ by outline only (shapes world),
a network trained from scratch learns them several times faster from box crops resized to one size than from
windows at the objects' own scale (docs/RESULTS.md, "Classes from box crops"). This head is such a classifier:
trained on the ground-truth boxes of the training batch, and at inference run on the box of every query's
predicted mask, its class distribution refines the query's distribution over the thing classes.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..transformer_decoder.query_groups import mask_boxes


def square_boxes(boxes: torch.Tensor, context: float) -> torch.Tensor:
    """Square boxes (..., 4) with the same centres and sides max(w, h) * (1 + context): the aspect ratio stays."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]).amax(-1, keepdim=True).clamp(min=1.0) * (1 + context) / 2
    return torch.cat([centre - half, centre + half], -1)


def _conv(cin: int, cout: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CropClassifier(nn.Module):
    """A small CNN that classifies square image crops around boxes into the thing classes.

    Args:
        thing_ids: contiguous ids of the thing classes among the model's K classes; the head predicts these.
        num_classes: K, the model's number of classes (without "no object").
        size: side of the crops in pixels after resizing.
        widths: channels of the three stages (the second and third halve the resolution, and a last
            convolution halves it once more before global averaging).
        context: the square crop's side is the box's longer side times (1 + context).
        max_crops: training crops per batch at most (a random subset of the ground-truth things).
    """

    def __init__(self, thing_ids: Sequence[int], num_classes: int, *, size: int = 32,
                 widths: Sequence[int] = (32, 64, 128), context: float = 0.15, max_crops: int = 64):
        super().__init__()
        if not thing_ids:
            raise ValueError("the crop classifier (MODEL.MASK_FORMER.CROP_CLASSIFIER) needs thing classes; the "
                             "dataset metadata lists none (thing_dataset_id_to_contiguous_id)")
        if size < 8 or max_crops < 1:
            raise ValueError(f"MODEL.MASK_FORMER.CROP_CLASSIFIER: SIZE must be >= 8 and MAX_CROPS >= 1, got "
                             f"{size} and {max_crops}")
        a, b, c = widths
        self.net = nn.Sequential(*_conv(3, a, 1), *_conv(a, a, 1), *_conv(a, b, 2), *_conv(b, b, 1),
                                 *_conv(b, c, 2), *_conv(c, c, 1), *_conv(c, c, 2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, len(thing_ids)))
        self.size, self.context, self.max_crops = size, context, max_crops
        thing_ids = torch.as_tensor(list(thing_ids))
        lookup = torch.full((num_classes + 1,), -1, dtype=torch.long)
        lookup[thing_ids] = torch.arange(len(thing_ids))
        self.register_buffer("thing_ids", thing_ids, False)
        self.register_buffer("class_to_thing", lookup, False)

    def crops(self, images: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """(B, 3, SIZE, SIZE) square crops around boxes (B, 4) of images[image_index] (N, 3, H, W)."""
        from torchvision.ops import roi_align

        rois = torch.cat([image_index[:, None].float(), square_boxes(boxes.float(), self.context)], 1)
        return roi_align(images.float().contiguous(), rois, self.size, spatial_scale=1.0, sampling_ratio=2,
                         aligned=True)

    def loss(self, images: torch.Tensor, targets: List[dict]) -> torch.Tensor:
        """Cross-entropy on the ground-truth things' boxes (jittered, a random subset of at most MAX_CROPS)."""
        boxes, labels, image_index = [], [], []
        for i, t in enumerate(targets):
            thing = self.class_to_thing[t["labels"]]
            keep = (thing >= 0) & t["masks"].flatten(1).any(1)  # a thing cropped away has no box
            boxes.append(mask_boxes(t["masks"][keep]))
            labels.append(thing[keep])
            image_index.append(torch.full_like(labels[-1], i))
        boxes, labels, image_index = torch.cat(boxes), torch.cat(labels), torch.cat(image_index)
        if len(labels) == 0:
            return sum(p.sum() for p in self.parameters()) * 0.0  # every parameter in the graph (DDP)
        chosen = torch.randperm(len(labels), device=labels.device)[: self.max_crops]
        boxes, labels, image_index = boxes[chosen], labels[chosen], image_index[chosen]
        # Jitter like the predicted masks' boxes at inference: the centre by up to 10 % of the longer side, the
        # sides by a factor in [0.9, 1.15].
        side = (boxes[:, 2:] - boxes[:, :2]).amax(-1, keepdim=True)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + (torch.rand_like(boxes[:, :2]) - 0.5) * 0.2 * side
        half = (boxes[:, 2:] - boxes[:, :2]) / 2 * (0.9 + 0.25 * torch.rand_like(side))
        crops = self.crops(images, torch.cat([centre - half, centre + half], -1), image_index)
        flip = torch.rand(len(crops), device=crops.device) < 0.5
        crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
        return F.cross_entropy(self.net(crops).float(), labels)

    def refine(self, images: torch.Tensor, pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
        """The queries' class log-probabilities with the thing classes refined by the crops of their masks' boxes.

        Args:
            images: (N, 3, H, W) the normalised padded batch.
            pred_logits: (N, Q, K+1) class logits; pred_masks: (N, Q, h, w) mask logits at any resolution.
        Returns:
            (N, Q, K+1) log-probabilities (a valid input to softmax): each query keeps its probability of
            "no object" and of every stuff class and its total over the things, shared among the things in
            proportion to the product of its own and the crop classifier's probabilities.
        """
        n, q = pred_logits.shape[:2]
        scale = torch.tensor([images.shape[-1] / pred_masks.shape[-1], images.shape[-2] / pred_masks.shape[-2]],
                             device=images.device).repeat(2)
        boxes = mask_boxes((pred_masks > 0).flatten(0, 1)) * scale
        image_index = torch.arange(n, device=images.device).repeat_interleave(q)
        crop_logp = self.net(self.crops(images, boxes, image_index)).float().log_softmax(-1).view(n, q, -1)
        logp = pred_logits.float().log_softmax(-1)
        things = logp[..., self.thing_ids]
        joint = things + crop_logp
        joint = joint - joint.logsumexp(-1, keepdim=True) + things.logsumexp(-1, keepdim=True)
        return logp.index_copy(-1, self.thing_ids, joint).to(pred_logits.dtype)
