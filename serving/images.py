"""Decode uploaded image bytes safely: size limits before pixels are decoded, EXIF honoured."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sdk.schema import Limits
from serving.errors import ServiceError

SUPPORTED = "JPEG, PNG, WebP, BMP, TIFF or GIF"


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """HxWx3 uint8 RGB array, or a ServiceError naming what is wrong with the upload."""
    if not data:
        raise ServiceError(422, "invalid_image", "image is empty", field="image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # Image.open reads only the header: refuse oversized images before decoding pixels.
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise _too_large(width, height, limits)
            image.load()
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ServiceError(413, "image_too_large", f"image rejected as a decompression bomb: {exc}", "image")
    except UnidentifiedImageError:
        raise ServiceError(422, "invalid_image", f"image is not a decodable {SUPPORTED} file", "image")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ServiceError(422, "invalid_image", f"image is corrupt or truncated: {exc}", "image")
    image = ImageOps.exif_transpose(image)
    return np.asarray(image.convert("RGB"))


def _too_large(width: int, height: int, limits: Limits) -> ServiceError:
    return ServiceError(
        413,
        "image_too_large",
        f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels}",
        "image",
    )
