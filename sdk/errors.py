"""The SDK's exceptions: one base class, one subclass per way a call can fail."""

from __future__ import annotations

from dataclasses import dataclass


class SamfleetError(Exception):
    """Base of every samfleet SDK error."""


class APIError(SamfleetError):
    """The service answered with an error status; `message` is the server's own words."""

    def __init__(self, status: int, message: str, code: str | None = None, field: str | None = None):
        self.status = status
        self.message = message
        self.code = code
        self.field = field
        super().__init__(self.describe())

    def describe(self) -> str:
        return f"HTTP {self.status} {self.code or 'error'}: {self.message}"


@dataclass(frozen=True)
class StreamProgress:
    """How far a video stream from `url` got before it failed."""

    url: str
    frames_received: int = 0
    last_frame: int | None = None  # the last frame's frame_index; None: no frame came
    frame_count: int | None = None  # the video's frames, as the first frame line said

    def __str__(self) -> str:
        if self.last_frame is None:
            return "before its first frame"
        return f"after frame {self.last_frame} of {self.frame_count} ({self.frames_received} frames received)"


class VideoStreamError(APIError):
    """A video stream that the service ended with an error line after its 200 status, `progress`
    into the video.  `status` is the one the same failure gets before a stream starts: 503 for a
    lost model replica (worth sending the video again), 413 for too many frames (never)."""

    def __init__(self, status: int, message: str, code: str, field: str | None, progress: StreamProgress):
        self.progress = progress
        super().__init__(status, message, code, field)

    def describe(self) -> str:
        where = f"the video stream from {self.progress.url} failed {self.progress}"
        return f"{where}: {self.code} ({self.status}): {self.message}"


class ConnectionError(SamfleetError):  # shadows the builtin on purpose: same meaning, SDK-specific
    """The service could not be reached."""


class BrokenStreamError(ConnectionError):
    """A video stream that broke after its 200 status, `progress` into the video: the connection
    was closed, reset or went silent, or the body ended before its summary line.  Transient like
    every ConnectionError: the video can be sent again (`sdk.video.track_whole_video` does so,
    from its first frame)."""

    def __init__(self, reason: str, progress: StreamProgress):
        self.reason = reason
        self.progress = progress
        super().__init__(f"the video stream from {progress.url} broke {progress}: {reason}")


class TimeoutError(SamfleetError):  # shadows the builtin on purpose, like ConnectionError
    """The service did not answer in time."""


class ValidationError(SamfleetError):
    """A request or response did not match the wire schema."""
