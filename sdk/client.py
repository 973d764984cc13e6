"""HTTP client for the samfleet API v1 (httpx + the shared pydantic schema)."""

from __future__ import annotations

import json
from typing import Any, Sequence

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from sdk.errors import APIError, ConnectionError, TimeoutError, ValidationError
from sdk.images import ImageInput, image_bytes
from sdk.schema import (
    API_VERSION,
    Box,
    Exemplar,
    HealthResponse,
    InfoResponse,
    MaskFormat,
    Point,
    PointsParams,
    SegmentParams,
    SegmentResponse,
)

DEFAULT_URL = "http://127.0.0.1:8000"


def segment_params(
    prompt: str | None = None,
    exemplars: Sequence[Sequence[float]] = (),
    negative: Sequence[Sequence[float]] = (),
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    mask_format: MaskFormat = "rle",
) -> SegmentParams:
    """Parameters of /v1/segment; exemplars and negative are xyxy pixel boxes."""
    boxes = [Exemplar(box=_box(b), label="positive") for b in exemplars]
    boxes += [Exemplar(box=_box(b), label="negative") for b in negative]
    return _validated(
        SegmentParams,
        prompt=prompt,
        exemplars=boxes,
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
    labels = [1] * len(points) if labels is None else list(labels)
    if len(labels) != len(points):
        raise ValidationError(f"{len(points)} points but {len(labels)} labels")
    return _validated(
        PointsParams,
        points=[_validated(Point, x=p[0], y=p[1], label="positive" if l else "negative") for p, l in zip(points, labels)],
        box=_box(box) if box is not None else None,
        multimask=multimask,
        mask_threshold=mask_threshold,
        mask_format=mask_format,
    )


class Client:
    """Synchronous client. `Client(url, api_key=...)`; use as a context manager or call close()."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 120.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> HealthResponse:
        return self._call("GET", "/healthz", HealthResponse)

    def info(self) -> InfoResponse:
        return self._call("GET", f"/{API_VERSION}/info", InfoResponse)

    def segment(self, image: ImageInput, prompt: str | None = None, **params: Any) -> SegmentResponse:
        """Every instance of `prompt` and/or the exemplar boxes (see `segment_params`)."""
        return self._post_image(f"/{API_VERSION}/segment", image, segment_params(prompt, **params))

    def segment_points(self, image: ImageInput, points: Sequence[Sequence[float]] = (), **params: Any) -> SegmentResponse:
        """The object at the clicked points and/or box (see `points_params`)."""
        return self._post_image(f"/{API_VERSION}/segment/points", image, points_params(points, **params))

    def _post_image(self, path: str, image: ImageInput, params: BaseModel) -> SegmentResponse:
        files = {"image": ("image", image_bytes(image), "application/octet-stream")}
        data = {"params": params.model_dump_json(exclude_defaults=True)}
        return self._call("POST", path, SegmentResponse, files=files, data=data)

    def _call(self, method: str, path: str, model: type[BaseModel], **kwargs) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"{method} {path} timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise ConnectionError(f"cannot reach samfleet at {self._http.base_url}: {exc}") from exc
        return parse_response(response, model)


def parse_response(response: httpx.Response, model: type[BaseModel]) -> Any:
    if response.status_code >= 400:
        raise api_error(response)
    try:
        return model.model_validate_json(response.content)
    except PydanticValidationError as exc:
        raise ValidationError(f"unexpected response from {response.request.url}: {exc}") from exc


def api_error(response: httpx.Response) -> APIError:
    try:
        detail = json.loads(response.content)["error"]
        return APIError(response.status_code, detail["message"], detail.get("code"), detail.get("field"))
    except (ValueError, KeyError, TypeError):
        return APIError(response.status_code, response.text[:500] or response.reason_phrase)


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
