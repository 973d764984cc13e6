"""Video samples for "segment with SAM3": each prompt tracked through the video by the service,
labels on every frame (`frames.<label_field>`), and a sample-level count of the frames written.

A video counts only once complete: a stream that breaks (a replica or the connection lost) has
the video tracked again from its first frame, up to `SegmentRun.video_attempts` tries
(`sdk.video.track_whole_video`), and the frames of a broken stream are never written.

The count is what marks a video done.  It is written after the video's frames, so a run killed
between the two leaves the video pending and the re-run writes all its frames again, instead of
skipping a half-written video.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import fiftyone as fo
import fiftyone.core.collections as foc

from fiftyone_plugin.labels import frame_detections
from fiftyone_plugin.sample_prompts import NO_PROMPTS, SamplePrompts
from sdk import AsyncClient
from sdk.video import track_whole_video

if TYPE_CHECKING:
    from fiftyone_plugin.segment import SegmentRun

FRAMES = "frames."
VIDEO_PROMPT_FIELD = (
    "a prompt field (exemplar boxes, keypoints) applies to images only: videos are tracked from text prompts"
)


def frame_field(label_field: str) -> str:
    """The frame field's own name, whether `label_field` names it with its `frames.` prefix or without."""
    return label_field.removeprefix(FRAMES)


def labels_path(label_field: str) -> str:
    """`frames.<name>`, where a video run's labels go."""
    return FRAMES + frame_field(label_field)


def done_field(label_field: str) -> str:
    """The sample field counting the frames labelled in `frames.<label_field>`."""
    return f"{frame_field(label_field)}_frames"


class VideoLabels:
    """Video samples: `fo.Detections` per frame, `index` = the service's object id (with the
    label, FiftyOne's trajectory key: ids are numbered per prompt)."""

    def __init__(self, run: SegmentRun):
        if run.negative_prompts:  # before any request, like every bad parameter
            raise ValueError("negative prompts apply to images only: the video tracking API has none")
        self.prompts = run.texts
        self.class_of = run.class_prompts.class_of
        self.labels_path = labels_path(run.label_field)
        self.done_field = done_field(run.label_field)
        # One video at a time: a video is many frames of work, so a crash should lose none that finished.
        self.chunk_size = 1
        self.attempts = run.video_attempts

    async def label(
        self, client: AsyncClient, path: str, mask_dir: Path | None, own: SamplePrompts = NO_PROMPTS
    ) -> dict[int, fo.Detections]:
        if own:
            raise ValueError(VIDEO_PROMPT_FIELD)
        tracked = await asyncio.gather(
            *(track_whole_video(client, path, prompt, attempts=self.attempts) for prompt in self.prompts)
        )
        return await asyncio.to_thread(
            frame_detections, dict(zip(self.prompts, tracked, strict=True)), mask_dir, self.class_of
        )

    def write(self, view: foc.SampleCollection, finished: dict[str, dict[int, fo.Detections]]) -> None:
        view.set_values(self.labels_path, finished, key_field="id")
        view.set_values(
            self.done_field, {sample_id: len(frames) for sample_id, frames in finished.items()}, key_field="id"
        )
