"""`Client` and `AsyncClient` for the samfleet API v1.

Both build the same `Call`s (sdk.calls) and go through the same retry rules and response parsing
(sdk.transport); they differ only in how they wait for the network.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from sdk import calls
from sdk.batch import BackgroundBatch, BatchItem, run_batch
from sdk.images import ImageInput, Upload, reduces
from sdk.results import Result
from sdk.schema import HealthResponse, InfoResponse, StatusResponse, VideoFrame
from sdk.transport import DEFAULT_TIMEOUT_S, DEFAULT_URL, Call, RetryPolicy, Settings, VideoStream, finish, retry_delay

# A batch's items give back the images as they were passed (`item.image`), type included.
ImageT = TypeVar("ImageT", bound=ImageInput)


UNKNOWN = object()  # the model's input size before /v1/info has been asked


def _settings(
    url: str | None, api_key: str | None, timeout: float, retry: RetryPolicy | None, upload: Upload
) -> Settings:
    reduces(upload)
    # The environment fills what the caller leaves out, so scripts and the CLI need no edits per cluster.
    return Settings(
        url=url or os.environ.get("SAMFLEET_URL") or DEFAULT_URL,
        # "" sends no key at all, whatever the environment says.
        api_key=(os.environ.get("SAMFLEET_API_KEY") or None) if api_key is None else api_key or None,
        timeout_s=timeout,
        retry=retry or RetryPolicy(),
        upload=upload,
    )


class Client:
    """Synchronous client: `with Client("http://gpu-cluster:8000", api_key=...) as c: c.segment(...)`.

    `url` and `api_key` default to the SAMFLEET_URL and SAMFLEET_API_KEY environment variables
    (`api_key=""`: no key, whatever the environment says).
    `upload`: "reduced" (default) sends a photo larger than the model's input reduced to it, with
    its size, and gets the same answer in the photo's pixels for a fraction of the bytes;
    "original" sends files as they are.  Each call can say otherwise.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        upload: Upload = "reduced",
    ):
        self.settings = _settings(url, api_key, timeout, retry, upload)
        self._http = httpx.Client(**self.settings.http_options())
        self._input_size: object = UNKNOWN

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> HealthResponse:
        return self._send(calls.health())

    def info(self) -> InfoResponse:
        info = self._send(calls.info())
        self._input_size = info.input_size  # what reduced uploads are reduced to, known from now on
        return info

    def status(self) -> StatusResponse:
        return self._send(calls.status())

    def segment(
        self,
        image: ImageInput,
        prompt: str | Sequence[str] | None = None,
        *,
        upload: Upload | None = None,
        **params: Any,
    ) -> Result:
        """Every instance of `prompt` (a noun phrase or a list of them) and/or the exemplar boxes
        (parameters: `calls.segment_params`; `reference_image=` the other image that
        `reference_boxes` point into).  A photo larger than the model's input is uploaded reduced
        to it (`upload="original"` sends the file as it is; tiling and reference images always
        do); masks, boxes and prompts are in the photo's own pixels either way.  `upload=None`:
        the client's setting."""
        reduce_to = self._reduce_to(upload)
        return self._send(calls.segment(image, prompt, reduce_to=reduce_to, **params)).with_image(image)

    def segment_points(
        self, image: ImageInput, points: Sequence[Sequence[float]] = (), *, upload: Upload | None = None, **params: Any
    ) -> Result:
        """The object at the clicked points and/or box (parameters: `calls.points_params`;
        `upload` as for `segment`)."""
        reduce_to = self._reduce_to(upload)
        return self._send(calls.segment_points(image, points, reduce_to=reduce_to, **params)).with_image(image)

    def _reduce_to(self, upload: Upload | None) -> int | None:
        if not self.settings.reduces(upload):
            return None
        if self._input_size is UNKNOWN:  # asked once per client: the model does not change under it
            self.info()
        return cast(int | None, self._input_size)

    def segment_many(
        self,
        images: Iterable[ImageT],
        prompt: str | Sequence[str] | None = None,
        *,
        reference_image: ImageInput | None = None,
        upload: Upload | None = None,
        concurrency: int = 8,
        progress: bool = True,
        ordered: bool = True,
        **params: Any,
    ) -> BackgroundBatch[ImageT]:
        """`segment` over many images, `concurrency` at a time; starts at once, iterate for BatchItems.

        Items come in input order, or as they finish with `ordered=False`.  A failed image has
        `item.error` set and the batch goes on.
        """
        calls.segment_params(prompt, **params)  # a bad parameter fails here, not once per image
        self.settings.reduces(upload)
        return self._in_background(
            "segment_many",
            images,
            prompt,
            reference_image=reference_image,
            upload=upload,
            concurrency=concurrency,
            progress=progress,
            ordered=ordered,
            **params,
        )

    def segment_points_many(
        self,
        images: Iterable[ImageT],
        points: Sequence[Sequence[float]] = (),
        *,
        upload: Upload | None = None,
        concurrency: int = 8,
        progress: bool = True,
        ordered: bool = True,
        **params: Any,
    ) -> BackgroundBatch[ImageT]:
        """`segment_points` with the same points/box on every image, like `segment_many`."""
        calls.points_params(points, **params)
        self.settings.reduces(upload)
        return self._in_background(
            "segment_points_many",
            images,
            points,
            upload=upload,
            concurrency=concurrency,
            progress=progress,
            ordered=ordered,
            **params,
        )

    def track_video(
        self,
        video: str | Path | bytes,
        prompt: str | None = None,
        points: Sequence[Sequence[float]] = (),
        **params: Any,
    ) -> Iterator[VideoFrame]:
        """Each frame's tracked instances (same `object_id` for the same object on every frame), as
        the service computes them (parameters: `calls.track_video`).  The request is sent on the
        first `next()`.  A stream cut short raises instead of ending quietly, saying how far it got:
        `BrokenStreamError` when the connection breaks or the body ends early, `VideoStreamError`
        when the service ends it with an error line.  To have the whole video sent again when that
        is worth it, see `sdk.video.track_whole_video`."""
        call = calls.track_video(video, prompt, points, **params)
        stream = VideoStream(self.settings.url)
        response = self._send(call)
        try:
            for line in response.iter_lines():
                if line and (frame := stream.frame(line)) is not None:
                    yield frame
        except httpx.TransportError as exc:
            raise stream.broken(exc) from exc
        finally:
            response.close()  # also when the caller stops early: the server stops tracking
        stream.finished()

    def _in_background(self, method: str, *args: Any, **kwargs: Any) -> BackgroundBatch[Any]:
        """Run AsyncClient.`method` (a batch) on the background loop with this client's settings."""
        settings, input_size = self.settings, self._input_size

        async def batch() -> AsyncIterator[BatchItem[Any]]:
            async with AsyncClient(settings=settings) as client:
                client._input_size = input_size  # what this client knows already is not asked again
                async for item in getattr(client, method)(*args, **kwargs):
                    yield item

        return BackgroundBatch(batch)

    def _send(self, call: Call) -> Any:
        for attempt in itertools.count():
            outcome: httpx.Response | Exception
            try:
                request = self._http.build_request(call.method, call.path, **call.kwargs)
                outcome = self._http.send(request, stream=call.stream)
                if outcome.is_error:
                    outcome.read()  # an error body is short and is needed even when streaming
            except httpx.TransportError as exc:
                outcome = exc
            delay = retry_delay(self.settings.retry, attempt, outcome)
            if delay is None:
                return finish(call, outcome, self.settings.url)
            time.sleep(delay)


class AsyncClient:
    """asyncio client with the same methods as `Client`, awaited: `async with AsyncClient() as c`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        upload: Upload = "reduced",
        settings: Settings | None = None,
    ):
        self.settings = settings or _settings(url, api_key, timeout, retry, upload)
        self._http = httpx.AsyncClient(**self.settings.http_options())
        self._input_size: object = UNKNOWN
        self._input_size_lock = asyncio.Lock()  # a batch's first requests ask /v1/info once, not once each

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health(self) -> HealthResponse:
        return await self._send(calls.health())

    async def info(self) -> InfoResponse:
        info = await self._send(calls.info())
        self._input_size = info.input_size
        return info

    async def status(self) -> StatusResponse:
        return await self._send(calls.status())

    async def segment(
        self,
        image: ImageInput,
        prompt: str | Sequence[str] | None = None,
        *,
        upload: Upload | None = None,
        **params: Any,
    ) -> Result:
        reduce_to = await self._reduce_to(upload)
        # Reading, reducing or PNG-encoding an image can take a while: keep it off the event loop.
        call = await asyncio.to_thread(calls.segment, image, prompt, reduce_to=reduce_to, **params)
        return (await self._send(call)).with_image(image)

    async def segment_points(
        self, image: ImageInput, points: Sequence[Sequence[float]] = (), *, upload: Upload | None = None, **params: Any
    ) -> Result:
        reduce_to = await self._reduce_to(upload)
        call = await asyncio.to_thread(calls.segment_points, image, points, reduce_to=reduce_to, **params)
        return (await self._send(call)).with_image(image)

    async def _reduce_to(self, upload: Upload | None) -> int | None:
        if not self.settings.reduces(upload):
            return None
        async with self._input_size_lock:
            if self._input_size is UNKNOWN:
                await self.info()
        return cast(int | None, self._input_size)

    async def track_video(
        self,
        video: str | Path | bytes,
        prompt: str | None = None,
        points: Sequence[Sequence[float]] = (),
        **params: Any,
    ) -> AsyncIterator[VideoFrame]:
        """`async for frame in client.track_video("clip.mp4", "car"): ...` (see `Client.track_video`)."""
        call = await asyncio.to_thread(calls.track_video, video, prompt, points, **params)
        stream = VideoStream(self.settings.url)
        response = await self._send(call)
        try:
            async for line in response.aiter_lines():
                if line and (frame := stream.frame(line)) is not None:
                    yield frame
        except httpx.TransportError as exc:
            raise stream.broken(exc) from exc
        finally:
            await response.aclose()
        stream.finished()

    def segment_many(
        self,
        images: Iterable[ImageT],
        prompt: str | Sequence[str] | None = None,
        *,
        reference_image: ImageInput | None = None,
        upload: Upload | None = None,
        concurrency: int = 8,
        progress: bool = True,
        ordered: bool = True,
        **params: Any,
    ) -> AsyncIterator[BatchItem[ImageT]]:
        """`async for item in client.segment_many(paths, "cat", concurrency=16): ...` (see `run_batch`)."""
        calls.segment_params(prompt, **params)  # a bad parameter fails here, not once per image
        self.settings.reduces(upload)
        return run_batch(
            images,
            lambda image: self.segment(image, prompt, reference_image=reference_image, upload=upload, **params),
            concurrency=concurrency,
            progress=progress,
            ordered=ordered,
        )

    def segment_points_many(
        self,
        images: Iterable[ImageT],
        points: Sequence[Sequence[float]] = (),
        *,
        upload: Upload | None = None,
        concurrency: int = 8,
        progress: bool = True,
        ordered: bool = True,
        **params: Any,
    ) -> AsyncIterator[BatchItem[ImageT]]:
        calls.points_params(points, **params)
        self.settings.reduces(upload)
        return run_batch(
            images,
            lambda image: self.segment_points(image, points, upload=upload, **params),
            concurrency=concurrency,
            progress=progress,
            ordered=ordered,
        )

    async def _send(self, call: Call) -> Any:
        for attempt in itertools.count():
            outcome: httpx.Response | Exception
            try:
                request = self._http.build_request(call.method, call.path, **call.kwargs)
                outcome = await self._http.send(request, stream=call.stream)
                if outcome.is_error:
                    await outcome.aread()
            except httpx.TransportError as exc:
                outcome = exc
            delay = retry_delay(self.settings.retry, attempt, outcome)
            if delay is None:
                return finish(call, outcome, self.settings.url)
            await asyncio.sleep(delay)
