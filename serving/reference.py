"""Reference-image exemplars: "find everything like this" where "this" is boxed in another image.

SAM3's exemplar boxes must lie in the image being segmented, so the boxed part of the
reference image is pasted as a strip to the right of the target image, the boxes are moved
onto the strip, and the composite is segmented.  Instances are then cut back to the target:
those lying mostly in the strip (the exemplar itself, found again) are dropped.

The price: the model sees the composite at its fixed input size, so the target loses up to
`STRIP_FRACTION` of its horizontal resolution, and the reference is rescaled to the target's
scale only as far as the strip allows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from sdk.masks import RunMask
from serving.postprocess import Found

STRIP_FRACTION = 0.25  # at most this share of the target's width is given to the reference strip
MARGIN = 0.1  # context kept around the reference boxes, as a fraction of their extent
KEEP_INSIDE = 0.5  # an instance stays when at least this share of its mask lies on the target


@dataclass
class Composite:
    image: np.ndarray  # target | reference strip
    boxes: list[list[float]]  # the reference boxes, moved onto the strip (xyxy)
    target_width: int
    target_height: int


def compose(target: np.ndarray, reference: np.ndarray, boxes: list[list[float]]) -> Composite:
    """The target with the boxed region of `reference` (xyxy pixel boxes) pasted to its right."""
    height, width = target.shape[:2]
    ref_h, ref_w = reference.shape[:2]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    pad_x, pad_y = (x1 - x0) * MARGIN, (y1 - y0) * MARGIN
    left, top = int(max(0, x0 - pad_x)), int(max(0, y0 - pad_y))
    right, bottom = int(min(ref_w, np.ceil(x1 + pad_x))), int(min(ref_h, np.ceil(y1 + pad_y)))
    crop = reference[top:bottom, left:right]
    scale = min(height / crop.shape[0], STRIP_FRACTION * width / crop.shape[1])
    strip_w, strip_h = max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))
    strip = np.asarray(Image.fromarray(crop).resize((strip_w, strip_h), Image.Resampling.BILINEAR))
    canvas = np.zeros((height, width + strip_w, 3), dtype=np.uint8)
    canvas[:, :width] = target
    offset_y = (height - strip_h) // 2
    canvas[offset_y : offset_y + strip_h, width:] = strip
    moved = [
        [
            width + (b[0] - left) * scale,
            offset_y + (b[1] - top) * scale,
            width + (b[2] - left) * scale,
            offset_y + (b[3] - top) * scale,
        ]
        for b in boxes
    ]
    return Composite(canvas, moved, width, height)


def on_target(found: list[Found], composite: Composite) -> list[Found]:
    """Instances found on the composite, cut to the target; those mostly on the strip dropped."""
    kept = []
    width = composite.target_width
    size = (composite.target_height, width)
    for f in found:
        crop, origin = f.mask.crop()
        on_it = crop[:, : max(width - origin[0], 0)]  # the columns left of the strip
        total = np.count_nonzero(crop)
        if total and np.count_nonzero(on_it) / total < KEEP_INSIDE:
            continue
        x1, y1, x2, y2 = f.box
        kept.append(
            replace(f, mask=RunMask.from_crop(on_it, origin, size), box=(min(x1, width), y1, min(x2, width), y2))
        )
    return kept
