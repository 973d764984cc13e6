"""Accept an image as a path, bytes, PIL image or numpy array; send it as encoded bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ImageInput = str | Path | bytes | Image.Image | np.ndarray


def image_bytes(image: ImageInput) -> bytes:
    """Encoded image bytes; files and bytes are sent as they are (no re-encoding, EXIF kept)."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, bytes):
        return image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # lossless: the server sees exactly these pixels
        return buffer.getvalue()
    raise TypeError(f"unsupported image type {type(image).__name__}; give a path, bytes, PIL image or numpy array")


def load_rgb(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes(image)))).convert("RGB")
