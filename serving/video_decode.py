"""Read uploaded videos with PyAV: probe (size, frame count) before any pixel is decoded, then
decode lazily, one frame at a time, so a long video never sits in memory whole."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from sdk.schema import Limits
from serving.errors import ServiceError


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    width: int  # as displayed: after the rotation the file asks for
    height: int


def probe_video(data: bytes, limits: Limits) -> VideoInfo:
    """The video's displayed size and frame count, or a ServiceError naming what is wrong with the
    upload.

    Frames are counted by demuxing (reading packet headers, no decoding): containers do not
    reliably declare a count, and an upload must be refused before the GPU sees it.  Decoding
    counts again (`iter_frames`), in case packets and frames disagree.  Only the first frame is
    decoded here, for its rotation (phones record portrait video as rotated landscape).
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
            frames, rotation = 0, None
            for packet in container.demux(stream):
                frames += packet.size > 0  # the demuxer ends with an empty flush packet
                if frames > limits.max_video_frames:
                    raise _too_many_frames(limits.max_video_frames)
                if rotation is None:
                    rotation = next((frame.rotation for frame in packet.decode()), None)
    except av.FFmpegError as exc:
        raise ServiceError(422, "invalid_video", f"video is not a decodable video file: {exc}", "video") from None
    if frames == 0 or width * height == 0:
        raise ServiceError(422, "invalid_video", "the video stream has no frames", "video")
    if _quarter_turns(rotation or 0) % 2:
        width, height = height, width
    return VideoInfo(frames=frames, width=width, height=height)


def iter_frames(data: bytes, start: int, max_frames: int) -> Iterator[np.ndarray]:
    """HxWx3 uint8 RGB frames from `start` as displayed (rotated as the file asks), decoded as they
    are asked for.  Raises ServiceError `too_many_frames` when the file decodes to more than
    `max_frames` frames in all, whatever its packets said."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame- and slice-threaded decoding where the codec allows
        for index, frame in enumerate(container.decode(stream)):
            if index >= max_frames:
                raise _too_many_frames(max_frames)
            if index >= start:
                picture, turns = frame.to_ndarray(format="rgb24"), _quarter_turns(frame.rotation)
                # Copied when turned: torch refuses the negative strides of np.rot90's view.
                yield np.ascontiguousarray(np.rot90(picture, turns)) if turns else picture


def _quarter_turns(rotation: int) -> int:
    """Counter-clockwise quarter turns for a display rotation in degrees (PyAV reads it from the
    stream's display matrix, counter-clockwise, as FFmpeg's own autorotation applies it).  Flips in
    the matrix are not applied: phones and cameras do not write them."""
    return round(rotation / 90) % 4


def _too_many_frames(limit: int) -> ServiceError:
    return ServiceError(413, "too_many_frames", f"video has more than {limit} frames; the limit is {limit}", "video")
