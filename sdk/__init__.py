"""samfleet SDK: a thin typed client for the samfleet SAM3 annotation service."""

from sdk.client import Client, points_params, segment_params
from sdk.errors import APIError, ConnectionError, SamfleetError, TimeoutError, ValidationError
from sdk.masks import decode_mask, encode_mask
from sdk.schema import Instance, SegmentResponse

__all__ = [
    "APIError",
    "Client",
    "ConnectionError",
    "Instance",
    "SamfleetError",
    "SegmentResponse",
    "TimeoutError",
    "ValidationError",
    "decode_mask",
    "encode_mask",
    "points_params",
    "segment_params",
]
