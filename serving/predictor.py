"""SAM3 inference on a batch of requests: model inputs, model, filter.  No Ray, no HTTP.

The model deployment wraps this; tests and benchmarks call it in-process.  Images arrive
already resized to the model's input size (`model_image`, run on the CPU ingress), so the
replica moves ~3 MB per image instead of a decoded photo, and only normalises and runs the
model.  It returns the model's raw low-resolution outputs for the instances that pass the score
threshold, each mask cut to where it can be foreground (`serving.upsampling`); the ingress
upsamples and encodes them (`serving.postprocess`), off the GPU replica.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from serving.model_loader import LoadedSam3
from serving.text_features import TextFeatureCache
from serving.upsampling import MaskWindow, support_windows

T = TypeVar("T")

EXEMPLAR_ONLY_TEXT = "visual"  # what Sam3Processor feeds the text encoder when only boxes are given


@dataclass
class ModelImage:
    """An image as the model needs it: resized to the processor's input size, not yet normalised
    (uint8, so 3 MB for SAM3's 1008x1008), with the size of the image it came from, which
    prompts are given in and masks are upsampled to."""

    pixels: np.ndarray  # (3, h, w) uint8; numpy, which Ray passes between processes without a copy
    original_size: tuple[int, int]  # (height, width)


def model_image(image: np.ndarray, processor) -> ModelImage:
    """`image` (HxWx3 uint8) resized exactly as `processor` (a Sam3Processor or
    Sam3TrackerProcessor) resizes it: the processor given these pixels computes the same
    pixel_values it computes from the original image."""
    images = processor.image_processor
    with warnings.catch_warnings():
        # The decoded photo is PIL's read-only buffer (no copy of 36 MB at 12 MP); the resize only
        # reads it, so torch's warning about writing to it does not apply.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return ModelImage(images.resize(pixels, size=images.size, resample=images.resample).numpy(), image.shape[:2])


def pixel_values(images: Sequence[ModelImage], processor) -> torch.Tensor:
    """The normalised model input of prepared images (the processor's own rescale and normalise)."""
    return processor.image_processor(
        images=[torch.from_numpy(i.pixels) for i in images], do_resize=False, return_tensors="pt"
    )["pixel_values"]


@dataclass
class SegmentItem:
    image: ModelImage
    prompts: list[str]  # empty: the exemplar boxes alone
    boxes: list[list[float]] = field(default_factory=list)  # xyxy pixels of the original image
    box_labels: list[int] = field(default_factory=list)  # 1 positive, 0 negative
    threshold: float = 0.5
    negative_prompts: list[str] = field(default_factory=list)
    mask_threshold: float = 0.5  # mask probability; the replica keeps each mask where it can pass it

    def queries(self) -> list[tuple[str, bool]]:
        """(text, excluded) of each detection this request needs on its image: the prompts
        (with the exemplar boxes), then the excluded concepts (text alone)."""
        wanted = self.prompts or [EXEMPLAR_ONLY_TEXT]
        return [(text, False) for text in wanted] + [(text, True) for text in self.negative_prompts]


@dataclass
class RawDetections:
    """Kept queries of one image, exactly as Sam3Model outputs them (low-res, logits), each mask
    only where it can pass the request's mask threshold."""

    pred_logits: np.ndarray  # (N,)
    pred_boxes: np.ndarray  # (N, 4) normalised xyxy
    presence_logits: np.ndarray  # (1,)
    mask_size: tuple[int, int]  # the model's low-res mask grid (h, w)
    masks: list[MaskWindow]  # (N,)

    @classmethod
    def of(
        cls,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        pred_masks: torch.Tensor,
        presence_logits: torch.Tensor,
        mask_threshold: float,
    ) -> RawDetections:
        """From one image's kept model outputs (any device): (N,), (N, 4), (N, h, w), (1,)."""
        return cls(
            pred_logits=pred_logits.float().cpu().numpy(),
            pred_boxes=pred_boxes.float().cpu().numpy(),
            presence_logits=presence_logits.float().cpu().numpy(),
            mask_size=(int(pred_masks.shape[-2]), int(pred_masks.shape[-1])),
            masks=support_windows(pred_masks, mask_threshold, probabilities=True),
        )


@dataclass
class PointsItem:
    image: ModelImage
    points: list[list[float]] = field(default_factory=list)  # xy pixels of the original image
    point_labels: list[int] = field(default_factory=list)  # 1 positive, 0 negative
    box: list[float] | None = None
    multimask: bool = False
    mask_logit_threshold: float = 0.0  # the replica keeps each mask where it can pass it
    image_key: str = ""  # serving.embedding_cache.image_key of `image`; "" when the cache is off


# The tracker's feature maps of one image, (1, C, h, w) per level: what `Sam3TrackerModel.forward`
# takes as `image_embeddings` instead of pixels, so they can be kept and reused for later prompts.
ImageEmbedding = list[torch.Tensor]


@dataclass
class RawPointMasks:
    mask_size: tuple[int, int]  # the tracker's low-res mask grid (h, w)
    masks: list[MaskWindow]  # (K,) mask logits where they can pass the threshold; K = 3 with multimask else 1
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
    def __init__(self, loaded: LoadedSam3, text_cache_entries: int = 0):
        self.m = loaded
        self.texts = TextFeatureCache(loaded.detector, loaded.processor, text_cache_entries)

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
        queries = [
            _Query(i, slot, text, [] if excluded else items[i].boxes, [] if excluded else items[i].box_labels)
            for i, item in enumerate(items)
            for slot, (text, excluded) in enumerate(item.queries())
        ]
        results: dict[tuple[int, int], RawDetections] = {}  # (item, slot): every slot is filled below
        for idx in group_indices(queries, lambda q: len(q.boxes)):
            group = [queries[k] for k in idx]
            has_boxes = bool(group[0].boxes)
            images = list(dict.fromkeys(q.item for q in group))  # each image once, in order
            inputs = self._to_model(
                self.m.processor(
                    original_sizes=[items[q.item].image.original_size for q in group],
                    input_boxes=[q.boxes for q in group] if has_boxes else None,
                    input_boxes_labels=[q.box_labels for q in group] if has_boxes else None,
                    return_tensors="pt",
                )
            )
            # Text comes from the cache below; the processor tokenises a placeholder for boxes alone.
            inputs.pop("input_ids", None)
            inputs.pop("attention_mask", None)
            pixels = pixel_values([items[i].image for i in images], self.m.processor)
            vision = self.m.detector.get_vision_features(pixel_values=pixels.to(self.m.device, self.m.dtype))
            row_image = torch.tensor([images.index(q.item) for q in group], device=self.m.device)
            text = self.texts.features([q.text for q in group], self.m.device)
            out = self.m.detector(
                vision_embeds=_rows(vision, row_image),
                text_embeds=text.embeds,
                attention_mask=text.attention_mask,
                **inputs,
            )
            logits = out.pred_logits.float()
            presence = out.presence_logits.float()
            scores = logits.sigmoid() * presence.sigmoid()
            for row, q in enumerate(group):
                item = items[q.item]
                keep = scores[row] > item.threshold
                results[q.item, q.slot] = RawDetections.of(
                    logits[row][keep],
                    out.pred_boxes[row][keep],
                    out.pred_masks[row][keep],
                    presence[row],
                    item.mask_threshold,
                )
        return [[results[i, slot] for slot in range(len(item.queries()))] for i, item in enumerate(items)]

    @torch.inference_mode()
    def embed(self, images: Sequence[ModelImage]) -> list[ImageEmbedding]:
        """Each image through the tracker's vision encoder (the expensive part of a point prompt)."""
        pixels = pixel_values(images, self.m.tracker_processor)
        levels = self.m.tracker.get_image_embeddings(pixels.to(self.m.device, self.m.dtype))
        return [[level[i : i + 1] for level in levels] for i in range(len(images))]

    @torch.inference_mode()
    def segment_points(
        self, items: Sequence[PointsItem], embeddings: Sequence[ImageEmbedding] | None = None
    ) -> list[RawPointMasks]:
        """`embeddings`: each item's image embedding from `embed` (e.g. kept from an earlier
        prompt on the same image); encoded here when not given."""
        if embeddings is None:
            embeddings = self.embed([it.image for it in items])
        results: dict[int, RawPointMasks] = {}  # every item is filled below

        def same_shape(it: PointsItem) -> tuple[int, bool, bool]:
            return len(it.points), it.box is not None, it.multimask

        for idx in group_indices(items, same_shape):
            group = [items[i] for i in idx]
            first = group[0]
            inputs = self.m.tracker_processor(
                original_sizes=[list(it.image.original_size) for it in group],
                input_points=[[it.points] for it in group] if first.points else None,
                input_labels=[[it.point_labels] for it in group] if first.points else None,
                input_boxes=[[it.box] for it in group] if first.box is not None else None,
                return_tensors="pt",
            )
            image_embeddings = [torch.cat(level) for level in zip(*(embeddings[i] for i in idx), strict=True)]
            out = self.m.tracker(
                **self._to_model(inputs), image_embeddings=image_embeddings, multimask_output=first.multimask
            )
            masks = out.pred_masks  # (B, objects=1, K, h, w)
            scores = out.iou_scores.float()  # (B, 1, K)
            for row, i in enumerate(idx):
                results[i] = RawPointMasks(
                    mask_size=(int(masks.shape[-2]), int(masks.shape[-1])),
                    masks=support_windows(masks[row, 0], items[i].mask_logit_threshold, probabilities=False),
                    scores=scores[row, 0].cpu().numpy(),
                )
        return [results[i] for i in range(len(items))]
