"""SAM3 inference on a batch of requests: pre-process, model, filter.  No Ray, no HTTP.

The model deployment wraps this; tests and benchmarks call it in-process.  It returns the
model's raw low-resolution outputs for the instances that pass the score threshold; the
ingress upsamples and encodes them (`serving.postprocess`), off the GPU replica.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence, TypeVar

import numpy as np
import torch

from serving.model_loader import LoadedSam3

T = TypeVar("T")

EXEMPLAR_ONLY_TEXT = "visual"  # what Sam3Processor feeds the text encoder when only boxes are given


@dataclass
class SegmentItem:
    image: np.ndarray  # HxWx3 uint8, EXIF-orientation applied
    prompt: str | None
    boxes: list[list[float]] = field(default_factory=list)  # xyxy pixels
    box_labels: list[int] = field(default_factory=list)  # 1 positive, 0 negative
    threshold: float = 0.5


@dataclass
class RawDetections:
    """Kept queries of one image, exactly as Sam3Model outputs them (low-res, logits)."""

    pred_logits: np.ndarray  # (N,)
    pred_boxes: np.ndarray  # (N, 4) normalised xyxy
    pred_masks: np.ndarray  # (N, h, w) mask logits
    presence_logits: np.ndarray  # (1,)


@dataclass
class PointsItem:
    image: np.ndarray
    points: list[list[float]] = field(default_factory=list)  # xy pixels
    point_labels: list[int] = field(default_factory=list)  # 1 positive, 0 negative
    box: list[float] | None = None
    multimask: bool = False


@dataclass
class RawPointMasks:
    masks: np.ndarray  # (K, h, w) mask logits, K = 3 with multimask else 1
    scores: np.ndarray  # (K,) predicted IoU


def group_indices(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[int]]:
    """Indices of items that can share one forward pass without padding.

    Padding prompts changes the attention inputs, so only same-shaped prompts are batched:
    a batched request then gives the same result as the request alone.
    """
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[key(item)].append(index)
    return list(groups.values())


class Sam3Predictor:
    def __init__(self, loaded: LoadedSam3):
        self.m = loaded

    def _to_model(self, inputs) -> dict:
        floating = {"pixel_values"}
        return {
            k: (v.to(self.m.device, self.m.dtype) if k in floating else v.to(self.m.device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor) and k != "original_sizes"
        }

    @torch.inference_mode()
    def segment(self, items: Sequence[SegmentItem]) -> list[RawDetections]:
        results: list[RawDetections | None] = [None] * len(items)
        for idx in group_indices(items, lambda it: len(it.boxes)):
            group = [items[i] for i in idx]
            has_boxes = bool(group[0].boxes)
            inputs = self.m.processor(
                images=[it.image for it in group],
                text=[it.prompt or EXEMPLAR_ONLY_TEXT for it in group],
                input_boxes=[it.boxes for it in group] if has_boxes else None,
                input_boxes_labels=[it.box_labels for it in group] if has_boxes else None,
                return_tensors="pt",
            )
            out = self.m.detector(**self._to_model(inputs))
            logits = out.pred_logits.float()
            presence = out.presence_logits.float()
            scores = logits.sigmoid() * presence.sigmoid()
            for row, i in enumerate(idx):
                keep = scores[row] > items[i].threshold
                results[i] = RawDetections(
                    pred_logits=logits[row][keep].cpu().numpy(),
                    pred_boxes=out.pred_boxes[row][keep].float().cpu().numpy(),
                    pred_masks=out.pred_masks[row][keep].float().cpu().numpy(),
                    presence_logits=presence[row].cpu().numpy(),
                )
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def segment_points(self, items: Sequence[PointsItem]) -> list[RawPointMasks]:
        results: list[RawPointMasks | None] = [None] * len(items)
        key = lambda it: (len(it.points), it.box is not None, it.multimask)  # noqa: E731
        for idx in group_indices(items, key):
            group = [items[i] for i in idx]
            first = group[0]
            inputs = self.m.tracker_processor(
                images=[it.image for it in group],
                input_points=[[it.points] for it in group] if first.points else None,
                input_labels=[[it.point_labels] for it in group] if first.points else None,
                input_boxes=[[it.box] for it in group] if first.box is not None else None,
                return_tensors="pt",
            )
            out = self.m.tracker(**self._to_model(inputs), multimask_output=first.multimask)
            masks = out.pred_masks.float()  # (B, objects=1, K, h, w)
            scores = out.iou_scores.float()  # (B, 1, K)
            for row, i in enumerate(idx):
                results[i] = RawPointMasks(masks=masks[row, 0].cpu().numpy(), scores=scores[row, 0].cpu().numpy())
        return results  # type: ignore[return-value]
