"""The CPU ingress: HTTP API v1.  Validates and decodes requests, calls the model deployment
through its handle, post-processes and encodes the results.

No `from __future__ import annotations` here: FastAPI reads the route annotations at runtime.
"""


import logging

from fastapi import FastAPI, Request
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.concurrency import run_in_threadpool

from sdk.schema import (
    API_VERSION,
    BatchingInfo,
    ErrorResponse,
    HealthResponse,
    DeploymentStatus,
    InfoResponse,
    PointsParams,
    PointsRequest,
    SegmentParams,
    SegmentRequest,
    SegmentResponse,
    StatusResponse,
    Throughput,
)
from serving.cluster_metrics import ClusterSampler
from serving.config import ServiceConfig
from serving.embedding_cache import image_key
from serving.errors import install_error_handlers
from serving.http import (
    PayloadLimitMiddleware,
    check_box_inside,
    check_inside,
    check_prompt_limits,
    document_image_body,
    read_image_request,
)
from serving.images import decode_image
from serving.metrics import RequestMetrics, RequestMetricsMiddleware
from serving.model_loader import load_processors
from serving.postprocess import detections_response, point_masks_response
from serving.predictor import PointsItem, SegmentItem
from serving.tiny_model import TINY_MODEL_NOTICE

log = logging.getLogger("samfleet")

api = FastAPI(
    title="samfleet",
    version=API_VERSION,
    description="SAM3 annotation service: every instance matching a text prompt, box exemplars or points.",
)
api.add_middleware(PayloadLimitMiddleware)
api.add_middleware(RequestMetricsMiddleware)  # added last = outermost: it also counts refused bodies
install_error_handlers(api)
document_image_body(
    api,
    {
        f"/{API_VERSION}/segment": (SegmentRequest, SegmentParams),
        f"/{API_VERSION}/segment/points": (PointsRequest, PointsParams),
    },
)
ERRORS = {code: {"model": ErrorResponse} for code in (413, 415, 422, 503)}
EXEMPLAR_LABEL = "exemplar"
SEGMENT_PATH = f"/{API_VERSION}/segment"
POINTS_PATH = f"/{API_VERSION}/segment/points"
IMAGE_ENDPOINTS = {SEGMENT_PATH, POINTS_PATH}
STATUS_PATH = f"/{API_VERSION}/status"
# The paths metrics are labelled with; anything else is counted as "other".
ENDPOINTS = IMAGE_ENDPOINTS | {STATUS_PATH, f"/{API_VERSION}/info", "/healthz", "/docs", "/openapi.json"}


def _deployments() -> dict[str, DeploymentStatus]:
    """This application's deployments as Serve's controller sees them now."""
    app_name = serve.get_replica_context().app_name
    app = serve.status().applications[app_name]
    return {
        name: DeploymentStatus(name=name, status=str(d.status.value), replicas={str(k): v for k, v in d.replica_states.items()})
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
        api.state.request_metrics = self.metrics = RequestMetrics(ENDPOINTS)
        self.sampler = ClusterSampler(
            serve.get_replica_context().app_name, IMAGE_ENDPOINTS, self.config.status.sample_interval_s,
            self.config.status.window_s,
        )

    async def _read(self, request: Request, json_model, params_model):
        """(decoded image, parameters), the prompt limits checked before the image is decoded."""
        data, params = await read_image_request(request, json_model, params_model)
        check_prompt_limits(self.config.limits, params)
        return await run_in_threadpool(decode_image, data, self.config.limits), params

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz(self) -> HealthResponse:
        return HealthResponse()

    @api.get(f"/{API_VERSION}/info", response_model=InfoResponse)
    async def info(self) -> InfoResponse:
        described = await self.model.describe.remote()
        if described["tiny_random_model"]:
            log.warning(TINY_MODEL_NOTICE)
        return InfoResponse(
            model=self.config.model,
            replicas={name: d.replicas.get("RUNNING", 0) for name, d in (await run_in_threadpool(_deployments)).items()},
            limits=self.config.limits,
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

    @api.post(SEGMENT_PATH, response_model=SegmentResponse, responses=ERRORS)
    async def segment(self, request: Request) -> SegmentResponse:
        image, params = await self._read(request, SegmentRequest, SegmentParams)
        height, width = image.shape[:2]
        for i, ex in enumerate(params.exemplars):
            check_box_inside(f"exemplars.{i}.box", ex.box, width, height)
        item = SegmentItem(
            image=image,
            prompts=params.texts(),
            boxes=[ex.box.xyxy() for ex in params.exemplars],
            box_labels=[int(ex.label == "positive") for ex in params.exemplars],
            threshold=params.threshold,
            negative_prompts=params.negative_prompts,
        )
        raws = await self.model.segment.remote(item)
        # Instances found by the exemplar boxes alone are labelled as such, not with the
        # placeholder text the model was given.
        labelled = [(text if item.prompts or excluded else EXEMPLAR_LABEL, excluded) for text, excluded in item.queries()]
        response = await run_in_threadpool(
            detections_response,
            raws,
            labelled,
            self.processor,
            height=height,
            width=width,
            threshold=params.threshold,
            mask_threshold=params.mask_threshold,
            mask_format=params.mask_format,
            negative_iou=params.negative_iou,
            negative_containment=params.negative_containment,
            model=self.config.model,
        )
        self.metrics.returned(SEGMENT_PATH, len(response.instances))
        return response

    @api.post(POINTS_PATH, response_model=SegmentResponse, responses=ERRORS)
    async def segment_points(self, request: Request) -> SegmentResponse:
        image, params = await self._read(request, PointsRequest, PointsParams)
        height, width = image.shape[:2]
        check_inside("points", [p.x for p in params.points], [p.y for p in params.points], width, height)
        if params.box is not None:
            check_box_inside("box", params.box, width, height)
        item = PointsItem(
            image=image,
            points=[[p.x, p.y] for p in params.points],
            point_labels=[int(p.label == "positive") for p in params.points],
            box=params.box.xyxy() if params.box else None,
            multimask=params.multimask,
        )
        model = self.model
        if self.config.embedding_cache_mb:
            # Routed to the replica that keeps this image's embedding, when one does.
            model = model.options(multiplexed_model_id=await run_in_threadpool(image_key, image))
        raw = await model.segment_points.remote(item)
        response = await run_in_threadpool(
            point_masks_response,
            raw,
            self.tracker_processor,
            height=height,
            width=width,
            mask_threshold=params.mask_threshold,
            mask_format=params.mask_format,
            model=self.config.model,
        )
        self.metrics.returned(POINTS_PATH, len(response.instances))
        return response

