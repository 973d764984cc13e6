"""Turn the model's raw low-res outputs into API responses (runs on the CPU ingress).

Scores and boxes come from transformers' own post-processing; each mask is upsampled by
`serving.upsampling` only where it can be foreground, exactly as transformers' whole-image
upsampling would give it, and is kept as a crop with its position: one instance at a time, in
time and memory proportional to the object, however large the photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from transformers import Sam3Processor

from sdk.masks import RunMask
from sdk.schema import Instance, Mask, MaskFormat, RleMask, SegmentResponse
from serving import negatives
from serving.predictor import RawDetections, RawPointMasks
from serving.upsampling import upsample_windows


@dataclass
class Found:
    """One instance before encoding; its mask is kept as runs (sdk.masks.RunMask), never as an
    image-sized array."""

    score: float
    box: tuple[float, float, float, float]  # xyxy pixels of the whole image
    mask: RunMask
    label: str
    _encoded: dict[MaskFormat, Mask] = field(default_factory=dict, init=False, repr=False, compare=False)

    def encoded(self, mask_format: MaskFormat) -> Mask:
        """The wire mask, computed once per format."""
        if mask_format not in self._encoded:
            self._encoded[mask_format] = self.mask.encode(mask_format)
        return self._encoded[mask_format]

    def rle(self) -> dict:
        """pycocotools' RLE dict, for mask overlaps."""
        rle = self.encoded("rle")
        assert isinstance(rle, RleMask)
        return {"size": list(rle.size), "counts": rle.counts.encode("ascii")}


def found_instances(
    raws: list[RawDetections],
    queries: list[tuple[str, bool]],
    processor: Sam3Processor,
    *,
    height: int,
    width: int,
    mask_threshold: float,
    negative_iou: float,
    negative_containment: float,
) -> list[Found]:
    """The instances of every (label, excluded) query on one image of `height` x `width` (the
    replica kept those above the score threshold), minus those overlapping an instance of an
    excluded query."""
    wanted: list[Found] = []
    excluded: list[Found] = []
    for raw, (label, is_excluded) in zip(raws, queries, strict=True):
        found = _detections(raw, processor, label, height, width, mask_threshold)
        (excluded if is_excluded else wanted).extend(found)
    if excluded and wanted:
        dropped = negatives.suppressed(
            [w.rle() for w in wanted], [e.rle() for e in excluded], iou=negative_iou, containment=negative_containment
        )
        wanted = [w for w, drop in zip(wanted, dropped, strict=True) if not drop]
    return wanted


def _detections(
    raw: RawDetections, processor: Sam3Processor, label: str, height: int, width: int, mask_threshold: float
) -> list[Found]:
    outputs = SimpleNamespace(
        pred_logits=torch.from_numpy(raw.pred_logits)[None],
        pred_boxes=torch.from_numpy(raw.pred_boxes)[None],
        presence_logits=torch.from_numpy(raw.presence_logits)[None],
    )
    # The replica already applied the score threshold: every row it sent is kept.
    (result,) = processor.image_processor.post_process_object_detection(
        outputs, threshold=-math.inf, target_sizes=[(height, width)]
    )
    masks = upsample_windows(raw.masks, raw.mask_size, (height, width), mask_threshold, probabilities=True)
    return [
        Found(score, _clip_box(box, width, height), mask, label)
        for score, box, mask in zip(result["scores"].tolist(), result["boxes"].tolist(), masks, strict=True)
    ]


def segment_response(
    found: list[Found], *, height: int, width: int, mask_format: MaskFormat, model: str
) -> SegmentResponse:
    """The response listing `found`, best first."""
    instances = [
        Instance.model_construct(mask=f.encoded(mask_format), box=f.box, score=f.score, label=f.label)
        for f in sorted(found, key=lambda f: f.score, reverse=True)
    ]
    return SegmentResponse.model_construct(width=width, height=height, instances=instances, model=model)


def point_masks_response(
    raw: RawPointMasks, *, height: int, width: int, mask_threshold: float, mask_format: MaskFormat, model: str
) -> SegmentResponse:
    """As the tracker's `post_process_masks` thresholds the upsampled logits, crop by crop."""
    masks = upsample_windows(raw.masks, raw.mask_size, (height, width), logit(mask_threshold), probabilities=False)
    instances = [
        Instance.model_construct(mask=mask.encode(mask_format), box=run_box(mask), score=float(score), label="object")
        for mask, score in zip(masks, raw.scores, strict=True)
    ]
    return SegmentResponse.model_construct(width=width, height=height, instances=instances, model=model)


def logit(p: float) -> float:
    """The mask-logit threshold of a mask probability (the tracker thresholds logits)."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


def _clip_box(box: list[float], width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def run_box(mask: RunMask) -> tuple[float, float, float, float]:
    """xyxy of a mask's pixels; zeros when it has none."""
    box = mask.box()
    return (0.0, 0.0, 0.0, 0.0) if box is None else (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
