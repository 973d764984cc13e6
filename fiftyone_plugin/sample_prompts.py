"""Prompts a sample brings itself, read from a label field as FiftyOne's SAM3 zoo model reads its
`prompt_field`: the boxes of a `Detections` are exemplars of the concept named by their label,
each `Keypoint` of a `Keypoints` is one object to segment at its points."""

from __future__ import annotations

from dataclasses import dataclass, field

import fiftyone as fo

from fiftyone_plugin.labels import keypoint_clicks
from fiftyone_plugin.prompts import ClassPrompts

# The label the service gives instances found from boxes alone, with no text prompt: boxes whose
# label is none of the text prompts are asked together under it.
EXEMPLAR_ONLY = "exemplar"


@dataclass(frozen=True)
class Click:
    """One object to segment at a keypoint's points (pixels; labels 1 positive, 0 negative)."""

    points: list[list[float]]
    labels: list[int]
    label: str | None
    keypoint_id: str


@dataclass(frozen=True)
class SamplePrompts:
    # prompt -> xyxy pixel boxes refining it; EXEMPLAR_ONLY -> boxes of no text prompt
    boxes: dict[str, list[list[float]]] = field(default_factory=dict)
    clicks: list[Click] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.boxes or self.clicks)


NO_PROMPTS = SamplePrompts()


def sample_prompts(label: fo.Label | None, prompts: ClassPrompts, width: int, height: int) -> SamplePrompts:
    """The prompts in `label` (a sample's prompt field) for an image of `width` x `height`; a box
    refines the run's prompt its label names (by text or by class)."""
    if label is None:
        return NO_PROMPTS
    if isinstance(label, fo.Detections):
        boxes: dict[str, list[list[float]]] = {}
        for detection in label.detections:
            x, y, w, h = detection.bounding_box
            key = prompts.text_for(detection.label) or EXEMPLAR_ONLY
            boxes.setdefault(key, []).append([x * width, y * height, (x + w) * width, (y + h) * height])
        return SamplePrompts(boxes=boxes)
    if isinstance(label, fo.Keypoints):
        clicks = []
        for keypoint in label.keypoints:
            points, labels = keypoint_clicks(keypoint, width, height)
            if points:
                clicks.append(Click(points, labels, keypoint.label, keypoint.id))
        return SamplePrompts(clicks=clicks)
    raise ValueError(
        f"prompt_field must hold Detections (exemplar boxes) or Keypoints (objects to segment), "
        f"not {type(label).__name__}"
    )
