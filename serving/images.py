"""Decode uploaded image bytes safely: size limits before pixels are decoded, EXIF honoured."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sdk.schema import Limits, OriginalSize
from serving.errors import ServiceError

SUPPORTED = "JPEG, PNG, WebP, BMP, TIFF or GIF"


def decode_image(data: bytes, limits: Limits, field: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB array, or a ServiceError naming what is wrong with the upload."""
    if not data:
        raise ServiceError(422, "invalid_image", f"{field} is empty", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            # Image.open reads only the header: refuse oversized images before decoding pixels.
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise _too_large(width, height, limits, field)
            image.load()
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ServiceError(413, "image_too_large", f"{field} rejected as a decompression bomb: {exc}", field) from exc
    except UnidentifiedImageError as exc:
        raise ServiceError(422, "invalid_image", f"{field} is not a decodable {SUPPORTED} file", field) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ServiceError(422, "invalid_image", f"{field} is corrupt or truncated: {exc}", field) from exc
    # In place, and converted only when not RGB already: each copy of a 12 MP photo costs as
    # much as a third of decoding it (Pillow copies on a no-op transpose or convert).
    ImageOps.exif_transpose(image, in_place=True)
    image = _to_8bit(image)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale scaled into 0..255: Pillow's own RGB conversion clips them
    (a 16-bit scan comes out white, a 0..1 float image black)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        return Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = pixels.min(), pixels.max()
        return Image.fromarray(((pixels - low) / ((high - low) or 1) * 255).astype(np.uint8))
    return image


def _too_large(width: int, height: int, limits: Limits, field: str) -> ServiceError:
    return ServiceError(
        413,
        "image_too_large",
        f"{field} is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels}",
        field,
    )


def stands_for(image: np.ndarray, original: OriginalSize | None, limits: Limits) -> tuple[int, int]:
    """(height, width) of the photo `image` stands for: itself, or the photo it was reduced from
    (a reduced upload declares `original_size`).  The declared photo must be `image` scaled up by
    one factor, within a pixel, and within `max_image_pixels`: masks are made at its size."""
    height, width = image.shape[:2]
    if original is None:
        return height, width
    if original.width * original.height > limits.max_image_pixels:
        raise _too_large(original.width, original.height, limits, "original_size")
    scaled_height, scaled_width = original.height * width / original.width, original.width * height / original.height
    if (
        width > original.width
        or height > original.height
        or min(abs(height - scaled_height), abs(width - scaled_width)) > 1
    ):
        raise ServiceError(
            422,
            "invalid_original_size",
            f"the {width}x{height} upload is not the {original.width}x{original.height} photo reduced "
            "(it must be smaller, with the same aspect ratio within a pixel)",
            "original_size",
        )
    return original.height, original.width
