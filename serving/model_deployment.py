"""The GPU deployment: one SAM3 (detector + tracker) per replica, requests batched with
`@serve.batch` so concurrent requests share one forward pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ray import serve

from serving.config import ServiceConfig
from serving.embedding_cache import EmbeddingCache
from serving.errors import ServiceError
from serving.metrics import BatchMetrics, TextCacheMetrics
from serving.model_loader import load_sam3
from serving.output_double import SegmentOutputDouble, TrackerOutputDouble, is_output_double
from serving.predictor import PointsItem, RawDetections, RawPointMasks, Sam3Predictor, SegmentItem
from serving.video_loader import load_sam3_video
from serving.video_tracking import Sam3VideoTracker, TrackedFrame, TrackRequest, VideoTracker, track_video

DEFAULT_BATCH = ServiceConfig().batching
# A video holds its slot for seconds to minutes; retrying sooner would only be refused again.
VIDEO_RETRY_AFTER_S = 5


@serve.deployment(name="SAM3Model")
class SAM3Model:
    def __init__(self, config: dict):
        self.config = ServiceConfig.model_validate(config)
        self.batches = BatchMetrics(self.config.batching.max_batch_size)
        self.text_metrics = TextCacheMetrics()
        self.videos_running = 0
        if is_output_double(self.config.model):  # the benchmarks' stand-in for a GPU: no model at all
            self.segmenter: Sam3Predictor | SegmentOutputDouble = SegmentOutputDouble(self.config.model)
            self.video: VideoTracker = TrackerOutputDouble(self.config.model)
            self.predictor = None
        else:
            self.loaded = load_sam3(self.config)
            self.segmenter = self.predictor = Sam3Predictor(self.loaded, self.config.text_cache_entries)
            self.video = Sam3VideoTracker(load_sam3_video(self.loaded, self.config.model))
            self.embeddings = EmbeddingCache(self.predictor, self.config.embedding_cache_mb)
        for batched in (self.segment, self.segment_points):
            batched.set_max_batch_size(self.config.batching.max_batch_size)  # type: ignore[union-attr]  # added by @serve.batch, untyped
            batched.set_batch_wait_timeout_s(self.config.batching.batch_wait_timeout_s)  # type: ignore[union-attr]  # likewise

    # The batch size set here is replaced by the configured one in __init__.
    @serve.batch(max_batch_size=DEFAULT_BATCH.max_batch_size, batch_wait_timeout_s=DEFAULT_BATCH.batch_wait_timeout_s)
    async def segment(self, items: list[SegmentItem]) -> list[list[RawDetections]]:
        self.batches.ran("segment", len(items))
        # In a worker thread so the replica keeps accepting (and batching) requests meanwhile.
        raws = await asyncio.to_thread(self.segmenter.segment, items)
        if self.predictor is not None:
            self.text_metrics.update(self.predictor.texts.hits, self.predictor.texts.misses)
        return raws

    @serve.batch(max_batch_size=DEFAULT_BATCH.max_batch_size, batch_wait_timeout_s=DEFAULT_BATCH.batch_wait_timeout_s)
    async def segment_points(self, items: list[PointsItem]) -> list[RawPointMasks]:
        predictor = self._real_model()
        self.batches.ran("segment_points", len(items))
        embeddings = await self.embeddings.embeddings(items)
        return await asyncio.to_thread(predictor.segment_points, items, embeddings)

    async def track_video(self, data: bytes, request: TrackRequest) -> AsyncIterator[TrackedFrame]:
        """Frames as they are computed; call through `handle.options(stream=True)`.

        A streaming method here rather than a deployment of its own: the video models share this
        replica's weights (serving.video_loader), so a GPU holds one copy, and image requests keep
        being batched on the replica while a video runs in a worker thread.
        """
        if self.videos_running >= self.config.concurrent_videos:
            raise ServiceError(
                503,
                "overloaded",
                f"this model replica is tracking {self.videos_running} videos, its limit (concurrent_videos); "
                "retry later",
                headers={"Retry-After": str(VIDEO_RETRY_AFTER_S)},
            )
        self.videos_running += 1
        try:
            frames = track_video(data, request, self.video, self.config.limits.max_video_frames)
            while (frame := await asyncio.to_thread(next, frames, None)) is not None:
                yield frame
        finally:  # also when the caller goes away: Serve closes the generator
            self.videos_running -= 1

    def _real_model(self) -> Sam3Predictor:
        if self.predictor is None:
            raise ServiceError(
                422,
                "not_available",
                "this service runs the benchmarks' output double, which only "
                "answers /v1/segment and /v1/video/track; point requests need a real model",
            )
        return self.predictor

    def describe(self) -> dict:
        if isinstance(self.segmenter, SegmentOutputDouble):
            return self.segmenter.describe()
        # Otherwise self.segmenter is self.predictor.
        return {
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "tiny_random_model": self.loaded.tiny,
            "embedding_cache": self.embeddings.describe(),
            "text_cache": self.segmenter.texts.describe(),
        }
