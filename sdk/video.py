"""Tracked videos as a whole: sending one again when its stream breaks, and writing one to a folder
(the service's NDJSON lines and one instance-id PNG per frame)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from sdk.client import AsyncClient
from sdk.errors import BrokenStreamError, VideoStreamError
from sdk.masks import decode_mask, paint
from sdk.schema import VideoFrame
from sdk.transport import RetryPolicy

T = TypeVar("T")
# Each attempt is the whole video again, minutes of GPU time for a long one: a few are enough to
# get past a replica lost in a rollout or a downscale, and a stream that breaks every time
# (a proxy that cuts long answers) is said within minutes, not hours.
DEFAULT_VIDEO_ATTEMPTS = 3
log = logging.getLogger(__name__)


def worth_sending_again(error: Exception, policy: RetryPolicy) -> bool:
    """Whether a video whose stream failed with `error` may succeed when sent again: its
    connection broke after the 200, or the service ended it with an error line whose status the
    client retries on every request (`policy.statuses`: a lost replica's or a full queue's 503).
    Failures before the 200 are the client's own retries' (`RetryPolicy`)."""
    if isinstance(error, BrokenStreamError):
        return True
    return isinstance(error, VideoStreamError) and error.status in policy.statuses


async def track_with_retries(
    client: AsyncClient,
    receive: Callable[[AsyncIterable[VideoFrame]], Awaitable[T]],
    video: str | Path | bytes,
    prompt: str | None = None,
    points: Sequence[Sequence[float]] = (),
    *,
    attempts: int = DEFAULT_VIDEO_ATTEMPTS,
    on_retry: Callable[[str], object] = log.warning,
    **params: Any,
) -> T:
    """`receive(frames)` of a complete stream of `video` (`client.track_video`'s parameters).

    When the stream fails in a way worth another try (`worth_sending_again`), the video is sent
    again from its first frame and `receive` is called afresh, so it must start over (a list
    anew, files rewritten): frames of a broken stream are never mixed with a later one's.  At
    most `attempts` tries in all, `on_retry` told of each retry, the client's backoff
    (`client.settings.retry`) waited between them; then, or on any other failure, the last
    error is raised as it is.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    policy, attempt = client.settings.retry, 1
    while True:
        try:
            return await receive(client.track_video(video, prompt, points, **params))
        except (BrokenStreamError, VideoStreamError) as exc:
            if attempt == attempts or not worth_sending_again(exc, policy):
                raise
            delay = policy.delay(attempt - 1)
            attempt += 1
            on_retry(f"{exc}: retrying the whole video in {delay:.1f} s (attempt {attempt} of {attempts})")
            await asyncio.sleep(delay)


async def track_whole_video(
    client: AsyncClient,
    video: str | Path | bytes,
    prompt: str | None = None,
    points: Sequence[Sequence[float]] = (),
    *,
    attempts: int = DEFAULT_VIDEO_ATTEMPTS,
    on_retry: Callable[[str], object] = log.warning,
    **params: Any,
) -> list[VideoFrame]:
    """Every frame of `video`, from a stream that ran to its summary: sent again (up to
    `attempts` tries) when one breaks, as `track_with_retries` says.

    A list, not an iterator like `client.track_video`, because a retry starts the video over:
    frames handed out before the break would be handed out again.  A long video's frames all
    stay in memory; to write them out as they come instead, give `track_with_retries` a
    `receive` that starts its output over, as `samfleet track` does (`write_frames`).  From
    synchronous code: `asyncio.run(...)` with an `AsyncClient`.
    """
    return await track_with_retries(
        client, _collect, video, prompt, points, attempts=attempts, on_retry=on_retry, **params
    )


async def _collect(frames: AsyncIterable[VideoFrame]) -> list[VideoFrame]:
    return [frame async for frame in frames]


def object_id_image(frame: VideoFrame) -> np.ndarray:
    """HxW uint16: each pixel the `object_id` of the object there, 0 for background."""
    image = np.zeros((frame.height, frame.width), dtype=np.uint16)
    for instance in frame.instances:
        paint(image, decode_mask(instance.mask), instance.object_id)
    return image


async def write_frames(frames: AsyncIterable[VideoFrame], out: Path, progress: bool = True) -> int:
    """`out/frames.ndjson` (one VideoFrame per line, rewritten from the start) and
    `out/masks/FRAME.png`, as the frames arrive; the number of frames."""
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out / "frames.ndjson", "w") as lines, tqdm(unit="frame", disable=not progress) as bar:
        async for frame in frames:
            bar.total = frame.frame_count - frame.frame_index + written  # known once the first frame is in
            await asyncio.to_thread(_write_frame, frame, lines, out)
            written += 1
            bar.update()
    return written


def _write_frame(frame: VideoFrame, lines: TextIO, out: Path) -> None:
    lines.write(frame.model_dump_json() + "\n")
    Image.fromarray(object_id_image(frame)).save(out / "masks" / f"{frame.frame_index:06d}.png")
