"""Each API v1 operation as a `Call` (method, path, body, response model), built and validated
client-side with the shared schema so that mistakes fail before anything is sent."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from sdk.errors import ValidationError
from sdk.images import ImageInput, image_bytes, upload_bytes
from sdk.results import Result
from sdk.schema import (
    API_VERSION,
    Box,
    Exemplar,
    HealthResponse,
    InfoResponse,
    MaskFormat,
    OriginalSize,
    Point,
    PointsParams,
    SegmentParams,
    StatusResponse,
    Tiling,
    TrackLine,
    TrackParams,
)
from sdk.transport import Call


def health() -> Call:
    return Call("GET", "/healthz", HealthResponse)


def info() -> Call:
    return Call("GET", f"/{API_VERSION}/info", InfoResponse)


def status() -> Call:
    return Call("GET", f"/{API_VERSION}/status", StatusResponse)


def segment(
    image: ImageInput,
    prompt: str | Sequence[str] | None = None,
    *,
    reference_image: ImageInput | None = None,
    reduce_to: int | None = None,
    **params: Any,
) -> Call:
    """`reduce_to`: upload the image reduced to this shorter side (the model's input side), unless
    the request needs the photo itself (tiling, a reference image)."""
    validated = segment_params(prompt, **params)
    whole = validated.tiling is not None or reference_image is not None
    return _image_call(
        f"/{API_VERSION}/segment",
        {"image": image, "reference_image": reference_image},
        validated,
        None if whole else reduce_to,
    )


def segment_points(
    image: ImageInput, points: Sequence[Sequence[float]] = (), *, reduce_to: int | None = None, **params: Any
) -> Call:
    return _image_call(f"/{API_VERSION}/segment/points", {"image": image}, points_params(points, **params), reduce_to)


def track_video(
    video: str | Path | bytes,
    prompt: str | None = None,
    points: Sequence[Sequence[float]] = (),
    labels: Sequence[int] | None = None,
    frame: int = 0,
    mask_format: MaskFormat = "rle",
) -> Call:
    """POST /v1/video/track: every instance of `prompt`, or the object at `points` (labels 1
    positive, 0 negative) on frame `frame`, tracked through the video file `video` (path or bytes)."""
    params = _validated(
        TrackParams, prompt=prompt, points=_labelled_points(points, labels), frame=frame, mask_format=mask_format
    )
    data = video if isinstance(video, bytes) else Path(video).read_bytes()
    files = {"video": ("video", data, "application/octet-stream")}
    return Call(
        "POST",
        f"/{API_VERSION}/video/track",
        TrackLine,
        {"files": files, "data": {"params": params.model_dump_json(exclude_defaults=True)}},
        stream=True,
    )


def segment_params(
    prompt: str | Sequence[str] | None = None,
    exemplars: Sequence[Sequence[float]] = (),
    negative: Sequence[Sequence[float]] = (),
    reference_boxes: Sequence[Sequence[float]] = (),
    negative_prompts: Sequence[str] = (),
    negative_iou: float = 0.5,
    negative_containment: float = 0.8,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    mask_format: MaskFormat = "rle",
    tiling: bool | Tiling = False,
) -> SegmentParams:
    """Parameters of /v1/segment.  `prompt` is one noun phrase or a list of them (found in one
    request, each instance labelled with its prompt); `exemplars` and `negative` are xyxy pixel
    boxes around examples of what to find and of what not to find; `reference_boxes` are boxes
    on the `reference_image` given to `segment` ("find everything like this");
    `negative_prompts` are concepts whose instances are removed from the result; `tiling`
    (True, or a `Tiling` with its sizes) finds small objects in large images tile by tile."""
    boxes = [Exemplar(box=_box(b), label="positive") for b in exemplars]
    boxes += [Exemplar(box=_box(b), label="negative") for b in negative]
    single, several = (prompt, []) if prompt is None or isinstance(prompt, str) else (None, list(prompt))
    return _validated(
        SegmentParams,
        prompt=single,
        prompts=several,
        negative_prompts=list(negative_prompts),
        negative_iou=negative_iou,
        negative_containment=negative_containment,
        exemplars=boxes,
        reference_exemplars=[Exemplar(box=_box(b), label="positive") for b in reference_boxes],
        tiling=Tiling() if tiling is True else tiling or None,
        threshold=threshold,
        mask_threshold=mask_threshold,
        mask_format=mask_format,
    )


def points_params(
    points: Sequence[Sequence[float]] = (),
    labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
    multimask: bool = False,
    mask_threshold: float = 0.5,
    mask_format: MaskFormat = "rle",
) -> PointsParams:
    """Parameters of /v1/segment/points; labels are 1 (positive, the default) or 0 (negative)."""
    return _validated(
        PointsParams,
        points=_labelled_points(points, labels),
        box=_box(box) if box is not None else None,
        multimask=multimask,
        mask_threshold=mask_threshold,
        mask_format=mask_format,
    )


def _image_call(
    path: str, images: dict[str, ImageInput | None], params: SegmentParams | PointsParams, reduce_to: int | None
) -> Call:
    """The request; `images["image"]` reduced to `reduce_to` pixels on its shorter side when it is
    larger, the parameters then saying the photo's size (prompts stay in the photo's pixels)."""
    upload = upload_bytes(images["image"], reduce_to)  # type: ignore[arg-type]  # the first part is required
    files = {"image": ("image", upload.data, "application/octet-stream")}
    files.update(
        (part, (part, image_bytes(image), "application/octet-stream"))
        for part, image in images.items()
        if part != "image" and image is not None
    )
    if upload.original_size is not None:
        width, height = upload.original_size
        params = params.model_copy(update={"original_size": OriginalSize(width=width, height=height)})
    data = {"params": params.model_dump_json(exclude_defaults=True)}
    return Call("POST", path, Result, {"files": files, "data": data})


def _labelled_points(points: Sequence[Sequence[float]], labels: Sequence[int] | None) -> list[Point]:
    labels = [1] * len(points) if labels is None else list(labels)
    if len(labels) != len(points):
        raise ValidationError(f"{len(points)} points but {len(labels)} labels")
    return [_point(p, label) for p, label in zip(points, labels, strict=True)]


def _point(p: Sequence[float], label: int) -> Point:
    if len(p) != 2:
        raise ValidationError(f"a point is [x, y], got {list(p)}")
    return _validated(Point, x=p[0], y=p[1], label="positive" if label else "negative")


def _box(b: Sequence[float]) -> Box:
    if len(b) != 4:
        raise ValidationError(f"a box is [x1, y1, x2, y2], got {list(b)}")
    x1, y1, x2, y2 = b
    return _validated(Box, x1=x1, y1=y1, x2=x2, y2=y2)


def _validated(model: type[BaseModel], **fields: Any) -> Any:
    try:
        return model(**fields)
    except PydanticValidationError as exc:
        raise ValidationError(str(exc)) from exc
