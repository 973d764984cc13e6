"""The SDK's exceptions: one base class, one subclass per way a call can fail."""

from __future__ import annotations


class SamfleetError(Exception):
    """Base of every samfleet SDK error."""


class APIError(SamfleetError):
    """The service answered with an error status; `message` is the server's own words."""

    def __init__(self, status: int, message: str, code: str | None = None, field: str | None = None):
        self.status = status
        self.message = message
        self.code = code
        self.field = field
        super().__init__(f"HTTP {status} {code or 'error'}: {message}")


class ConnectionError(SamfleetError):  # shadows the builtin on purpose: same meaning, SDK-specific
    """The service could not be reached."""


class TimeoutError(SamfleetError):  # shadows the builtin on purpose, like ConnectionError
    """The service did not answer in time."""


class ValidationError(SamfleetError):
    """A request or response did not match the wire schema."""
