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
    prompts: list[str]  # empty: the exemplar boxes alone
    boxes: list[list[float]] = field(default_factory=list)  # xyxy pixels
    box_labels: list[int] = field(default_factory=list)  # 1 positive, 0 negative
    threshold: float = 0.5
    negative_prompts: list[str] = field(default_factory=list)

    def queries(self) -> list[tuple[str, bool]]:
        """(text, excluded) of each detection this request needs on its image: the prompts
        (with the exemplar boxes), then the excluded concepts (text alone)."""
        wanted = self.prompts or [EXEMPLAR_ONLY_TEXT]
        return [(text, False) for text in wanted] + [(text, True) for text in self.negative_prompts]


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


# The tracker's feature maps of one image, (1, C, h, w) per level: what `Sam3TrackerModel.forward`
# takes as `image_embeddings` instead of pixels, so they can be kept and reused for later prompts.
ImageEmbedding = list[torch.Tensor]


@dataclass
class RawPointMasks:
    masks: np.ndarray  # (K, h, w) mask logits, K = 3 with multimask else 1
    scores: np.ndarray  # (K,) predicted IoU


@dataclass
class _Query:
    """One text (with its boxes) on one request's image: a row of a detector forward pass."""

    item: int
    slot: int
    text: str
    boxes: list[list[float]]
    box_labels: list[int]


def _rows(value, index: torch.Tensor):
    """`value` (a ModelOutput, tuple or tensor of per-image features) with batch rows `index`."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index)
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(v, index) for v in value)
    if isinstance(value, dict):  # transformers' ModelOutput
        return type(value)(**{k: _rows(v, index) for k, v in value.items()})
    return value


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
    def segment(self, items: Sequence[SegmentItem]) -> list[list[RawDetections]]:
        """For each item, one RawDetections per `item.queries()`, in that order.  Each image is
        encoded once however many prompts it comes with."""
        queries = [_Query(i, slot, text, [] if excluded else items[i].boxes, [] if excluded else items[i].box_labels)
                   for i, item in enumerate(items) for slot, (text, excluded) in enumerate(item.queries())]
        results: list[list[RawDetections | None]] = [[None] * len(item.queries()) for item in items]
        for idx in group_indices(queries, lambda q: len(q.boxes)):
            group = [queries[k] for k in idx]
            has_boxes = bool(group[0].boxes)
            inputs = self._to_model(self.m.processor(
                images=[items[q.item].image for q in group],
                text=[q.text for q in group],
                input_boxes=[q.boxes for q in group] if has_boxes else None,
                input_boxes_labels=[q.box_labels for q in group] if has_boxes else None,
                return_tensors="pt",
            ))
            pixel_values = inputs.pop("pixel_values")
            images = list(dict.fromkeys(q.item for q in group))  # each image once, in order
            first_row = {item: [q.item for q in group].index(item) for item in images}
            vision = self.m.detector.get_vision_features(pixel_values=pixel_values[[first_row[i] for i in images]])
            row_image = torch.tensor([images.index(q.item) for q in group], device=pixel_values.device)
            out = self.m.detector(vision_embeds=_rows(vision, row_image), **inputs)
            logits = out.pred_logits.float()
            presence = out.presence_logits.float()
            scores = logits.sigmoid() * presence.sigmoid()
            for row, q in enumerate(group):
                keep = scores[row] > items[q.item].threshold
                results[q.item][q.slot] = RawDetections(
                    pred_logits=logits[row][keep].cpu().numpy(),
                    pred_boxes=out.pred_boxes[row][keep].float().cpu().numpy(),
                    pred_masks=out.pred_masks[row][keep].float().cpu().numpy(),
                    presence_logits=presence[row].cpu().numpy(),
                )
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def embed(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """Each image through the tracker's vision encoder (the expensive part of a point prompt)."""
        pixel_values = self.m.tracker_processor(images=list(images), return_tensors="pt")["pixel_values"]
        levels = self.m.tracker.get_image_embeddings(pixel_values.to(self.m.device, self.m.dtype))
        return [[level[i : i + 1] for level in levels] for i in range(len(images))]

    @torch.inference_mode()
    def segment_points(
        self, items: Sequence[PointsItem], embeddings: Sequence[ImageEmbedding] | None = None
    ) -> list[RawPointMasks]:
        """`embeddings`: each item's image embedding from `embed` (e.g. kept from an earlier
        prompt on the same image); encoded here when not given."""
        if embeddings is None:
            embeddings = self.embed([it.image for it in items])
        results: list[RawPointMasks | None] = [None] * len(items)
        key = lambda it: (len(it.points), it.box is not None, it.multimask)  # noqa: E731
        for idx in group_indices(items, key):
            group = [items[i] for i in idx]
            first = group[0]
            inputs = self.m.tracker_processor(
                original_sizes=[list(it.image.shape[:2]) for it in group],
                input_points=[[it.points] for it in group] if first.points else None,
                input_labels=[[it.point_labels] for it in group] if first.points else None,
                input_boxes=[[it.box] for it in group] if first.box is not None else None,
                return_tensors="pt",
            )
            image_embeddings = [torch.cat(level) for level in zip(*(embeddings[i] for i in idx))]
            out = self.m.tracker(**self._to_model(inputs), image_embeddings=image_embeddings,
                                 multimask_output=first.multimask)
            masks = out.pred_masks.float()  # (B, objects=1, K, h, w)
            scores = out.iou_scores.float()  # (B, 1, K)
            for row, i in enumerate(idx):
                results[i] = RawPointMasks(masks=masks[row, 0].cpu().numpy(), scores=scores[row, 0].cpu().numpy())
        return results  # type: ignore[return-value]
