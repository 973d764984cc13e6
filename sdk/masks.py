"""Binary masks <-> the wire formats of `sdk.schema` (COCO RLE, PNG, COCO polygons).

Encoding and decoding live together so the two sides cannot drift apart.  RLE and polygon
rasterisation use pycocotools, the reference COCO implementation; polygon extraction uses
OpenCV's contour tracer and RLE encoding its transpose, where OpenCV is installed (the server).
"""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from sdk.schema import Mask, MaskFormat, PngMask, PolygonMask, RleMask


def encode_mask(mask: np.ndarray, fmt: MaskFormat) -> Mask:
    """Encode one HxW boolean/0-1 mask."""
    binary = np.asarray(mask, dtype=bool)
    size = (int(binary.shape[0]), int(binary.shape[1]))
    if fmt == "rle":
        rle = coco_mask.encode(_column_major(binary))
        return RleMask(size=size, counts=rle["counts"].decode("ascii"))
    if fmt == "png":
        buffer = io.BytesIO()
        Image.fromarray(binary).save(buffer, format="PNG", optimize=True)
        return PngMask(size=size, data=base64.b64encode(buffer.getvalue()).decode("ascii"))
    if fmt == "polygon":
        return PolygonMask(size=size, polygons=_polygons(binary))
    raise ValueError(f"unknown mask format {fmt!r}")


def decode_mask(mask: Mask) -> np.ndarray:
    """Decode to an HxW boolean array."""
    height, width = mask.size
    if isinstance(mask, RleMask):
        rle = {"size": [height, width], "counts": mask.counts.encode("ascii")}
        return _as_bool(coco_mask.decode(rle))
    if isinstance(mask, PngMask):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(mask.data)))).astype(bool)
    if not mask.polygons:
        return np.zeros((height, width), dtype=bool)
    rles = coco_mask.frPyObjects(mask.polygons, height, width)
    return _as_bool(coco_mask.decode(coco_mask.merge(rles)))


def _as_bool(decoded: np.ndarray) -> np.ndarray:
    """pycocotools' 0/1 uint8 mask seen as bool: a copy (`astype`) would briefly hold the
    full-size mask twice."""
    return decoded.view(bool)


def in_mask_order(target: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views of `target` (HxW or HxWxC) and the HxW `mask` whose `target[mask]` selects the same
    pixels, walking the mask in its memory order.  numpy walks a boolean index row by row, ~20x
    slower over a column-major mask, which is what pycocotools decodes (12 MP: 37 ms vs 2 ms)."""
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        return target.swapaxes(0, 1), mask.T
    return target, mask


def paint(target: np.ndarray, mask: np.ndarray, value: int) -> None:
    """`target[mask] = value`, in the mask's memory order (`in_mask_order`)."""
    pixels, order = in_mask_order(target, mask)
    pixels[order] = value


def rle_of(mask: Mask) -> dict:
    """COCO RLE dict (counts as str) for any wire mask, e.g. for a COCO annotation file."""
    if isinstance(mask, RleMask):
        return {"size": list(mask.size), "counts": mask.counts}
    rle = coco_mask.encode(_column_major(decode_mask(mask)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _column_major(binary: np.ndarray) -> np.ndarray:
    """The uint8 column-major (Fortran) copy pycocotools reads.  The transposing copy, not the
    RLE, is most of the encoding time: OpenCV's blocked transpose does it ~8x faster than
    numpy's strided copy (benchmarks/payload.py); without OpenCV (the laptop SDK) numpy does it."""
    pixels = np.asarray(binary, dtype=bool).view(np.uint8)
    cv2 = _opencv()
    return cv2.transpose(pixels).T if cv2 is not None else np.asfortranarray(pixels)


@functools.cache
def _opencv():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _polygons(binary: np.ndarray) -> list[list[float]]:
    import cv2

    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # COCO needs at least 3 points (6 numbers) per polygon; smaller contours are single pixels/lines.
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
