"""Binary masks <-> the wire formats of `sdk.schema` (COCO RLE, PNG, COCO polygons).

Encoding and decoding live together so the two sides cannot drift apart.  RLE and polygon
rasterisation use pycocotools, the reference COCO implementation; polygon extraction uses
OpenCV's contour tracer and RLE encoding its transpose, where OpenCV is installed (the server).
"""

from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass
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
        return RunMask.from_crop(crop, (x, y), size).rle()
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


@dataclass(frozen=True)
class RunMask:
    """A binary mask of a `size` (height, width) image as its foreground runs in COCO RLE's order,
    down each column, column after column: pixels [starts[i], ends[i]) of the image's column-major
    pixel index, sorted and separated by background.  Time and memory follow the runs, not the
    image: an object on a 12 MP photo is a few hundred runs, and its COCO RLE is written from them.
    """

    size: tuple[int, int]
    starts: np.ndarray  # int64
    ends: np.ndarray  # int64

    @classmethod
    def from_crop(cls, crop: np.ndarray, origin: tuple[int, int], size: tuple[int, int]) -> RunMask:
        """The mask that is the boolean `crop` at `origin` (x, y) and background elsewhere."""
        return cls.from_columns(_transposed(crop), origin, size)

    @classmethod
    def from_columns(cls, columns: np.ndarray, origin: tuple[int, int], size: tuple[int, int]) -> RunMask:
        """`from_crop` of the crop whose transpose is `columns` (one row per crop column)."""
        cols, rows = columns.shape
        height = size[0]
        # Each crop column framed by a background pixel above and below, so every run starts and
        # ends inside its column: a change from 0 to 1 starts a run, from 1 to 0 ends one.
        framed = np.zeros((cols, rows + 2), dtype=np.uint8)
        framed[:, 1:-1] = columns
        flat = framed.reshape(-1)
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # framed: starts and ends alternate
        starts, ends = changes[0::2], changes[1::2]
        x, y = origin

        def position(framed_index: np.ndarray) -> np.ndarray:
            column, row = np.divmod(framed_index, rows + 2)
            return (x + column) * height + y + row - 1

        return cls.of_runs(size, position(starts), position(ends))

    @classmethod
    def of_runs(cls, size: tuple[int, int], starts: np.ndarray, ends: np.ndarray) -> RunMask:
        """From sorted, non-empty runs that may touch (a run ending at a column's last pixel and
        one starting at the next column's first): touching runs are joined, as RLE needs."""
        if len(starts) > 1:
            apart = np.concatenate(([True], starts[1:] != ends[:-1]))
            starts, ends = starts[apart], ends[np.concatenate((apart[1:], [True]))]
        return cls((int(size[0]), int(size[1])), starts.astype(np.int64), ends.astype(np.int64))

    def counts(self) -> list[int]:
        """COCO's uncompressed RLE counts: background and foreground lengths in turn."""
        height, width = self.size
        bounds = np.empty(2 * len(self.starts) + 2, dtype=np.int64)
        bounds[0], bounds[1:-1:2], bounds[2:-1:2], bounds[-1] = 0, self.starts, self.ends, height * width
        counts = np.diff(bounds)
        return (counts[:-1] if len(counts) > 1 and counts[-1] == 0 else counts).tolist()

    def rle(self) -> RleMask:
        height, width = self.size
        compressed = coco_mask.frPyObjects({"counts": self.counts(), "size": [height, width]}, height, width)
        return RleMask(size=self.size, counts=compressed["counts"].decode("ascii"))

    def box(self) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of the foreground pixels, ends exclusive; None when there are none."""
        if not len(self.starts):
            return None
        height = self.size[0]
        first_column, last_column = self.starts // height, (self.ends - 1) // height
        if (first_column != last_column).any():  # a run over a column's end covers the full height
            top, bottom = 0, height
        else:
            top, bottom = int((self.starts % height).min()), int(((self.ends - 1) % height).max()) + 1
        return int(first_column[0]), top, int(last_column[-1]) + 1, bottom

    def crop(self) -> tuple[np.ndarray, tuple[int, int]]:
        """(the boolean mask inside `box()`, its (x, y)): a raster of the object only."""
        box = self.box()
        if box is None:
            return np.zeros((0, 0), dtype=bool), (0, 0)
        x0, y0, x1, y1 = box
        height = self.size[0]
        # The columns x0..x1 at full height, column-major, marked +1 where runs start, -1 where they end.
        edges = np.zeros((x1 - x0) * height + 1, dtype=np.int8)
        np.add.at(edges, self.starts - x0 * height, 1)
        np.add.at(edges, self.ends - x0 * height, -1)
        strip = np.cumsum(edges[:-1], dtype=np.int8).astype(bool).reshape(x1 - x0, height)
        return np.ascontiguousarray(strip[:, y0:y1].T), (x0, y0)

    def encode(self, fmt: MaskFormat) -> Mask:
        """The wire mask: RLE from the runs; PNG and polygons from the object's raster."""
        if fmt == "rle":
            return self.rle()
        crop, origin = self.crop()
        return encode_mask(crop, fmt, origin=origin, size=self.size)


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
    cv2 = _opencv()
    if cv2 is None:  # the laptop install has no OpenCV: say how to get it, as pandas does for its extras
        raise ImportError("polygon masks are traced with OpenCV: pip install 'samfleet[polygons]'")
    if not binary.size:
        return []
    # OpenCV treats pixels beyond the crop as background, as they are: the crop's contours,
    # shifted, are the whole image's.
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
    # COCO needs at least 3 points (6 numbers) per polygon; smaller contours are single pixels/lines.
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
