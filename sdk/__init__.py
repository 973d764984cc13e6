"""samfleet SDK: a thin typed client for the samfleet SAM3 annotation service.

Needs no torch and no ray: httpx, pydantic, numpy, pillow, pycocotools and tqdm.
"""

from sdk.batch import BatchItem
from sdk.calls import points_params, segment_params
from sdk.client import AsyncClient, Client
from sdk.errors import (
    APIError,
    BrokenStreamError,
    ConnectionError,
    SamfleetError,
    TimeoutError,
    ValidationError,
    VideoStreamError,
)
from sdk.masks import decode_mask, encode_mask
from sdk.results import InstanceResult, Result
from sdk.schema import Instance, SegmentResponse
from sdk.transport import RetryPolicy

__all__ = [
    "APIError",
    "AsyncClient",
    "BatchItem",
    "BrokenStreamError",
    "Client",
    "ConnectionError",
    "Instance",
    "InstanceResult",
    "Result",
    "RetryPolicy",
    "SamfleetError",
    "SegmentResponse",
    "TimeoutError",
    "ValidationError",
    "VideoStreamError",
    "decode_mask",
    "encode_mask",
    "points_params",
    "segment_params",
]
