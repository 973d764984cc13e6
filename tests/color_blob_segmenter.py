"""TEST DOUBLE for SAM3's detector: a deterministic segmenter whose right answers are known.

`ColorBlobSegmenter.segment` has the interface of `serving.predictor.Sam3Predictor.segment`
(SegmentItems in, the detector's raw outputs per query out), so the service's planning,
post-processing, tiling merge and reference composition run on it unchanged.  It is not
SAM3: it finds the connected blobs of one colour.  Like SAM3 it looks at every image resized
to a fixed square input (`prepare`, area-averaged), so objects that shrink below a few input
pixels are missed, which is what high-resolution tiling is for.

The colour is named by the text prompt ("red"), or taken from under the first positive
exemplar box ("find everything like this").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

import torch

from serving.predictor import ModelImage, RawDetections, SegmentItem

COLORS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220)}
CONFIDENT = 10.0  # logit: score sigmoid(10)^2 = 0.9999


class ColorBlobSegmenter:
    def __init__(self, input_size: int = 1008, min_input_pixels: int = 9, tolerance: int = 30):
        self.input_size = input_size
        self.min_input_pixels = min_input_pixels
        self.tolerance = tolerance

    def prepare(self, image: np.ndarray) -> ModelImage:
        """What `plan_segment` sends this double (as `predictor.model_image` does for SAM3)."""
        size = self.input_size
        seen = np.array(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.BOX))
        return ModelImage(np.ascontiguousarray(seen.transpose(2, 0, 1)), image.shape[:2])

    def segment(self, items: Sequence[SegmentItem]) -> list[list[RawDetections]]:
        return [[self._detect(item, text, excluded) for text, excluded in item.queries()] for item in items]

    def _detect(self, item: SegmentItem, text: str, excluded: bool) -> RawDetections:
        color = COLORS.get(text)
        if color is None and not excluded:
            color = self._exemplar_color(item)
        size = self.input_size
        seen = item.image.pixels.transpose(1, 2, 0).astype(int)
        hit = np.abs(seen - np.array(color)).max(axis=2) < self.tolerance if color else np.zeros((size, size), bool)
        blobs, count = ndimage.label(hit)
        masks, boxes = [], []
        for index, where in enumerate(ndimage.find_objects(blobs), start=1):
            blob = blobs == index
            if blob.sum() < self.min_input_pixels:
                continue
            ys, xs = where
            masks.append(np.where(blob, CONFIDENT, -CONFIDENT))
            boxes.append([xs.start / size, ys.start / size, xs.stop / size, ys.stop / size])
        return RawDetections.of(
            pred_logits=torch.full((len(masks),), CONFIDENT),
            pred_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            pred_masks=torch.from_numpy(np.array(masks, np.float32).reshape(-1, size, size)),
            presence_logits=torch.tensor([CONFIDENT]),
            mask_threshold=item.mask_threshold,
        )

    def _exemplar_color(self, item: SegmentItem) -> tuple[int, ...] | None:
        positive = [box for box, label in zip(item.boxes, item.box_labels) if label == 1]
        if not positive:
            return None
        height, width = item.image.original_size
        scale_x, scale_y = self.input_size / width, self.input_size / height
        x1, y1, x2, y2 = positive[0]
        seen = item.image.pixels.transpose(1, 2, 0)
        inside = seen[int(round(y1 * scale_y)):max(int(round(y2 * scale_y)), int(round(y1 * scale_y)) + 1),
                      int(round(x1 * scale_x)):max(int(round(x2 * scale_x)), int(round(x1 * scale_x)) + 1)]
        return tuple(int(c) for c in np.median(inside.reshape(-1, 3), axis=0))
