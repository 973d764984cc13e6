"""What one /v1/segment request runs: the model items it needs (the image, its tiles, or the
image composed with a reference), and how their outputs become the request's instances.

Kept apart from the ingress so that tests drive the same planning and merging with the
in-process predictor or a test double in place of the model deployment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from transformers import Sam3Processor

from sdk.schema import Limits, SegmentParams
from serving import reference, tiling
from serving.errors import ServiceError
from serving.http import check_box_inside
from serving.images import stands_for
from serving.postprocess import Found, found_instances
from serving.predictor import ModelImage, RawDetections, SegmentItem

EXEMPLAR_LABEL = "exemplar"


@dataclass
class SegmentJob:
    params: SegmentParams
    size: tuple[int, int]  # (height, width) of the photo the answer is for
    items: list[SegmentItem]  # one per window
    windows: list[tiling.Window]
    composite: reference.Composite | None

    def finish(self, raws: list[list[RawDetections]], processor: Sam3Processor) -> list[Found]:
        """The request's instances from the model's outputs for `items`, in the whole image."""
        item = self.items[0]
        # Instances found by the exemplar boxes alone are labelled as such, not with the
        # placeholder text the model was given.
        labels = [(text if item.prompts or excluded else EXEMPLAR_LABEL, excluded) for text, excluded in item.queries()]
        found = [
            found_instances(
                raw,
                labels,
                processor,
                height=it.image.original_size[0],
                width=it.image.original_size[1],
                mask_threshold=self.params.mask_threshold,
                negative_iou=self.params.negative_iou,
                negative_containment=self.params.negative_containment,
            )
            for raw, it in zip(raws, self.items, strict=True)
        ]
        if self.composite is not None:
            return reference.on_target(found[0], self.composite)
        if self.params.tiling is not None and len(self.windows) > 1:  # several windows only when tiling
            return tiling.merge_tiles(found, self.windows, self.params.tiling.merge_iou)
        return found[0]


def plan_segment(
    image: np.ndarray,
    params: SegmentParams,
    limits: Limits,
    prepare: Callable[[np.ndarray], ModelImage],
    reference_image: np.ndarray | None = None,
) -> SegmentJob:
    """The job for `params` on `image`, each window's pixels made ready for the model by `prepare`
    (`predictor.model_image` with the model's processor); ServiceError (422) for boxes outside
    their image, reference exemplars without a reference image (or the reverse), or too many tiles.
    A reduced upload (`params.original_size`) is planned as the photo it stands for: boxes are
    checked against it and its one item answers at its size."""
    height, width = size = stands_for(image, params.original_size, limits)
    for i, ex in enumerate(params.exemplars):
        check_box_inside(f"exemplars.{i}.box", ex.box, width, height)
    exemplars = params.exemplars
    boxes = [ex.box.xyxy() for ex in params.exemplars]
    composite = None
    if params.reference_exemplars or reference_image is not None:
        composite = _composite(image, params, reference_image)
        exemplars = params.exemplars + params.reference_exemplars
        boxes += composite.boxes
        image = composite.image
        height, width = image.shape[:2]
    windows = [tiling.Window(0, 0, image.shape[1], image.shape[0])]
    if params.tiling:  # never with a reduced upload (the schema refuses it): width, height are the image's
        count = tiling.window_count(width, height, params.tiling)
        if count > limits.max_tiles:  # one window is always within the limit (max_tiles > 0)
            raise ServiceError(
                422,
                "too_many_tiles",
                f"{width}x{height} in tiles of {params.tiling.tile_size} "
                f"with overlap {params.tiling.overlap} makes {count} tiles; "
                f"the limit is {limits.max_tiles}",
                "tiling",
            )
        windows = tiling.plan(width, height, params.tiling)
    items = [
        SegmentItem(
            image=replace(prepare(image), original_size=size) if params.original_size else prepare(window.crop(image)),
            prompts=params.texts(),
            boxes=boxes,
            box_labels=[int(ex.label == "positive") for ex in exemplars],
            threshold=params.threshold,
            negative_prompts=params.negative_prompts,
            mask_threshold=params.mask_threshold,
        )
        for window in windows
    ]
    return SegmentJob(params, size, items, windows, composite)


def _composite(image: np.ndarray, params: SegmentParams, reference_image: np.ndarray | None) -> reference.Composite:
    if reference_image is None:
        raise ServiceError(422, "invalid_request", "reference_exemplars need a reference_image", "reference_image")
    if not params.reference_exemplars:
        raise ServiceError(
            422, "invalid_request", "a reference_image needs reference_exemplars (boxes on it)", "reference_exemplars"
        )
    ref_h, ref_w = reference_image.shape[:2]
    for i, ex in enumerate(params.reference_exemplars):
        check_box_inside(f"reference_exemplars.{i}.box", ex.box, ref_w, ref_h)
    return reference.compose(image, reference_image, [ex.box.xyxy() for ex in params.reference_exemplars])
