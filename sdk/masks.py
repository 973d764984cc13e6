"""Binary masks <-> the wire formats of `sdk.schema` (COCO RLE, PNG, COCO polygons).

Encoding and decoding live together so the two sides cannot drift apart.  RLE and polygon
rasterisation use pycocotools, the reference COCO implementation; polygon extraction uses
OpenCV's contour tracer and RLE encoding its transpose, where OpenCV is installed (the server).
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Literal, overload

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from sdk.schema import Mask, MaskFormat, PngMask, PolygonMask, RleMask


@overload
def encode_mask(
    mask: np.ndarray, fmt: Literal["rle"], *, origin: tuple[int, int] = ..., size: tuple[int, int] | None = ...
) -> RleMask: ...
@overload
def encode_mask(
    mask: np.ndarray, fmt: Literal["polygon"], *, origin: tuple[int, int] = ..., size: tuple[int, int] | None = ...
) -> PolygonMask: ...
@overload
def encode_mask(
    mask: np.ndarray, fmt: Literal["png"], *, origin: tuple[int, int] = ..., size: tuple[int, int] | None = ...
) -> PngMask: ...
@overload
def encode_mask(
    mask: np.ndarray, fmt: MaskFormat, *, origin: tuple[int, int] = ..., size: tuple[int, int] | None = ...
) -> Mask: ...
def encode_mask(
    mask: np.ndarray, fmt: MaskFormat, *, origin: tuple[int, int] = (0, 0), size: tuple[int, int] | None = None
) -> Mask:
    """Encode one boolean/0-1 mask of an image of `size` (height, width; default: the mask's own).

    `mask` may be a crop of that image's mask placed at `origin` (x, y), background elsewhere:
    RLE and polygons are then computed from the crop alone, in time and memory proportional to
    the crop (the service's masks are crops around each object of a possibly 12 MP photo).
    """
    crop = np.asarray(mask, dtype=bool)
    height, width = size if size is not None else crop.shape
    size = (int(height), int(width))
    x, y = origin
    if fmt == "rle":
        return RleMask(size=size, counts=_rle_counts(crop, x, y, height, width))
    if fmt == "polygon":
        return PolygonMask(size=size, polygons=_polygons(crop, x, y))
    if fmt == "png":
        whole = crop
        if (x, y) != (0, 0) or crop.shape != size:
            whole = np.zeros(size, dtype=bool)
            whole[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
        buffer = io.BytesIO()
        Image.fromarray(whole).save(buffer, format="PNG", optimize=True)
        return PngMask(size=size, data=base64.b64encode(buffer.getvalue()).decode("ascii"))
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
    return {"size": list(mask.size), "counts": encode_mask(decode_mask(mask), "rle").counts}


def _rle_counts(crop: np.ndarray, x: int, y: int, height: int, width: int) -> str:
    """COCO's compressed RLE counts of a `height` x `width` image that is `crop` at (x, y) and
    background elsewhere.

    COCO RLE runs down each column in turn.  Written by hand because pycocotools only encodes
    whole images: here the runs come from the crop's columns, each framed by one element standing
    for the background above it and one for the background below (weighted by how many pixels they
    stand for); pycocotools still does the compression.
    """
    rows, cols = crop.shape
    above, below = int(y > 0), int(y + rows < height)
    columns = np.zeros((cols, above + rows + below), dtype=np.uint8)
    columns[:, above : above + rows] = _transposed(crop)
    lengths = np.ones(columns.shape[1], dtype=np.int64)
    if above:
        lengths[0] = y
    if below:
        lengths[-1] = height - y - rows
    # Where each element starts, counted from the top of the crop's first column.
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    flat = columns.reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat.size and flat[0]:
        changes = np.concatenate(([0], changes))
    per_column = columns.shape[1]
    starts = x * height + (changes // per_column) * height + offsets[changes % per_column]
    if flat.size and flat[-1]:  # the crop's last pixel is foreground: the background after it starts a run
        starts = np.concatenate((starts, [(x + cols) * height]))
    counts = np.diff(np.concatenate(([0], starts, [height * width])))
    if counts.size > 1 and counts[-1] == 0:  # foreground up to the image's last pixel
        counts = counts[:-1]
    rle = coco_mask.frPyObjects({"counts": counts.tolist(), "size": [height, width]}, height, width)
    return rle["counts"].decode("ascii")


def _transposed(binary: np.ndarray) -> np.ndarray:
    """The uint8 transpose of a boolean mask (its columns as rows).  The transposing copy is most
    of the encoding time: OpenCV's blocked transpose does it ~8x faster than numpy's strided copy
    (benchmarks/payload.py); without OpenCV (the laptop SDK) numpy does it."""
    pixels = np.ascontiguousarray(binary, dtype=bool).view(np.uint8)
    cv2 = _opencv()
    return cv2.transpose(pixels) if cv2 is not None and pixels.size else pixels.T


@functools.cache
def _opencv():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _polygons(binary: np.ndarray, x: int = 0, y: int = 0) -> list[list[float]]:
    import cv2

    if not binary.size:
        return []
    # OpenCV treats pixels beyond the crop as background, as they are: the crop's contours,
    # shifted, are the whole image's.
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
    # COCO needs at least 3 points (6 numbers) per polygon; smaller contours are single pixels/lines.
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
