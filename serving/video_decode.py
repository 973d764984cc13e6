"""Read uploaded videos with PyAV: probe (size, frame count) before any pixel is decoded, then
decode lazily, one frame at a time, so a long video never sits in memory whole."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import av
import numpy as np

from sdk.schema import Limits
from serving.errors import ServiceError


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int
    height: int


def probe_video(data: bytes, limits: Limits) -> VideoInfo:
    """The video's size and frame count, or a ServiceError naming what is wrong with the upload.

    Frames are counted by demuxing (reading packet headers, no decoding): containers do not
    reliably declare a count, and an upload must be refused before the GPU sees it.
    """
    if not data:
        raise ServiceError(422, "invalid_video", "video is empty", "video")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ServiceError(422, "invalid_video", "the file has no video stream", "video")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > limits.max_video_pixels:
                raise ServiceError(
                    413,
                    "video_too_large",
                    f"video frames are {width}x{height} = {width * height} "
                    f"pixels; the limit is {limits.max_video_pixels}",
                    "video",
                )
            frames = 0
            for packet in container.demux(stream):
                frames += packet.size > 0  # the demuxer ends with an empty flush packet
                if frames > limits.max_video_frames:
                    raise ServiceError(
                        413,
                        "too_many_frames",
                        f"video has more than {limits.max_video_frames} frames; the limit is {limits.max_video_frames}",
                        "video",
                    )
    except av.FFmpegError as exc:
        raise ServiceError(422, "invalid_video", f"video is not a decodable video file: {exc}", "video") from None
    if frames == 0 or width * height == 0:
        raise ServiceError(422, "invalid_video", "the video stream has no frames", "video")
    return VideoInfo(frames=frames, width=width, height=height)


def iter_frames(data: bytes, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """HxWx3 uint8 RGB frames `start` to `stop` (exclusive), decoded as they are asked for."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame- and slice-threaded decoding where the codec allows
        for frame in islice(container.decode(stream), start, stop):
            yield frame.to_ndarray(format="rgb24")
