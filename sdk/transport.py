"""The request layer shared by `Client` and `AsyncClient`: what to send, when to retry, how to read
the answer.  It does no I/O itself, so the sync and async clients differ only in how they wait.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from sdk.errors import (
    APIError,
    BrokenStreamError,
    ConnectionError,
    StreamProgress,
    TimeoutError,
    ValidationError,
    VideoStreamError,
)
from sdk.images import Upload, reduces
from sdk.schema import TrackLine, VideoError, VideoFrame

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 120.0
# Opening a connection takes milliseconds when the service is there; when its host is gone (SYNs
# dropped), waiting the whole request timeout for each of the retries' connects would keep a
# caller from learning that the service is unreachable for over ten minutes.
DEFAULT_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter on overload and unreachable-service failures.

    Retried: connection failures (refused, reset, connect timeout) and the statuses in
    `statuses` (429 Too Many Requests, 503 from a full Serve queue, 502/504 from a proxy in
    front).  A `Retry-After` header from the server is honoured, capped at `max_delay_s`.
    Never retried: other 4xx (the request itself is wrong) and read timeouts (the server may
    still be working on it; a retry would double the load).  Segmentation requests have no side
    effects, so repeating one is always safe.
    """

    max_retries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay_s)
        # Full jitter (AWS architecture blog): clients that failed together do not retry together.
        return random.uniform(0, self._cap(attempt))

    def _cap(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2**attempt)

    def backoff_budget_s(self) -> float:
        """The longest that all the backoff waits of one call add up to when the server sends no
        `Retry-After` (an unreachable service): the defaults give 0.5 + 1 + 2 + 4 + 8 = 15.5 s."""
        return sum(self._cap(attempt) for attempt in range(self.max_retries))


NO_RETRY = RetryPolicy(max_retries=0)


@dataclass
class Call:
    """One API call: the HTTP request and the pydantic model its successful answer parses into
    (or, with `stream`, the model of each line of its NDJSON answer, read as it arrives)."""

    method: str
    path: str
    model: type[BaseModel]
    kwargs: dict[str, Any] = field(default_factory=dict)
    stream: bool = False


@dataclass
class Settings:
    """Everything both clients are configured with."""

    url: str = DEFAULT_URL
    api_key: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    # Images larger than the model's input go reduced to it (sdk.images.upload_bytes), or as they are.
    upload: Upload = "reduced"

    def http_options(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(self.timeout_s, connect=self._connect_s())
        return {"base_url": self.url.rstrip("/"), "headers": headers, "timeout": timeout}

    def unreachable_after_s(self) -> float:
        """The longest a call takes to give up on a service that accepts no connection: every
        attempt's connect timing out, plus the backoff between them."""
        return (self.retry.max_retries + 1) * self._connect_s() + self.retry.backoff_budget_s()

    def reduces(self, upload: Upload | None = None) -> bool:
        """Whether a call asking for `upload` (None: these settings' own) sends images reduced."""
        return reduces(upload or self.upload)

    def _connect_s(self) -> float:
        return min(self.connect_timeout_s, self.timeout_s)  # a connect never outlasts the whole request


def retry_delay(policy: RetryPolicy, attempt: int, outcome: httpx.Response | Exception) -> float | None:
    """Seconds to wait before trying `outcome`'s call again, or None when it is final."""
    if attempt >= policy.max_retries:
        return None
    if isinstance(outcome, httpx.Response):
        if outcome.status_code not in policy.statuses:
            return None
        return policy.delay(attempt, _retry_after(outcome))
    retryable = isinstance(
        outcome,
        (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.RemoteProtocolError,
            httpx.ReadError,
            httpx.WriteError,
            httpx.PoolTimeout,
        ),
    )
    return policy.delay(attempt) if retryable else None


def finish(call: Call, outcome: httpx.Response | Exception, base_url: str) -> Any:
    """The parsed answer, or the SDK exception that `outcome` amounts to."""
    if isinstance(outcome, httpx.ConnectTimeout):
        # Nothing was sent: the service is unreachable (a host that drops packets), which ends a
        # batch at once (sdk.batch) instead of failing each image after its own retries.
        raise ConnectionError(f"cannot reach samfleet at {base_url}: {outcome!r}") from outcome
    if isinstance(outcome, httpx.TimeoutException):
        raise TimeoutError(f"{call.method} {call.path} timed out: {outcome!r}") from outcome
    if isinstance(outcome, httpx.TransportError):
        raise ConnectionError(f"cannot reach samfleet at {base_url}: {outcome!r}") from outcome
    if isinstance(outcome, Exception):
        raise outcome
    return parse_response(outcome, call.model)


def parse_response(response: httpx.Response, model: type[BaseModel]) -> Any:
    """The parsed body; a streamed body (status checked, not yet read) is returned as the response."""
    if response.status_code >= 400:
        raise api_error(response)
    if not response.is_closed:
        return response
    try:
        return model.model_validate_json(response.content)
    except PydanticValidationError as exc:
        raise ValidationError(f"unexpected response from {response.request.url}: {exc}") from exc


class VideoStream:
    """Reads the NDJSON lines of /v1/video/track: `frame(line)` for each line as it arrives gives
    the frame it carries, or None for the closing summary; `finished()` at the end of the body.
    However the stream fails after its 200, the error says how far it got (`progress`)."""

    def __init__(self, url: str):
        self.url = url
        self.summarised = False
        self.progress = StreamProgress(url)

    def frame(self, line: str) -> VideoFrame | None:
        try:
            parsed = TrackLine.model_validate_json(line).root
        except PydanticValidationError as exc:
            raise ValidationError(f"unexpected line from {self.url}: {exc}") from exc
        if isinstance(parsed, VideoError):
            detail = parsed.error
            raise VideoStreamError(parsed.status, detail.message, detail.code, detail.field, self.progress)
        if not isinstance(parsed, VideoFrame):
            self.summarised = True
            return None
        self.progress = replace(
            self.progress,
            frames_received=self.progress.frames_received + 1,
            last_frame=parsed.frame_index,
            frame_count=parsed.frame_count,
        )
        return parsed

    def broken(self, exc: httpx.TransportError) -> BrokenStreamError:
        """What a network failure while reading the body (closed, reset, silent) amounts to."""
        return BrokenStreamError(f"{exc.__class__.__name__}: {exc}", self.progress)

    def finished(self) -> None:
        if not self.summarised:
            raise BrokenStreamError("the body ended before its summary line", self.progress)


def api_error(response: httpx.Response) -> APIError:
    """The server's JSON error body as an APIError; any other body is quoted as it came."""
    try:
        detail = json.loads(response.content)["error"]
        return APIError(response.status_code, detail["message"], detail.get("code"), detail.get("field"))
    except (ValueError, KeyError, TypeError):
        return APIError(response.status_code, response.text[:500] or response.reason_phrase)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None
