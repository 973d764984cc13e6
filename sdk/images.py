"""Accept an image as a path, bytes, PIL image or numpy array; send it as encoded bytes, by
default reduced to what the model sees."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from sdk.errors import ValidationError

ImageInput = str | Path | bytes | Image.Image | np.ndarray
Upload = Literal["reduced", "original"]


def reduces(upload: Upload) -> bool:
    """Whether `upload` asks for reduced uploads; sdk.ValidationError for a value it does not know."""
    if upload not in ("reduced", "original"):
        raise ValidationError(f"upload must be 'reduced' or 'original', not {upload!r}")
    return upload == "reduced"


# A reduced lossy photo is sent as JPEG at this quality, chroma subsampled as cameras write it.
# At full-size SAM3's input side (1008) the tiny model's masks from a 4000x3000 photo match the
# original upload's (README "Reduced uploads"); the bytes are a tenth of the photo's.
REDUCED_JPEG_QUALITY = 90
LOSSY_FORMATS = {"JPEG", "MPO", "WEBP"}  # re-encoded as JPEG; any other source as PNG (lossless)
# Modes reduced as they are; others (16-bit, float, CMYK, ...) go as the file, for the server's
# own conversion to 8-bit RGB to see them whole.
REDUCIBLE_MODES = {"RGB", "L", "RGBA", "LA", "P"}
EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Encoded:
    """The bytes to upload, and the photo's (width, height) when they are the photo reduced."""

    data: bytes
    original_size: tuple[int, int] | None = None


def upload_bytes(image: ImageInput, model_side: int | None) -> Encoded:
    """`image` as it is (`model_side` None), or reduced so that its shorter side is `model_side`
    pixels, the side of the model's square input: SAM3 stretches every image to that square, so
    each side must keep at least that many pixels for the model to see what it would have seen of
    the photo (the longer side at that size lost 0.02 of mean mask IoU more on a 4:3 photo).
    Decoded at a fraction of its size where JPEG allows it (Pillow's
    draft mode), EXIF orientation applied (files and bytes; the server applies it to those),
    resized with Pillow's antialiased bilinear filter and re-encoded (JPEG from a lossy source,
    PNG from a lossless one or from pixels).  An image no larger than that, or of an unusual
    mode, goes as it is.  The same input always gives the same bytes, so clicks on one photo
    find the service's cached embedding."""
    if model_side is None:
        return Encoded(image_bytes(image))
    is_file = isinstance(image, (str, Path, bytes))
    data = image_bytes(image) if is_file else b""
    try:
        reduced = _reduced(Image.open(io.BytesIO(data)) if is_file else _pixels(image), is_file, model_side)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        # Not an image this laptop can decode (corrupt, truncated, an unknown format): sent as it
        # is, the service answers with its own error for it, as for upload="original".
        reduced = None
    return reduced or Encoded(data or image_bytes(image))


def _reduced(picture: Image.Image, is_file: bool, model_side: int) -> Encoded | None:
    """The reduced upload of `picture`, or None when it goes as it is."""
    width, height = picture.size
    turned = is_file and picture.getexif().get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS
    if turned:
        width, height = height, width
    if min(width, height) <= model_side or picture.mode not in REDUCIBLE_MODES:
        return None
    scale = model_side / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    lossy = picture.format in LOSSY_FORMATS
    if picture.format == "JPEG":
        # Decoded at 1/2, 1/4 or 1/8 scale, never below the size asked (in the file's own
        # orientation): a 12 MP JPEG decodes several times faster on the laptop.
        picture.draft(picture.mode, size[::-1] if turned else size)
    if is_file:
        picture = ImageOps.exif_transpose(picture)
    if picture.mode == "P":
        picture = picture.convert("RGBA")
    reduced = picture.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    if lossy and reduced.mode in ("RGB", "L"):
        reduced.save(buffer, format="JPEG", quality=REDUCED_JPEG_QUALITY)
    else:
        reduced.save(buffer, format="PNG")
    return Encoded(buffer.getvalue(), (width, height))


def _pixels(image: ImageInput) -> Image.Image:
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    if isinstance(image, Image.Image):
        return image
    raise TypeError(f"unsupported image type {type(image).__name__}; give a path, bytes, PIL image or numpy array")


def image_bytes(image: ImageInput) -> bytes:
    """Encoded image bytes; files and bytes are sent as they are (no re-encoding, EXIF kept)."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, bytes):
        return image
    buffer = io.BytesIO()
    _pixels(image).save(buffer, format="PNG")  # lossless: the server sees exactly these pixels
    return buffer.getvalue()


def load_rgb(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes(image)))).convert("RGB")
