"""Track objects through a video, frame by frame.  No Ray, no HTTP.

`track_video` decodes the upload lazily and hands frames to a `VideoTracker`, which yields one
`TrackedFrame` per frame as soon as that frame is computed.  `Sam3VideoTracker` is the real one
(transformers' SAM3 video models in streaming mode: each frame is processed when it arrives, so
no frame is decoded before it is needed); tests put a deterministic double behind the same
`VideoTracker` interface.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from serving.video_decode import iter_frames
from serving.video_loader import LoadedSam3Video

POINTS_OBJECT_ID = 1  # the one object a point prompt marks
POINTS_LABEL = "object"
RELEASED_FRAME = torch.empty(0)  # what a tracked frame's pixels are replaced with (Sam3VideoTracker)


@dataclass
class TrackRequest:
    prompt: str | None = None
    points: list[list[float]] = field(default_factory=list)  # xy pixels on frame `frame`
    point_labels: list[int] = field(default_factory=list)  # 1 positive, 0 negative
    frame: int = 0  # first frame tracked (the one the points are on)


@dataclass
class TrackedMask:
    """One object's mask on a frame: its bounding-box crop, bit-packed (8x smaller), at (x, y).
    The crop, not the frame, travels from the GPU replica to the ingress and is encoded there."""

    x: int
    y: int
    cols: int
    packed: np.ndarray  # np.packbits of the (rows, cols) bool crop along its rows

    @classmethod
    def of(cls, mask: torch.Tensor) -> TrackedMask:
        """The crop of an (H, W) bool mask (any device: only the crop is copied to the host)."""
        rows, cols = torch.nonzero(mask.any(dim=1)), torch.nonzero(mask.any(dim=0))
        if len(rows) == 0:
            return cls(0, 0, 0, np.zeros((0, 0), np.uint8))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return cls(x0, y0, x1 - x0, np.packbits(mask[y0:y1, x0:x1].cpu().numpy(), axis=-1))

    def crop(self) -> np.ndarray:
        return np.unpackbits(self.packed, axis=-1, count=self.cols).astype(bool)


@dataclass
class TrackedFrame:
    """One frame's objects."""

    frame_index: int
    height: int
    width: int
    object_ids: list[int]
    scores: list[float]
    labels: list[str]
    masks: list[TrackedMask]

    @classmethod
    def of(
        cls, frame_index: int, masks: torch.Tensor, object_ids: list[int], scores: list[float], labels: list[str]
    ) -> TrackedFrame:
        """From the frame's (N, H, W) bool masks."""
        _, height, width = masks.shape
        return cls(frame_index, height, width, object_ids, scores, labels, [TrackedMask.of(m) for m in masks])


class VideoTracker(Protocol):
    def track(
        self, frames: Iterable[np.ndarray], request: TrackRequest
    ) -> Iterator[tuple[torch.Tensor, list[int], list[float], list[str]]]:
        """For each frame, in order, as soon as it is computed: its (N, H, W) bool masks (any
        device), object ids, scores and labels.  `frames` start at `request.frame`."""


def track_video(data: bytes, request: TrackRequest, tracker: VideoTracker, max_frames: int) -> Iterator[TrackedFrame]:
    """`tracker` run on the video file `data` from frame `request.frame`, at most `max_frames` frames
    decoded in all (the probe on the ingress refused longer videos; this bounds a lying container).

    A text prompt and points together run as two trackings of the same frames (every instance of
    the prompt, plus the clicked object), in step.  Object ids are the service's own: numbered
    from 1 in order of first appearance (0 stays free for background in id images) and never
    shared between the two trackings."""
    frames = iter_frames(data, request.frame, max_frames)
    ids: dict[tuple[int, int], int] = {}
    for index, parts in enumerate(_trackings(tracker, frames, request), start=request.frame):
        masks, object_ids, scores, labels = [], [], [], []
        for source, (part_masks, part_ids, part_scores, part_labels) in enumerate(parts):
            masks.append(part_masks)
            object_ids += [ids.setdefault((source, raw), len(ids) + 1) for raw in part_ids]
            scores += part_scores
            labels += part_labels
        yield TrackedFrame.of(index, torch.cat(masks), object_ids, scores, labels)


def _trackings(tracker: VideoTracker, frames: Iterable[np.ndarray], request: TrackRequest) -> Iterator[tuple]:
    """Per frame, the output of each tracking the request needs."""
    if request.prompt is None or not request.points:
        return zip(tracker.track(frames, request))
    # tee keeps at most one frame: the two trackings advance together, one output per frame each.
    # Not strict: that would resume the points tracking once more after the last frame, to see it end.
    by_text, by_points = itertools.tee(frames)
    return zip(
        tracker.track(by_text, replace(request, points=[], point_labels=[])),
        tracker.track(by_points, replace(request, prompt=None)),
        strict=False,
    )


class Sam3VideoTracker:
    """SAM3 video tracking: a text prompt runs Sam3VideoModel (detect on every frame and associate
    with the tracked objects, new objects get new ids); points run Sam3TrackerVideoModel (one object
    followed from the clicked frame)."""

    def __init__(self, loaded: LoadedSam3Video):
        self.m = loaded

    def track(self, frames: Iterable[np.ndarray], request: TrackRequest):
        run = self._text if request.prompt is not None else self._points  # track_video splits the two
        # Inference mode per frame, not around the generator: it is thread-local, and the
        # generator may be resumed from another worker thread.
        yield from run(frames, request)

    def session(self, processor):
        """A streaming session whose frames stay off the GPU: transformers keeps every processed
        frame (3x1008x1008, 6 MB in bfloat16: 18 GB at 3000 frames) on `video_storage_device`,
        the inference device unless told otherwise.  `_frame_done` then drops each one."""
        return processor.init_video_session(
            inference_device=self.m.device, video_storage_device="cpu", processing_device="cpu", dtype=self.m.dtype
        )

    @staticmethod
    def _frame_done(session) -> None:
        """Forget the pixels of the frame just tracked.  In streaming mode transformers reads only
        the current frame's pixels (`get_frame(frame_idx)`); earlier frames live on as features in
        the tracking memory.  The entry stays, empty, because the session counts its frames (the
        memory attention's number of object pointers depends on it).  A transformers that read an
        old frame again would fail on the empty tensor, not track wrongly."""
        last = next(reversed(session.processed_frames))
        session.processed_frames[last] = RELEASED_FRAME

    def _text(self, frames, request):
        processor = self.m.video_processor
        session = self.session(processor)
        processor.add_text_prompt(session, request.prompt)
        for frame in frames:
            with torch.inference_mode():
                inputs = processor(images=frame, return_tensors="pt")
                out = self.m.video(inference_session=session, frame=inputs.pixel_values[0])
                self._frame_done(session)
                post = processor.postprocess_outputs(session, out, original_sizes=inputs.original_sizes)
            ids = post["object_ids"].tolist()
            yield post["masks"], ids, post["scores"].float().tolist(), [request.prompt] * len(ids)

    def _points(self, frames, request):
        processor = self.m.tracker_video_processor
        session = self.session(processor)
        for index, frame in enumerate(frames):
            with torch.inference_mode():
                inputs = processor(images=frame, return_tensors="pt")
                if index == 0:  # the session numbers frames from the first one it sees: `request.frame`
                    processor.add_inputs_to_inference_session(
                        session,
                        frame_idx=0,
                        obj_ids=POINTS_OBJECT_ID,
                        input_points=[[request.points]],
                        input_labels=[[request.point_labels]],
                        original_size=inputs.original_sizes[0],
                    )
                out = self.m.tracker_video(inference_session=session, frame=inputs.pixel_values[0])
                self._frame_done(session)
                (masks,) = processor.post_process_masks([out.pred_masks], original_sizes=inputs.original_sizes)
            score = out.object_score_logits.float().sigmoid()[0, 0].item()
            yield masks[:, 0], [POINTS_OBJECT_ID], [score], [POINTS_LABEL]
