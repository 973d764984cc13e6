"""SAM3-shaped raw outputs for benchmarks and tests: what the full-size model returns for an
image with many instances, which the tiny random model cannot produce.

Each instance is a blob of low-res mask logits (288x288 for the full-size model): an ellipse
with an irregular, smooth edge, strongly negative outside and positive inside like SAM3's
logits, with a predicted box and a score above the threshold.  Areas are log-uniform between
`MIN_AREA` and a largest area that shrinks as instances get more numerous, so the photo's
foreground stays between about a quarter and two thirds of it, as in a real crowded scene
(few large objects, many small ones); some blobs are cut by the image border and some spill
over their predicted box.  Nothing here is SAM3's output; only its shapes and sizes are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_AREA = 5e-5  # fraction of the image: a ~25x25 px object on a 12 MP photo
MAX_AREA = 0.2
FOREGROUND_BUDGET = 4.0  # the largest area is this / N (capped at MAX_AREA)
BORDER_SHARE = 0.15  # instances centred on the image border
SPILL_SHARE = 0.2  # instances whose mask is larger than their predicted box
LOGIT_RANGE = 12.0  # SAM3's mask logits saturate around +-10..20


@dataclass
class SyntheticDetections:
    """One prompt's raw outputs for N instances, as Sam3Model returns them for its kept queries."""

    pred_logits: np.ndarray  # (N,) float32
    pred_boxes: np.ndarray  # (N, 4) normalised xyxy
    pred_masks: np.ndarray  # (N, h, w) float32 logits
    presence_logits: np.ndarray  # (1,)


def synthetic_detections(count: int, seed: int = 0, mask_size: tuple[int, int] = (288, 288)) -> SyntheticDetections:
    rng = np.random.default_rng(seed)
    h, w = mask_size
    largest = min(MAX_AREA, FOREGROUND_BUDGET / max(count, 1))
    areas = np.exp(rng.uniform(math.log(MIN_AREA), math.log(max(largest, MIN_AREA)), count))
    aspects = np.exp(rng.uniform(math.log(1 / 3), math.log(3), count))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys, xs = (ys + 0.5) / h, (xs + 0.5) / w
    masks = np.empty((count, h, w), np.float32)
    boxes = np.empty((count, 4), np.float32)
    for k, (area, aspect) in enumerate(zip(areas, aspects, strict=True)):
        ry, rx = math.sqrt(area / math.pi / aspect), math.sqrt(area * aspect / math.pi)
        cy, cx = rng.uniform(ry, 1 - ry), rng.uniform(rx, 1 - rx)
        if rng.random() < BORDER_SHARE:
            side = rng.integers(4)
            cy, cx = ((0.0, cx), (1.0, cx), (cy, 0.0), (cy, 1.0))[side]
        angle = np.arctan2((ys - cy) / ry, (xs - cx) / rx)
        wobble = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi)) + 0.08 * np.sin(5 * angle)
        radius = np.sqrt(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2) / wobble
        # Logit falls by ~2 per low-res pixel across the edge, as SAM3's do.
        steep = 2.0 * min(ry * h, rx * w)
        masks[k] = np.clip(steep * (1 - radius), -LOGIT_RANGE, LOGIT_RANGE)
        shrink = 0.8 if rng.random() < SPILL_SHARE else 1.0
        boxes[k] = np.clip([cx - rx * shrink, cy - ry * shrink, cx + rx * shrink, cy + ry * shrink], 0, 1)
    scores = rng.uniform(0.55, 0.98, count)
    return SyntheticDetections(
        pred_logits=np.log(scores / (1 - scores)).astype(np.float32) + 3.0,
        pred_boxes=boxes,
        pred_masks=masks,
        presence_logits=np.array([3.0], np.float32),
    )
