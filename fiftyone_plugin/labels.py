"""SDK results as FiftyOne labels: `fo.Detection`s with instance masks (per image, or per video
frame with the tracked object's id as `index`), and keypoints as clicks.

Written by hand because FiftyOne's `Detection.from_mask` derives the box from the mask extent,
while SAM3 predicts its own box: here the box is SAM3's, widened to whole pixels (and to the
mask, should the mask spill over it) so that the cropped mask is exactly the served mask.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path

import fiftyone as fo
import numpy as np
from PIL import Image

from sdk.manifest import write_atomic
from sdk.results import InstanceResult, Result
from sdk.schema import TrackedInstance, VideoFrame

POINTS_PROMPT = "points"


class TrackedInstanceResult(TrackedInstance, InstanceResult):
    """A tracked instance whose mask decodes like an image instance's, so both become labels
    through the same code."""


class FrameResult(VideoFrame):
    """One frame of `track_video` with decodable instances (the SDK yields plain wire frames)."""

    instances: list[TrackedInstanceResult]  # type: ignore[assignment]  # pydantic field narrowed: decodable instances


def pixel_box(
    box: tuple[float, float, float, float], mask: np.ndarray, width: int, height: int
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in whole pixels covering the predicted xyxy `box` and every pixel of the
    HxW boolean `mask`."""
    x1, y1, x2, y2 = box
    bounds = [math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)]
    # Occupied rows and columns rather than np.nonzero: two index arrays per mask pixel would
    # outweigh the mask itself for a large object.
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(xs):
        bounds = [min(bounds[0], xs[0]), min(bounds[1], ys[0]), max(bounds[2], xs[-1] + 1), max(bounds[3], ys[-1] + 1)]
    x0, y0 = min(max(int(bounds[0]), 0), width - 1), min(max(int(bounds[1]), 0), height - 1)
    return x0, y0, max(min(int(bounds[2]), width), x0 + 1), max(min(int(bounds[3]), height), y0 + 1)


def to_detection(
    instance: InstanceResult,
    width: int,
    height: int,
    prompt: str,
    mask_path: Path | None = None,
    label: str | None = None,
) -> fo.Detection:
    """A Detection whose mask (inline, or a PNG at `mask_path`) is cropped to its bounding box,
    labelled `label` (default: the instance's own label, its prompt)."""
    mask = instance.array
    x0, y0, x1, y1 = pixel_box(instance.box, mask, width, height)
    # A copy, not a view: a view would keep the full-size mask alive as long as the Detection.
    crop = mask[y0:y1, x0:x1].copy()
    detection = fo.Detection(
        label=label or instance.label,
        bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
        confidence=instance.score,
        prompt=prompt,
        # FiftyOne's object id across frames: (label, index) makes a trajectory.
        index=instance.object_id if isinstance(instance, TrackedInstance) else None,
    )
    if mask_path is None:
        detection.mask = crop
    else:
        buffer = io.BytesIO()
        Image.fromarray(crop.astype(np.uint8) * 255).save(buffer, format="PNG")
        write_atomic(mask_path, buffer.getvalue())
        detection.mask_path = str(mask_path)
    return detection


def clicked_detection(
    result: Result, label: str | None, keypoint_id: str, mask_path: Path | None = None
) -> fo.Detection:
    """The object segmented at a keypoint's points (`segment_points`), labelled like the keypoint
    and remembering it (`keypoint_id`), so that a re-run can replace it."""
    detection = to_detection(result.instances[0], result.width, result.height, POINTS_PROMPT, mask_path)
    detection.label = label or detection.label
    detection["keypoint_id"] = keypoint_id
    return detection


def to_detections(
    results: Mapping[str, Result | FrameResult],
    mask_dir: Path | None = None,
    classes: Mapping[str, str] | None = None,
) -> fo.Detections:
    """One Detections from the results of several prompts on one image or frame (`{prompt: result}`),
    each instance found for a prompt labelled with its class (`classes`, {prompt: class}; by
    default the prompt itself) and keeping the prompt in its `prompt` attribute.

    With `mask_dir`, masks go to `mask_dir/<prompt index>-<instance index>.png` instead of the
    database, which keeps samples small on large datasets.
    """
    classes = classes or {}
    detections = []
    for p, (prompt, result) in enumerate(results.items()):
        for i, instance in enumerate(result.instances):
            path = mask_dir / f"{p}-{i}.png" if mask_dir is not None else None
            # By the instance's own label, the prompt it was found for: an object clicked into a
            # tracking (the service's "object") is no instance of the prompt's class.
            label = classes.get(instance.label)
            detections.append(to_detection(instance, result.width, result.height, prompt, path, label))
    return fo.Detections(detections=detections)


def frame_detections(
    tracked: dict[str, list[VideoFrame]], mask_dir: Path | None = None, classes: Mapping[str, str] | None = None
) -> dict[int, fo.Detections]:
    """{frame number: Detections} from each prompt's tracking of one video (`{prompt: frames}`),
    labelled as `to_detections` labels them.

    FiftyOne numbers frames from 1, the service from 0.  Every prompt's tracking starts at the
    first frame, so the frames line up; masks on disk go to `mask_dir/<frame number>/`.
    """
    labels = {}
    for frames in zip(*tracked.values(), strict=True):
        number = frames[0].frame_index + 1
        results = {
            prompt: FrameResult.model_validate(frame, from_attributes=True)
            for prompt, frame in zip(tracked, frames, strict=True)
        }
        labels[number] = to_detections(results, mask_dir / str(number) if mask_dir is not None else None, classes)
    return labels


def full_mask(detection: fo.Detection, width: int, height: int) -> np.ndarray:
    """The detection's mask pasted into an image-sized boolean array (FiftyOne's own renderer)."""
    return detection.to_segmentation(frame_size=(width, height), target=1).mask.astype(bool)


def keypoint_clicks(keypoint: fo.Keypoint, width: int, height: int) -> tuple[list[list[float]], list[int]]:
    """A keypoint's points as pixel clicks with labels 1/0, from its optional `point_labels`
    attribute ("positive"/"negative" per point; all positive when absent).  Points FiftyOne
    marks as missing (NaN) are dropped."""
    names = keypoint.get_attribute_value("point_labels", None) or ["positive"] * len(keypoint.points)
    if len(names) != len(keypoint.points) or set(names) - {"positive", "negative"}:
        raise ValueError(
            f"keypoint {keypoint.id}: point_labels must give 'positive' or 'negative' "
            f"for each of its {len(keypoint.points)} points, got {names}"
        )
    clicks = [
        ([x * width, y * height], int(name == "positive"))
        for (x, y), name in zip(keypoint.points, names, strict=True)
        if not (math.isnan(x) or math.isnan(y))
    ]
    return [c for c, _ in clicks], [label for _, label in clicks]
