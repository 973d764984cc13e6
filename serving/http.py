"""HTTP plumbing for the ingress: body size limit, JSON/multipart request parsing, OpenAPI."""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import MultipartParseError
from starlette.datastructures import UploadFile

from sdk.schema import IMAGE_PARTS, Box, ErrorResponse, Limits
from serving.errors import ServiceError, error_json, validation_error

P = TypeVar("P", bound=BaseModel)
JSON = "application/json"
MULTIPART = "multipart/form-data"


def route_path(scope) -> str:
    """The path the app routes on: Ray Serve mounts an application with a `route_prefix` by
    putting the prefix in `root_path` and leaving it in `path` (as the ASGI spec has it), so
    middlewares that compare `path` with the app's own routes must strip it first.  Starlette
    does the same for its router, in a helper it keeps private."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


class PayloadLimitMiddleware:
    """Refuse bodies over `limits.max_payload_bytes` before they are read into memory.

    A declared Content-Length is checked up front; a chunked body is counted as it streams
    and the request fails as soon as it passes the limit.  The limit is read from
    `app.state.limits`, set when the ingress replica starts.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope["app"].state
        # Routes with a limit of their own (video uploads) name it in `state.body_limits`.
        limit = getattr(state, "body_limits", {}).get(route_path(scope), state.limits.max_payload_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = error_json(413, "payload_too_large", _too_large_message(int(declared), limit))
            return await response(scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ServiceError(413, "payload_too_large", _too_large_message(seen, limit))
            return message

        return await self.app(scope, counted_receive, send)


def _too_large_message(size: int, limit: int) -> str:
    return f"request body is {size} bytes or more; the limit is {limit} bytes"


# JSON separators and openers a request may hold beyond its lists and prompts: the scalar
# parameters, tiling, a box, two data URLs (one comma each).  Generous: it only has to stay far
# below what would cost the ingress anything to parse.
FIXED_JSON_VALUES = 256


def json_value_budget(limits: Limits) -> int:
    """The most commas, braces and brackets the parameters of an admissible request can hold: a
    point or an exemplar is fewer than 8, and a prompt's text holds at most `max_prompt_chars` of
    them (base64 holds none)."""
    return (
        8 * (limits.max_points + limits.max_exemplars)
        + limits.max_prompts * (limits.max_prompt_chars + 2)
        + (FIXED_JSON_VALUES)
    )


def check_json_values(raw: bytes, limits: Limits) -> None:
    """Refuse parameters holding more values than the limits admit before they are parsed.

    max_points and the like are checked on the parsed request, but parsing is what an attacker's
    list costs: 32 MB of points takes pydantic 9 s and 1.7 GB on the ingress, blocking its event
    loop, only to be refused for having more than 32.  Counting separators is a C loop over the
    bytes (about 10 ms for 32 MB) and bounds the parse whatever the encoding of the request."""
    values = raw.count(b",") + raw.count(b"{") + raw.count(b"[")
    budget = json_value_budget(limits)
    if values > budget:
        raise ServiceError(
            413,
            "params_too_large",
            f"the request's parameters hold {values} JSON values or more; the limits (max_points, max_exemplars, "
            f"max_prompts, max_prompt_chars) admit at most {budget}",
            "params",
        )


def image_parts(json_model: type[BaseModel]) -> tuple[str, ...]:
    """The image fields of a request model, `image` (required) first."""
    return tuple(name for name in IMAGE_PARTS if name in json_model.model_fields)


async def read_image_request(
    request: Request, json_model: type[BaseModel], params_model: type[P], limits: Limits
) -> tuple[dict[str, bytes], P]:
    """({part: image bytes}, validated parameters) from a JSON body (base64 images) or a
    multipart form (image files + `params` JSON field)."""
    parts = image_parts(json_model)
    content_type = _content_type(request)
    if content_type == JSON:
        body = await request.body()
        check_json_values(body, limits)
        try:
            payload = json_model.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error(exc) from None
        params = params_model.model_validate(payload.model_dump(exclude=set(parts)))
        images = {
            name: _b64decode(getattr(payload, name), name) for name in parts if getattr(payload, name) is not None
        }
        return images, params
    if content_type == MULTIPART:
        return await _read_form(request, parts, params_model, limits)
    raise ServiceError(
        415,
        "unsupported_media_type",
        f"content type {content_type or '(none)'!r} is not supported; send {JSON} or {MULTIPART}",
    )


async def read_video_request(request: Request, params_model: type[P], limits: Limits) -> tuple[bytes, P]:
    """(video bytes, validated parameters) from a multipart form (`video` file + `params` JSON
    field); no base64 JSON form, which would inflate a large upload by a third."""
    content_type = _content_type(request)
    if content_type != MULTIPART:
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"content type {content_type or '(none)'!r} is not supported; send {MULTIPART}",
        )
    files, params = await _read_form(request, ("video",), params_model, limits)
    return files["video"], params


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_form(
    request: Request, parts: tuple[str, ...], params_model: type[P], limits: Limits
) -> tuple[dict[str, bytes], P]:
    """({part: file bytes}, parameters) of a multipart form; the first of `parts` is required."""
    try:
        form = await request.form(max_files=len(parts), max_fields=4)
    except MultipartParseError as exc:  # starlette turns its own form errors into 400s, not the parser's
        raise ServiceError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    files = {}
    for name in parts:
        upload = form.get(name)
        if isinstance(upload, UploadFile):
            files[name] = await upload.read()
    if parts[0] not in files:
        raise ServiceError(422, "invalid_request", f"multipart form needs an '{parts[0]}' file part", parts[0])
    unknown = set(form.keys()) - {*parts, "params"}
    if unknown:
        raise ServiceError(422, "invalid_request", f"unknown form fields: {sorted(unknown)}", sorted(unknown)[0])
    raw = str(form.get("params") or "{}").encode()
    check_json_values(raw, limits)
    try:
        params = params_model.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc, prefix="params.") from None
    return files, params


def _b64decode(data: str, field: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(422, "invalid_image", f"{field} is not valid base64", field) from None


def check_prompt_limits(limits: Limits, params: BaseModel) -> None:
    prompt = getattr(params, "prompt", None)
    texts = {"prompt": prompt} if prompt is not None else {}
    texts.update(
        {
            f"{name}.{i}": text
            for name in ("prompts", "negative_prompts")
            for i, text in enumerate(getattr(params, name, ()))
        }
    )
    for field, text in texts.items():
        if len(text) > limits.max_prompt_chars:
            raise ServiceError(
                422,
                "prompt_too_long",
                f"{field} has {len(text)} characters; the limit is {limits.max_prompt_chars}",
                field,
            )
    if len(texts) > limits.max_prompts:
        raise ServiceError(
            422, "too_many_prompts", f"{len(texts)} text prompts; the limit is {limits.max_prompts}", "prompts"
        )
    exemplars = len(getattr(params, "exemplars", ())) + len(getattr(params, "reference_exemplars", ()))
    points = len(getattr(params, "points", ()))
    if exemplars > limits.max_exemplars:
        raise ServiceError(
            422, "too_many_exemplars", f"{exemplars} exemplars; the limit is {limits.max_exemplars}", "exemplars"
        )
    if points > limits.max_points:
        raise ServiceError(422, "too_many_points", f"{points} points; the limit is {limits.max_points}", "points")


def check_inside(field: str, xs: list[float], ys: list[float], width: int, height: int) -> None:
    if any(x < 0 or x > width for x in xs) or any(y < 0 or y > height for y in ys):
        raise ServiceError(422, "out_of_bounds", f"{field} lies outside the {width}x{height} image", field)


def check_box_inside(field: str, box: Box, width: int, height: int) -> None:
    check_inside(field, [box.x1, box.x2], [box.y1, box.y2], width, height)


# Keys are checked by a middleware (serving/auth.py), before any body is read, so no route
# depends on this class: it only writes the scheme FastAPI would, for /docs' "Authorize" button.
BEARER = HTTPBearer(
    scheme_name="apiKey", description="A key from `samfleet new-api-key`, sent as `Authorization: Bearer KEY`."
)


def _declare_api_keys(schema: dict, open_paths: frozenset[str]) -> None:
    schema["components"].setdefault("securitySchemes", {})[BEARER.scheme_name] = BEARER.model.model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    schema["security"] = [{BEARER.scheme_name: []}]
    for path in open_paths & schema["paths"].keys():
        for operation in schema["paths"][path].values():
            operation["security"] = []


def document_image_body(
    app: FastAPI, routes: dict[str, tuple[type[BaseModel], type[BaseModel]]], open_paths: frozenset[str]
) -> None:
    """Describe the JSON and multipart bodies of the image routes in the OpenAPI document, and
    the bearer scheme when the service needs API keys (all routes but `open_paths`).

    The routes parse their body by content type themselves (one route, two encodings), so
    FastAPI cannot infer the request schema; this adds it, with the pydantic models'
    definitions placed under components/schemas where OpenAPI references resolve.
    """

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        ref = "#/components/schemas/{model}"
        for model in {m for pair in routes.values() for m in pair} | {ErrorResponse}:
            defs = model.model_json_schema(ref_template=ref)
            components.update(defs.pop("$defs", {}))
            components[model.__name__] = defs
        for path, (json_model, params_model) in routes.items():
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {
                    JSON: {"schema": {"$ref": ref.format(model=json_model.__name__)}},
                    MULTIPART: {
                        "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                **{part: {"type": "string", "format": "binary"} for part in image_parts(json_model)},
                                "params": {"$ref": ref.format(model=params_model.__name__)},
                            },
                        },
                        "encoding": {"params": {"contentType": JSON}},
                    },
                },
            }
        if getattr(app.state, "api_key_hashes", None):
            _declare_api_keys(schema, open_paths)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document
