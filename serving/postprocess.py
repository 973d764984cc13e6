"""Turn the model's raw low-res outputs into API responses (runs on the CPU ingress).

The upsampling and binarisation are transformers' own post-processing functions, fed with
the instances the GPU replica kept, so served masks equal in-process transformers masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from transformers import Sam3Processor, Sam3TrackerProcessor

from sdk.masks import encode_mask
from sdk.schema import Instance, MaskFormat, SegmentResponse
from serving import negatives
from serving.predictor import RawDetections, RawPointMasks


@dataclass
class Found:
    """One instance before encoding.  `mask` covers the image from `origin` (x, y) on: the whole
    image, or a crop of it where instances are assembled from tiles."""

    score: float
    box: tuple[float, float, float, float]  # xyxy pixels of the whole image
    mask: np.ndarray  # bool
    label: str
    origin: tuple[int, int] = (0, 0)

    def full_mask(self, height: int, width: int) -> np.ndarray:
        if self.origin == (0, 0) and self.mask.shape == (height, width):
            return self.mask
        full = np.zeros((height, width), dtype=bool)
        x, y = self.origin
        h, w = self.mask.shape
        full[y:y + h, x:x + w] = self.mask
        return full


def found_instances(
    raws: list[RawDetections],
    queries: list[tuple[str, bool]],
    processor: Sam3Processor,
    *,
    height: int,
    width: int,
    threshold: float,
    mask_threshold: float,
    negative_iou: float,
    negative_containment: float,
) -> list[Found]:
    """The wanted instances of every (label, excluded) query on one image of `height` x `width`,
    minus those overlapping an instance of an excluded query."""
    wanted: list[Found] = []
    excluded: list[np.ndarray] = []
    for raw, (label, is_excluded) in zip(raws, queries, strict=True):
        outputs = SimpleNamespace(
            pred_logits=torch.from_numpy(raw.pred_logits)[None],
            pred_boxes=torch.from_numpy(raw.pred_boxes)[None],
            pred_masks=torch.from_numpy(raw.pred_masks)[None],
            presence_logits=torch.from_numpy(raw.presence_logits)[None],
        )
        (result,) = processor.post_process_instance_segmentation(
            outputs, threshold=threshold, mask_threshold=mask_threshold, target_sizes=[(height, width)]
        )
        masks = list(result["masks"].numpy().astype(bool))
        if is_excluded:
            excluded += masks
        else:
            wanted += [Found(float(score), _clip_box(box, width, height), mask, label)
                       for score, box, mask in zip(result["scores"].tolist(), result["boxes"].tolist(), masks)]
    if excluded and wanted:
        dropped = negatives.suppressed(negatives.rle([w.mask for w in wanted]), negatives.rle(excluded),
                                       iou=negative_iou, containment=negative_containment)
        wanted = [w for w, drop in zip(wanted, dropped) if not drop]
    return wanted


def segment_response(found: list[Found], *, height: int, width: int, mask_format: MaskFormat, model: str) -> SegmentResponse:
    """The response listing `found`, best first; each mask is made whole-image only while it is encoded."""
    instances = [
        Instance(mask=encode_mask(f.full_mask(height, width), mask_format), box=f.box, score=f.score, label=f.label)
        for f in sorted(found, key=lambda f: f.score, reverse=True)
    ]
    return SegmentResponse(width=width, height=height, instances=instances, model=model)


def point_masks_response(
    raw: RawPointMasks,
    processor: Sam3TrackerProcessor,
    *,
    height: int,
    width: int,
    mask_threshold: float,
    mask_format: MaskFormat,
    model: str,
) -> SegmentResponse:
    (masks,) = processor.post_process_masks(
        [torch.from_numpy(raw.masks)[None]], original_sizes=[(height, width)], mask_threshold=_logit(mask_threshold)
    )
    masks = masks[0].numpy()  # (K, H, W)
    instances = [
        Instance(mask=encode_mask(m, mask_format), box=mask_box(m), score=float(s), label="object")
        for m, s in zip(masks, raw.scores)
    ]
    return SegmentResponse(width=width, height=height, instances=instances, model=model)


def _logit(p: float) -> float:
    # post_process_masks thresholds mask logits; the API speaks in probabilities.
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


def _clip_box(box: list[float], width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
