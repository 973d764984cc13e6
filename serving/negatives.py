"""Negative text prompts: drop the instances of a wanted concept that are really instances of a
concept the caller excluded ("person" but not "mannequin").

SAM3 takes negative *boxes* natively but no negative text, so the excluded concepts are
segmented like any prompt and a wanted instance is dropped when its mask overlaps one of theirs.
The overlaps are pycocotools' mask IoU on RLE (the COCO reference implementation), which with
`iscrowd` set on the negative side gives intersection over the wanted instance's own area:
"how much of this instance is the excluded thing".
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask


def suppressed(wanted: list[dict], excluded: list[dict], *, iou: float, containment: float) -> np.ndarray:
    """Which `wanted` masks (RLE) to drop: IoU with an excluded mask >= `iou`, or at least
    `containment` of the wanted mask's area inside an excluded mask."""
    if not wanted or not excluded:
        return np.zeros(len(wanted), dtype=bool)
    plain = np.asarray(coco_mask.iou(wanted, excluded, [0] * len(excluded))).reshape(len(wanted), len(excluded))
    inside = np.asarray(coco_mask.iou(wanted, excluded, [1] * len(excluded))).reshape(len(wanted), len(excluded))
    return np.asarray(((plain >= iou) | (inside >= containment)).any(axis=1))  # numpy's types allow a scalar
