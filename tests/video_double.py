"""Synthetic clips whose ground truth is known, and a deterministic tracker double for them."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import av
import cv2
import numpy as np
import torch

from serving.video_tracking import TrackRequest

RED = (220, 30, 30)
BACKGROUND = (20, 90, 40)


def moving_squares_clip(frames: int, height: int = 48, width: int = 64, side: int = 10
                        ) -> tuple[bytes, list[list[np.ndarray]]]:
    """A lossless (FFV1/Matroska) clip of two red squares, one moving right and one moving down,
    and each frame's true masks, [right-mover, down-mover]."""
    pictures, truth = moving_squares_pictures(frames, height, width, side)
    return encode_clip(pictures), truth


def moving_squares_pictures(frames: int, height: int = 48, width: int = 64, side: int = 10
                            ) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """The frames of `moving_squares_clip`, and their true masks."""
    pictures, truth = [], []
    for t in range(frames):
        picture = np.empty((height, width, 3), np.uint8)
        picture[:] = BACKGROUND
        masks = []
        for y, x in ((4, 2 + 2 * t), (20 + t, 40)):
            mask = np.zeros((height, width), bool)
            mask[y:y + side, x:x + side] = True
            picture[mask] = RED
            masks.append(mask)
        pictures.append(picture)
        truth.append(masks)
    return pictures, truth


def encode_clip(pictures: list[np.ndarray], codec: str = "ffv1", rotation: int = 0) -> bytes:
    """Lossless clip of `pictures`; `rotation` (degrees counter-clockwise) goes in the stream's
    display matrix, as phones record portrait video."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width = pictures[0].shape[:2]
        if rotation:
            stream.set_display_rotation(rotation)
        stream.pix_fmt = "bgr0"  # FFV1's lossless RGB
        for picture in pictures:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


class MovingBlobTrackerDouble:
    """TEST DOUBLE for `serving.video_tracking.VideoTracker`: segments red blobs by colour and keeps an
    object's id from frame to frame by mask IoU (a new blob gets the next id).  A text prompt tracks
    every red blob; points track the blob under the first positive point."""

    def track(self, frames: Iterable[np.ndarray], request: TrackRequest) -> Iterator[tuple]:
        previous: dict[int, np.ndarray] = {}
        next_id = 1
        for index, frame in enumerate(frames):
            red = np.all(np.abs(frame.astype(int) - RED) < 40, axis=-1).astype(np.uint8)
            count, blobs = cv2.connectedComponents(red)
            masks = [blobs == k for k in range(1, count)]
            if request.points and index == 0:
                x, y = (int(v) for v in request.points[0])
                masks = [m for m in masks if m[y, x]]
            elif request.points:
                masks = [m for m in masks if _iou(m, previous[1]) > 0]
            current = {}
            for mask in masks:
                match = max(previous, key=lambda i: _iou(mask, previous[i]), default=None)
                if match is None or _iou(mask, previous[match]) == 0 or match in current:
                    match, next_id = next_id, next_id + 1
                current[match] = mask
            previous = current
            ids = sorted(current)
            stack = np.stack([current[i] for i in ids]) if ids else np.zeros((0, *frame.shape[:2]), bool)
            yield torch.from_numpy(stack), ids, [1.0] * len(ids), [request.prompt or "object"] * len(ids)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))
