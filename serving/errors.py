"""HTTP errors: every failure leaves the service as an `sdk.schema.ErrorResponse` JSON body."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdk.schema import ErrorDetail, ErrorResponse

log = logging.getLogger("samfleet")


class ServiceError(Exception):
    """A request the service refuses: `status` is a 4xx (or 503) with a message for the caller."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def __reduce__(self):
        # Raised in a model replica, it reaches the ingress pickled inside Ray's RayTaskError;
        # Exception's own reduce would call __init__ with the message alone.
        return type(self), (self.status, self.code, self.message, self.field, self.headers)


def error_json(status: int, code: str, message: str, field: str | None = None, headers=None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, field=field))
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def validation_error(exc: ValidationError | RequestValidationError, prefix: str = "") -> ServiceError:
    """422 naming every field at fault, e.g. "exemplars.0.box: box must have x2 > x1"."""
    problems, fields = [], []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        problems.append(f"{loc}: {message}" if loc else message)
        fields.append(loc or None)
    return ServiceError(422, "invalid_request", "; ".join(problems), field=fields[0] if fields else None)


def overloaded(exc: BackPressureError) -> ServiceError:
    """The model deployment's queue is full: refuse at once with the status and Retry-After of
    its `backpressure_config`, as the same JSON error as every other refusal.  (Serve's own
    handler for this answers in plain text.)"""
    headers = {"Retry-After": str(math.ceil(exc.retry_after_s))} if exc.retry_after_s is not None else None
    return ServiceError(
        exc.status_code, "overloaded", f"the service is at capacity, retry later: {exc}", headers=headers
    )


def replica_lost(exc: Exception) -> ServiceError:
    """The model replica died while it held the request (crash, OOM, node lost): Serve starts
    another, so the same request succeeds when sent again; 503 says so to retrying clients."""
    return ServiceError(
        503,
        "replica_lost",
        f"the model replica handling this request was lost, retry: {exc.__class__.__name__}",
        headers={"Retry-After": "1"},
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError):
        return error_json(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError):
        err = validation_error(exc)
        return error_json(err.status, err.code, err.message, err.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_json(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_json(500, "internal_error", f"internal error: {exc.__class__.__name__}")
