"""The CPU ingress: HTTP API v1.  Validates and decodes requests, calls the model deployment
through its handle, post-processes and encodes the results.

No `from __future__ import annotations` here: FastAPI reads the route annotations at runtime.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.concurrency import run_in_threadpool

from sdk.schema import (
    API_VERSION,
    BatchingInfo,
    DeploymentStatus,
    ErrorDetail,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    PointsParams,
    PointsRequest,
    SegmentParams,
    SegmentRequest,
    SegmentResponse,
    StatusResponse,
    Throughput,
    TrackParams,
    VideoError,
    VideoSummary,
)
from serving.auth import OPEN_PATHS, ApiKeyMiddleware
from serving.cluster_metrics import ClusterSampler
from serving.config import ServiceConfig
from serving.embedding_cache import image_key
from serving.errors import ServiceError, install_error_handlers, overloaded, replica_lost
from serving.http import (
    PayloadLimitMiddleware,
    check_box_inside,
    check_inside,
    check_prompt_limits,
    document_image_body,
    read_image_request,
    read_video_request,
)
from serving.images import decode_image, stands_for
from serving.metrics import RequestMetrics, RequestMetricsMiddleware, StageTimes
from serving.model_loader import load_processors
from serving.postprocess import logit, point_masks_response, segment_response
from serving.predictor import PointsItem, model_image
from serving.segmentation import plan_segment
from serving.tiny_model import TINY_MODEL_NOTICE
from serving.video_decode import probe_video
from serving.video_lines import frame_line, ndjson
from serving.video_tracking import TrackRequest

log = logging.getLogger("samfleet")
T = TypeVar("T")

api = FastAPI(
    title="samfleet",
    version=API_VERSION,
    description="SAM3 annotation service: every instance matching a text prompt, box exemplars or points.",
)
api.add_middleware(PayloadLimitMiddleware)
api.add_middleware(ApiKeyMiddleware)  # outside the body limit: an unauthenticated body is not even read
api.add_middleware(RequestMetricsMiddleware)  # added last = outermost: it also counts refused requests
install_error_handlers(api)
document_image_body(
    api,
    {
        f"/{API_VERSION}/segment": (SegmentRequest, SegmentParams),
        f"/{API_VERSION}/segment/points": (PointsRequest, PointsParams),
    },
    OPEN_PATHS,
)
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)}
SEGMENT_PATH = f"/{API_VERSION}/segment"
POINTS_PATH = f"/{API_VERSION}/segment/points"
IMAGE_ENDPOINTS = {SEGMENT_PATH, POINTS_PATH}
VIDEO_PATH = f"/{API_VERSION}/video/track"
STATUS_PATH = f"/{API_VERSION}/status"
NDJSON = "application/x-ndjson"
# The paths metrics are labelled with; anything else is counted as "other".
ENDPOINTS = IMAGE_ENDPOINTS | {VIDEO_PATH, STATUS_PATH, f"/{API_VERSION}/info", "/healthz", "/docs", "/openapi.json"}


def _deployments() -> dict[str, DeploymentStatus]:
    """This application's deployments as Serve's controller sees them now."""
    app_name = serve.get_replica_context().app_name
    app = serve.status().applications[app_name]
    return {
        name: DeploymentStatus(
            name=name, status=str(d.status.value), replicas={str(k): v for k, v in d.replica_states.items()}
        )
        for name, d in app.deployments.items()
    }


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, model: DeploymentHandle, config: dict):
        self.config = ServiceConfig.model_validate(config)
        self.model = model
        self.processor, self.tracker_processor = load_processors(self.config.model)
        api.state.limits = self.config.limits
        api.state.api_key_hashes = self.config.auth.api_key_hashes
        api.state.body_limits = {VIDEO_PATH: self.config.limits.max_video_bytes}
        api.state.request_metrics = self.metrics = RequestMetrics(ENDPOINTS)
        self.decode_slots = asyncio.Semaphore(self.config.concurrent_decodes)
        self.sampler = ClusterSampler(
            serve.get_replica_context().app_name,
            IMAGE_ENDPOINTS,
            self.config.status.sample_interval_s,
            self.config.status.window_s,
        )

    async def _prepared(self, request: Request, json_model, params_model, times: StageTimes, prepare):
        """(prepare(decoded images, parameters), parameters).  The prompt limits are checked before
        any image is decoded; decoding and `prepare` (which turns the photos into the model's
        input) run in one of `concurrent_decodes` slots, so that however many requests are in
        flight this replica holds at most that many decoded photos (36 MB each at 12 MP, and
        their resize buffers); requests waiting for a slot hold only their upload."""
        data, params = await read_image_request(request, json_model, params_model, self.config.limits)
        check_prompt_limits(self.config.limits, params)
        async with self.decode_slots:
            return await run_in_threadpool(self._decode_and_prepare, data, params, times, prepare), params

    def _decode_and_prepare(self, data: dict[str, bytes], params, times: StageTimes, prepare):
        images = {name: times.run("decode", decode_image, raw, self.config.limits, name) for name, raw in data.items()}
        return times.run("preprocess", prepare, images, params)

    async def _timed(self, times: StageTimes, calls):
        """The model deployment's answers to `calls` (DeploymentResponses), waited for together."""
        started = time.perf_counter()
        answers = await asyncio.gather(*(self._infer(call) for call in calls))
        times.waited("model", time.perf_counter() - started)
        return answers

    @staticmethod
    async def _infer(response: Awaitable[T]) -> T:
        """The model deployment's answer to a call (a DeploymentResponse, or the next item of a
        DeploymentResponseGenerator)."""
        try:
            return await response
        except BackPressureError as exc:
            raise overloaded(exc) from None
        except RayActorError as exc:
            raise replica_lost(exc) from None
        except RayTaskError as exc:
            if isinstance(exc.cause, ServiceError):  # the replica refused the request: the same answer
                raise exc.cause from None
            raise

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz(self) -> HealthResponse:
        return HealthResponse()

    @api.get(f"/{API_VERSION}/info", response_model=InfoResponse)
    async def info(self) -> InfoResponse:
        described = await self._infer(self.model.describe.remote())
        if described["tiny_random_model"]:
            log.warning(TINY_MODEL_NOTICE)
        return InfoResponse(
            model=self.config.model,
            replicas={
                name: d.replicas.get("RUNNING", 0) for name, d in (await run_in_threadpool(_deployments)).items()
            },
            limits=self.config.limits,
            input_size=max(self.processor.image_processor.size.height, self.processor.image_processor.size.width),
            batching=BatchingInfo(**self.config.batching.model_dump()),
            **described,
        )

    @api.get(STATUS_PATH, response_model=StatusResponse)
    async def status(self) -> StatusResponse:
        """Replicas per deployment, requests in the system and recent throughput, cluster-wide."""
        deployments = await run_in_threadpool(_deployments)
        snapshot, rates = await self.sampler.current()
        for name, deployment in deployments.items():
            deployment.in_system = snapshot.in_system.get(name)
            deployment.waiting = snapshot.waiting.get(name)
        return StatusResponse(
            application=self.sampler.application,
            deployments=list(deployments.values()),
            throughput=Throughput(**vars(rates)) if rates else None,
            sampled_at=snapshot.time,
        )

    async def _answer(self, path: str, response: SegmentResponse, times: StageTimes) -> Response:
        """The response serialised once: it was built from validated parts, and FastAPI would
        validate and serialise it again (a third of the ingress's time at 200 instances)."""
        self.metrics.returned(path, len(response.instances))
        body = await run_in_threadpool(times.run, "json", response.model_dump_json)
        return Response(body, media_type="application/json", headers={"Server-Timing": times.header()})

    @api.post(SEGMENT_PATH, response_model=SegmentResponse, responses=ERRORS)
    async def segment(self, request: Request) -> Response:
        times = StageTimes()

        def plan(images, params):  # the job holds the resized windows: the photo is not kept
            return plan_segment(
                images["image"],
                params,
                self.config.limits,
                lambda pixels: model_image(pixels, self.processor),
                images.get("reference_image"),
            )

        job, params = await self._prepared(request, SegmentRequest, SegmentParams, times, plan)
        height, width = job.size
        # Tiles go out as separate calls so the replicas' batching packs them into full batches.
        raws = await self._timed(times, [self.model.segment.remote(item) for item in job.items])
        found = await run_in_threadpool(times.run, "postprocess", job.finish, raws, self.processor)
        response = await run_in_threadpool(
            times.run,
            "encode",
            segment_response,
            found,
            height=height,
            width=width,
            mask_format=params.mask_format,
            model=self.config.model,
        )
        return await self._answer(SEGMENT_PATH, response, times)

    @api.post(POINTS_PATH, response_model=SegmentResponse, responses=ERRORS)
    async def segment_points(self, request: Request) -> Response:
        times = StageTimes()

        def item_of(images, params) -> PointsItem:  # the item holds the resized pixels: the photo is not kept
            height, width = size = stands_for(images["image"], params.original_size, self.config.limits)
            check_inside("points", [p.x for p in params.points], [p.y for p in params.points], width, height)
            if params.box is not None:
                check_box_inside("box", params.box, width, height)
            return PointsItem(
                image=replace(model_image(images["image"], self.tracker_processor), original_size=size),
                points=[[p.x, p.y] for p in params.points],
                point_labels=[int(p.label == "positive") for p in params.points],
                box=params.box.xyxy() if params.box else None,
                multimask=params.multimask,
                mask_logit_threshold=logit(params.mask_threshold),
            )

        item, params = await self._prepared(request, PointsRequest, PointsParams, times, item_of)
        height, width = item.image.original_size
        model = self.model
        if self.config.embedding_cache_mb:
            # Routed to the replica that keeps this image's embedding, when one does; the key also
            # travels in the item, which is what the replica looks the embedding up by.
            item.image_key = await run_in_threadpool(image_key, item.image)
            model = model.options(multiplexed_model_id=item.image_key)
        (raw,) = await self._timed(times, [model.segment_points.remote(item)])
        response = await run_in_threadpool(
            times.run,
            "postprocess",
            point_masks_response,
            raw,
            height=height,
            width=width,
            mask_threshold=params.mask_threshold,
            mask_format=params.mask_format,
            model=self.config.model,
        )
        return await self._answer(POINTS_PATH, response, times)

    @api.post(
        VIDEO_PATH,
        responses={
            **ERRORS,
            200: {
                "content": {NDJSON: {}},
                "description": "one JSON line per "
                "frame (sdk.schema.VideoFrame) as it is computed, then a VideoSummary (or VideoError) line",
            },
        },
    )
    async def track_video(self, request: Request) -> StreamingResponse:
        """Multipart: `video` file + `params` JSON (TrackParams).  Everything that can be checked before
        tracking starts is, so a bad request gets a 4xx status instead of a failed stream."""
        data, params = await read_video_request(request, TrackParams, self.config.limits)
        check_prompt_limits(self.config.limits, params)
        video = await run_in_threadpool(probe_video, data, self.config.limits)
        if params.frame >= video.frames:
            raise ServiceError(
                422,
                "out_of_range",
                f"frame {params.frame} is past the video's last frame ({video.frames - 1})",
                "frame",
            )
        check_inside("points", [p.x for p in params.points], [p.y for p in params.points], video.width, video.height)
        item = TrackRequest(
            prompt=params.prompt,
            points=[[p.x, p.y] for p in params.points],
            point_labels=[int(p.label == "positive") for p in params.points],
            frame=params.frame,
        )
        # With stream=True the handle answers with a generator; its types cannot say so.
        frames = cast(DeploymentResponseGenerator, self.model.options(stream=True).track_video.remote(data, item))
        # A full queue or a lost replica shows on the first frame: answered as a 503 status, which
        # clients retry, rather than as a failed stream after a 200.
        first = await self._infer(anext(frames, None))

        async def tracked_frames():
            tracked = first
            while tracked is not None:
                yield tracked
                tracked = await self._infer(anext(frames, None))

        async def lines():
            sent, object_ids = 0, set[int]()
            try:
                async for tracked in tracked_frames():
                    line = await run_in_threadpool(frame_line, tracked, video.frames, params.mask_format)
                    sent, object_ids = sent + 1, object_ids | set(tracked.object_ids)
                    yield ndjson(line)
            # The status (200) is sent: the stream's last line says what failed.
            except ServiceError as exc:  # e.g. more frames decoded than the packets said, a lost replica
                yield ndjson(
                    VideoError(
                        status=exc.status,
                        error=ErrorDetail(code=exc.code, message=f"{exc.message} (after {sent} frames)"),
                    )
                )
                return
            except Exception as exc:
                log.exception("video tracking failed")
                yield ndjson(
                    VideoError(
                        status=500,
                        error=ErrorDetail(
                            code="tracking_failed",
                            message=f"tracking failed after {sent} frames: {exc.__class__.__name__}",
                        ),
                    )
                )
                return
            self.metrics.returned(VIDEO_PATH, len(object_ids))
            yield ndjson(VideoSummary(frames=sent, object_ids=sorted(object_ids), model=self.config.model))

        return StreamingResponse(lines(), media_type=NDJSON)
