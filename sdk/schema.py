"""The samfleet wire schema, API v1: the one definition shared by the server and the SDK.

`serving/` imports these models to validate requests and build responses; the SDK uses them
to build requests and parse responses.  Nothing here depends on torch or ray.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

API_VERSION = "v1"

MaskFormat = Literal["rle", "png", "polygon"]
PointLabel = Literal["positive", "negative"]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    # Unknown fields are an error, not silently ignored: a typo such as "treshold" must not
    # quietly fall back to the default.  NaN and infinities are refused in every number (JSON
    # parsers accept them, and a NaN point or box otherwise passed every bounds check).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Box(_Strict):
    """An axis-aligned box in pixels of the original image: (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise ValueError("box must have x2 > x1 and y2 > y1")
        return self

    def xyxy(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


class Exemplar(_Strict):
    """A box around an example of what to find (positive) or of what not to find (negative)."""

    box: Box
    label: PointLabel = "positive"


class Point(_Strict):
    x: float
    y: float
    label: PointLabel = "positive"


class OriginalSize(_Strict):
    """The photo an upload was reduced from (the SDK's default for requests that do not need full
    resolution): prompts are given, and masks and boxes answered, in its pixels."""

    width: int = Field(gt=0)
    height: int = Field(gt=0)


ORIGINAL_SIZE_DESCRIPTION = (
    "Set when the uploaded image is the photo reduced (same aspect ratio, within a pixel): the "
    "photo's size after EXIF orientation. Points and boxes are in the photo's pixels; masks and "
    "boxes come back at its size."
)


class Tiling(_Strict):
    """High-resolution mode: the image is cut into overlapping tiles, each seen by the model at
    its full input resolution, and instances cut by tile borders are merged back together."""

    tile_size: int = Field(default=1008, ge=64, le=8192, description="Tile side in pixels (SAM3 sees 1008x1008).")
    overlap: int = Field(
        default=200,
        ge=0,
        description="Pixels shared by neighbouring tiles; make it wider "
        "than the objects you look for so each is whole in at least one tile.",
    )
    merge_iou: Probability = Field(
        default=0.5,
        description="Two instances from overlapping tiles are one "
        "object when their masks' IoU inside the tiles' shared area reaches this.",
    )
    full_image: bool = Field(
        default=True,
        description="Also run the whole (downscaled) image and keep what no "
        "tile found, e.g. objects larger than a tile.",
    )

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> Tiling:
        if self.overlap >= self.tile_size:
            raise ValueError("overlap must be smaller than tile_size")
        return self


class SegmentParams(_Strict):
    """Find every instance of one or several concepts: text prompts and/or box exemplars, minus
    the instances of excluded concepts."""

    prompt: str | None = Field(default=None, description="Noun phrase to find, e.g. 'red bus'.")
    prompts: list[str] = Field(
        default_factory=list,
        description="Several noun phrases found in one request on one image encoding; each instance's "
        "`label` is the prompt that found it. Give `prompt` or `prompts`, not both.",
    )
    exemplars: list[Exemplar] = Field(default_factory=list)
    reference_exemplars: list[Exemplar] = Field(
        default_factory=list,
        description="Boxes on the separate `reference_image` around examples of what to find in this image "
        '("find everything like this").',
    )
    negative_prompts: list[str] = Field(
        default_factory=list,
        description="Concepts to exclude, e.g. ['mannequin']: an instance whose mask overlaps an instance "
        "of one of these (see negative_iou, negative_containment) is dropped.",
    )
    negative_iou: Probability = Field(
        default=0.5, description="Drop an instance whose mask IoU with an excluded one reaches this."
    )
    negative_containment: Probability = Field(
        default=0.8, description="... or that lies this much (fraction of its own area) inside an excluded one."
    )
    threshold: Probability = Field(default=0.5, description="Minimum instance score kept.")
    mask_threshold: Probability = Field(default=0.5, description="Mask probability binarisation level.")
    mask_format: MaskFormat = "rle"
    tiling: Tiling | None = Field(default=None, description="High-resolution mode; off when absent.")
    original_size: OriginalSize | None = Field(default=None, description=ORIGINAL_SIZE_DESCRIPTION)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("prompts", "negative_prompts")
    @classmethod
    def _prompts_not_blank(cls, values: list[str]) -> list[str]:
        if any(not v.strip() for v in values):
            raise ValueError("prompts must not be empty")
        return values

    @model_validator(mode="after")
    def _has_prompt(self) -> SegmentParams:
        if self.prompt is not None and self.prompts:
            raise ValueError("give `prompt` or `prompts`, not both")
        boxes = self.exemplars or self.reference_exemplars
        if not self.texts() and not boxes:
            raise ValueError("give a text prompt, box exemplars, or both")
        if len(self.prompts) > 1 and boxes:
            raise ValueError("box exemplars refine one concept: use them with a single prompt")
        if self.tiling is not None and boxes:
            raise ValueError("tiling works with text prompts only: an exemplar box lies in one tile")
        if self.original_size is not None and (self.tiling is not None or self.reference_exemplars):
            raise ValueError("tiling and reference images need the photo itself: send it without original_size")
        return self

    def texts(self) -> list[str]:
        """The text prompts to find, whichever field gave them."""
        return [self.prompt] if self.prompt is not None else list(self.prompts)


class PointsParams(_Strict):
    """Segment one object from clicks (points) and/or a box around it."""

    points: list[Point] = Field(default_factory=list)
    box: Box | None = None
    multimask: bool = Field(default=False, description="Return the model's 3 candidate masks.")
    mask_threshold: Probability = 0.5
    mask_format: MaskFormat = "rle"
    original_size: OriginalSize | None = Field(default=None, description=ORIGINAL_SIZE_DESCRIPTION)

    @model_validator(mode="after")
    def _has_prompt(self) -> PointsParams:
        if not self.points and self.box is None:
            raise ValueError("give points, a box, or both")
        return self


# The request fields that carry image files: base64 strings in JSON, file parts in multipart.
IMAGE_PARTS = ("image", "reference_image")


class ImagePayload(_Strict):
    image: str = Field(description="The image file (JPEG, PNG, WebP, ...) encoded as base64.")


class SegmentRequest(SegmentParams, ImagePayload):
    """JSON form of POST /v1/segment; the multipart form sends `image` (and `reference_image`) as
    files and these parameters as the JSON form field `params`."""

    reference_image: str | None = Field(default=None, description="base64 image that `reference_exemplars` point into.")


class PointsRequest(PointsParams, ImagePayload):
    """JSON form of POST /v1/segment/points (multipart: `image` file + `params` JSON field)."""


class RleMask(BaseModel):
    format: Literal["rle"] = "rle"
    size: tuple[int, int] = Field(description="(height, width)")
    counts: str = Field(description="COCO compressed RLE counts, as pycocotools writes them")


class PngMask(BaseModel):
    format: Literal["png"] = "png"
    size: tuple[int, int]
    data: str = Field(description="base64 of a 1-bit PNG, 1 = object")


class PolygonMask(BaseModel):
    format: Literal["polygon"] = "polygon"
    size: tuple[int, int]
    polygons: list[list[float]] = Field(description="COCO polygons: [x1, y1, x2, y2, ...] per part")


Mask = Annotated[RleMask | PngMask | PolygonMask, Field(discriminator="format")]


class Instance(BaseModel):
    mask: Mask
    box: tuple[float, float, float, float] = Field(description="xyxy in pixels of the original image")
    score: float
    label: str


class SegmentResponse(BaseModel):
    width: int
    height: int
    instances: list[Instance]
    model: str


class Limits(BaseModel):
    """Every request limit the service enforces; all are set in the Serve config."""

    model_config = ConfigDict(extra="forbid")

    max_image_pixels: int = Field(default=40_000_000, gt=0, description="width*height after decoding")
    max_payload_bytes: int = Field(default=32 * 1024 * 1024, gt=0, description="HTTP request body size")
    max_prompt_chars: int = Field(default=200, gt=0)
    max_prompts: int = Field(default=8, gt=0, description="text prompts per request, negative ones included")
    max_exemplars: int = Field(default=16, gt=0)
    max_points: int = Field(default=32, gt=0)
    max_tiles: int = Field(default=64, gt=0, description="tiles per image in high-resolution mode")
    max_video_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0, description="video upload size (replaces max_payload_bytes there)"
    )
    max_video_frames: int = Field(default=3000, gt=0, description="frames in one video (counted before decoding)")
    max_video_pixels: int = Field(default=8_294_400, gt=0, description="width*height of a video frame (3840x2160)")


class TrackParams(_Strict):
    """Track objects through a video: every instance of a text prompt (detected on every frame, each
    object keeping its id), and/or one object clicked on frame `frame` (followed forward from there)."""

    prompt: str | None = Field(default=None, description="Noun phrase to find and track, e.g. 'red bus'.")
    points: list[Point] = Field(default_factory=list, description="Clicks on frame `frame` marking one object.")
    frame: int = Field(default=0, ge=0, description="Frame the points are on; tracking starts there.")
    mask_format: MaskFormat = "rle"

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str | None) -> str | None:
        return SegmentParams._prompt_not_blank(value)

    @model_validator(mode="after")
    def _has_prompt(self) -> TrackParams:
        if self.prompt is None and not self.points:
            raise ValueError("give a text prompt, points, or both")
        return self


class TrackedInstance(Instance):
    object_id: int = Field(description="the same object keeps the same id on every frame")


class VideoFrame(BaseModel):
    """One NDJSON line of POST /v1/video/track: a frame's instances, sent as soon as it is computed."""

    type: Literal["frame"] = "frame"
    frame_index: int
    frame_count: int = Field(description="frames in the video; lines come for frame `frame` to the last")
    width: int
    height: int
    instances: list[TrackedInstance]


class VideoSummary(BaseModel):
    """The last line of a complete stream."""

    type: Literal["summary"] = "summary"
    frames: int = Field(description="frame lines sent")
    object_ids: list[int] = Field(description="every object id that appeared")
    model: str


class VideoError(BaseModel):
    """The last line of a stream that failed after it started (the status was already 200)."""

    type: Literal["error"] = "error"
    # A stream's status is 200 whatever happens later: this says what the failure is worth to a
    # client, as a status would (503: a lost replica, send the video again; 413: never).
    status: int = Field(description="the HTTP status the same failure gets before a stream starts")
    error: ErrorDetail


class TrackLine(RootModel[Annotated[VideoFrame | VideoSummary | VideoError, Field(discriminator="type")]]):
    """Any line of the NDJSON stream."""


class BatchingInfo(BaseModel):
    max_batch_size: int
    batch_wait_timeout_s: float


class EmbeddingCacheInfo(BaseModel):
    """Image embeddings kept for point/box prompts, as the SAM3 replica that answered reports them."""

    capacity: int = Field(description="images one replica keeps (embedding_cache_mb / embedding_bytes); 0: no cache")
    embedding_bytes: int = Field(description="memory one image's embedding takes with the loaded model and dtype")
    images_encoded: int = Field(description="vision-encoder runs for point/box prompts on this replica so far")


class TextCacheInfo(BaseModel):
    """Encoded text prompts kept by the SAM3 replica that answered."""

    entries: int = Field(description="prompts kept now")
    capacity: int = Field(description="prompts kept at most (text_cache_entries); 0: no cache")
    hits: int = Field(description="prompt lookups answered from the cache on this replica so far")
    misses: int = Field(description="prompts encoded on this replica so far")


class InfoResponse(BaseModel):
    api_version: str = API_VERSION
    model: str
    tiny_random_model: bool = Field(description="True when the weights are random: masks are meaningless")
    output_double: bool = Field(
        default=False,
        description="True when no model runs: the benchmarks' SAM3 "
        "output double answers with synthetic instances (serving/output_double.py)",
    )
    dtype: str
    device: str
    input_size: int | None = Field(
        default=None,
        description="the side, in pixels, of the square image the model sees; the SDK reduces uploads so "
        "that their shorter side is this (None from servers older than reduced uploads)",
    )
    replicas: dict[str, int]
    limits: Limits
    batching: BatchingInfo
    embedding_cache: EmbeddingCacheInfo | None = None  # None from servers older than the cache
    text_cache: TextCacheInfo | None = None  # None from servers older than the cache


class DeploymentStatus(BaseModel):
    name: str
    status: str = Field(description="Serve's deployment status, e.g. HEALTHY, UPSCALING, UNHEALTHY")
    replicas: dict[str, int] = Field(description="replica count by state (RUNNING, STARTING, STOPPING, ...)")
    in_system: float | None = Field(
        default=None, description="requests queued or running at this deployment, as the autoscaler sees them"
    )
    waiting: float | None = Field(default=None, description="requests not yet assigned to a replica")


class Throughput(BaseModel):
    window_s: float = Field(description="the rates are averaged over this many seconds")
    images_per_s: float = Field(description="images answered (2xx) per second, all ingress replicas together")
    mean_batch_size: float | None = Field(description="requests per model forward pass; None when none ran")


class StatusResponse(BaseModel):
    application: str
    deployments: list[DeploymentStatus]
    throughput: Throughput | None = Field(
        description="None until the service has sampled its metrics twice (a few seconds after the first status call)"
    )
    sampled_at: float = Field(
        description="Unix time of the newest metrics sample; Ray exports metrics every few seconds"
    )


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable kind, e.g. 'invalid_image', 'payload_too_large'")
    message: str
    field: str | None = Field(default=None, description="the request field at fault, when there is one")


class ErrorResponse(BaseModel):
    error: ErrorDetail
