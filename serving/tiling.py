"""High-resolution mode: find small objects in large images by running SAM3 on overlapping tiles.

SAM3 sees every image at 1008x1008, so a 6000x4000 photo is shrunk ~6x and a 20-pixel object
becomes 3 pixels: lost.  Tiles of the model's own input size keep full resolution.  An object
cut by a tile border shows up as a part in each tile; neighbouring tiles share an overlap
strip, and two parts are one object when their masks agree inside the strip both tiles saw
(mask IoU there).  Box NMS cannot do this: the parts' boxes differ although they are one
object, and two small neighbours' boxes can overlap although they are two.

Merged groups are joined transitively (an object crossing three tiles), and the optional
whole-image pass adds what no tile found, such as objects larger than a tile; where a tile
found the object its full-resolution mask is kept rather than the upsampled whole-image one,
and a whole-image blob never joins objects that a tile saw apart (`merge_tiles` says why).
Only pieces whose boxes overlap are compared (a sort-and-sweep, `_overlapping`), so the merge's
cost follows the overlaps, not the square of the number of pieces.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from sdk.masks import RunMask
from sdk.schema import Tiling
from serving.postprocess import Found


@dataclass(frozen=True)
class Window:
    """A region of the image in pixels, x1/y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0 : self.y1, self.x0 : self.x1]

    def intersect(self, other: Window) -> Window | None:
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        return Window(x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None

    @property
    def size(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def plan(width: int, height: int, tiling: Tiling) -> list[Window]:
    """The tiles covering the image, then the whole image when `tiling.full_image` is set.
    An image no larger than one tile gets the whole image alone."""
    whole = Window(0, 0, width, height)
    tiles = [
        Window(x, y, min(x + tiling.tile_size, width), min(y + tiling.tile_size, height))
        for y in _starts(height, tiling)
        for x in _starts(width, tiling)
    ]
    if len(tiles) == 1:
        return [whole]
    return tiles + [whole] if tiling.full_image else tiles


def window_count(width: int, height: int, tiling: Tiling) -> int:
    """len(plan(width, height, tiling)), without making the windows: the tile limit is checked on
    this first (tiles of 64 with an overlap of 63 make 23 million windows of a 6000x4000 photo)."""
    tiles = _count(width, tiling) * _count(height, tiling)
    return 1 if tiles == 1 else tiles + tiling.full_image


def _count(length: int, tiling: Tiling) -> int:
    # The fewest tiles whose overlaps are at least `overlap`.
    if length <= tiling.tile_size:
        return 1
    return max(math.ceil((length - tiling.overlap) / (tiling.tile_size - tiling.overlap)), 2)


def _starts(length: int, tiling: Tiling) -> list[int]:
    # Spread evenly, so the last tile ends at the border instead of hanging over it.
    count = _count(length, tiling)
    if count == 1:
        return [0]
    span = length - tiling.tile_size
    return [round(i * span / (count - 1)) for i in range(count)]


@dataclass
class _Piece:
    """An instance found in one window, its mask a raster of its own extent at `origin` (x, y) of
    the whole image; `found` holds its score, label and box (whole-image coordinates)."""

    found: Found
    mask: np.ndarray  # bool
    origin: tuple[int, int]
    window: Window
    fine: bool  # from a tile, not from the whole-image pass

    @property
    def extent(self) -> Window:
        x, y = self.origin
        h, w = self.mask.shape
        return Window(x, y, x + w, y + h)

    def whole(self, size: tuple[int, int]) -> Found:
        """The piece as an instance of the whole image of `size` (height, width)."""
        return replace(self.found, mask=RunMask.from_crop(self.mask, self.origin, size))


def _piece(found: Found, window: Window, fine: bool) -> _Piece:
    """`found` (in `window`'s coordinates) in the whole image's coordinates."""
    mask, (x, y) = found.mask.crop()
    x1, y1, x2, y2 = found.box
    shifted = replace(found, box=(x1 + window.x0, y1 + window.y0, x2 + window.x0, y2 + window.y0))
    return _Piece(shifted, mask, (window.x0 + x, window.y0 + y), window, fine)


def merge_tiles(found_per_window: list[list[Found]], windows: list[Window], merge_iou: float) -> list[Found]:
    """One list of whole-image instances from the instances found in each window (window
    coordinates), parts of one object joined.

    The tiles' pieces are joined first, among themselves: two parts are one object when their
    masks agree (IoU) in the strip both tiles saw.  The whole-image pass sees the photo shrunk
    (~6x for 6000x4000), so where it finds one blob over objects that the tiles, at full
    resolution, found apart, the tiles are right.  Each whole-image piece is matched to the tile
    pieces it corresponds to (`_covers`: mask IoU, or the tile piece lying mostly inside it, over
    the pixels that tile saw), and then
    - matching none, it is kept: an object no tile found;
    - matching pieces of tile instances that no single tile saw apart (one instance, or parts of
      an object larger than a tile that no strip joined, e.g. where a middle tile missed it), it
      joins them: it bridges only parts that no tile holds side by side;
    - matching pieces of two instances that one tile saw apart (that tile holds a piece of each),
      it is those objects seen coarsely, and is dropped: joined to all it would glue them into one
      instance, joined to one it would hand that one the other's pixels outside its tiles.
    """
    whole = Window(0, 0, max(w.x1 for w in windows), max(w.y1 for w in windows))
    pieces = [
        _piece(f, w, fine=w != whole or len(windows) == 1)
        for fs, w in zip(found_per_window, windows, strict=True)
        for f in fs
    ]
    same: list[tuple[int, int]] = []  # tile pieces that are one object
    covered: dict[int, list[int]] = {}  # whole-image piece -> the tile pieces it corresponds to
    for i, j in _overlapping([p.extent for p in pieces], tall=whole.y1 > whole.x1):
        a, b = pieces[i], pieces[j]
        if a.window == b.window or a.found.label != b.found.label:
            continue
        if a.fine and b.fine:
            if _same_object(a, b, merge_iou):
                same.append((i, j))
        elif b.fine and _covers(a, b, merge_iou):
            covered.setdefault(i, []).append(j)
        elif a.fine and _covers(b, a, merge_iou):
            covered.setdefault(j, []).append(i)

    # Union-find over the pieces; each root knows the tiles holding a piece of its group.
    parent = list(range(len(pieces)))
    seen_by: list[set[Window]] = [{p.window} if p.fine else set() for p in pieces]

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def join(i: int, j: int) -> None:
        i, j = root(i), root(j)
        if i != j:
            parent[j] = i
            seen_by[i] |= seen_by[j]

    for i, j in same:
        join(i, j)
    dropped = set()
    for coarse in sorted(covered):
        groups = {root(k) for k in covered[coarse]}
        if _kept_apart([seen_by[g] for g in groups]):
            dropped.add(coarse)
            continue
        for g in groups:
            join(coarse, g)
    assembled: dict[int, list[_Piece]] = {}
    for k, piece in enumerate(pieces):
        if k not in dropped:
            assembled.setdefault(root(k), []).append(piece)
    return [_assembled(group, whole.size) for group in assembled.values()]


def _kept_apart(seen_by: list[set[Window]]) -> bool:
    """Whether one tile holds pieces of two of the groups whose tiles are `seen_by`."""
    so_far: set[Window] = set()
    for tiles in seen_by:
        if not so_far.isdisjoint(tiles):
            return True
        so_far |= tiles
    return False


# Candidate pairs the sweep makes at once: bounds its memory (a few tens of MB).
_SWEEP_PAIRS = 1 << 20


def _overlapping(boxes: list[Window], tall: bool = False) -> Iterator[tuple[int, int]]:
    """The pairs (i, j) of `boxes` that overlap, i != j, each pair once.

    Sort-and-sweep along x (y when `tall`: the image's long side, across which pieces spread):
    after one sort, a binary search gives each box the boxes starting within its span, and only
    those are tested for overlap on the other axis, in numpy; the merge's Python work (a mask
    comparison per pair) then follows the overlapping pairs, not all P^2 / 2.  Chosen over a grid
    (no cell size to pick: pieces range from a few pixels to the whole image) and over scipy's
    cKDTree (it indexes points, not intervals)."""
    rows = np.array([(b.x0, b.y0, b.x1, b.y1) for b in boxes], dtype=np.int64).reshape(-1, 4)
    if tall:
        rows = rows[:, [1, 0, 3, 2]]
    keep = np.flatnonzero((rows[:, 0] < rows[:, 2]) & (rows[:, 1] < rows[:, 3]))  # empty masks overlap nothing
    order = keep[np.argsort(rows[keep, 0], kind="stable")]
    x0, y0, x1, y1 = rows[order].T
    # The boxes after box k in the order start at or after it; those starting before its end overlap it on x.
    count = np.searchsorted(x0, x1, side="left") - np.arange(len(order)) - 1
    done = np.concatenate(([0], np.cumsum(count)))
    start = 0
    while start < len(order):
        stop = max(int(np.searchsorted(done, done[start] + _SWEEP_PAIRS, side="right")) - 1, start + 1)
        first = np.repeat(np.arange(start, stop), count[start:stop])
        second = first + 1 + np.arange(len(first)) - np.repeat(done[start:stop] - done[start], count[start:stop])
        on_y = (y0[first] < y1[second]) & (y0[second] < y1[first])
        yield from zip(order[first[on_y]].tolist(), order[second[on_y]].tolist(), strict=True)
        start = stop


def _same_object(a: _Piece, b: _Piece, merge_iou: float) -> bool:
    """Whether two tiles' pieces are one object: their masks' IoU where both tiles saw."""
    both, union, _ = _agreement(a, b, a.window.intersect(b.window))
    return union > 0 and both / union >= merge_iou


def _covers(coarse: _Piece, fine: _Piece, merge_iou: float) -> bool:
    """Whether the whole-image piece `coarse` is (or contains) the object of the tile piece
    `fine`: their masks' IoU, or the share of `fine` inside `coarse`, where the tile saw.  The
    share too, because a blob over several neighbours has a low IoU with each, yet holds each."""
    both, union, in_fine = _agreement(coarse, fine, fine.window)
    return union > 0 and (both / union >= merge_iou or both / in_fine >= merge_iou)


def _agreement(a: _Piece, b: _Piece, shared: Window | None) -> tuple[int, int, int]:
    """(pixels of both, pixels of either, pixels of b) of the two masks within `shared`."""
    if shared is None or a.extent.intersect(b.extent) is None:
        return 0, 0, 0
    # Only the pixels both windows saw can be compared: elsewhere each part is blind to the other.
    region = shared.intersect(_bounding(a.extent, b.extent))
    if region is None:
        return 0, 0, 0
    in_a, in_b = _paste(a, region), _paste(b, region)
    return int(np.count_nonzero(in_a & in_b)), int(np.count_nonzero(in_a | in_b)), int(np.count_nonzero(in_b))


def _assembled(group: list[_Piece], size: tuple[int, int]) -> Found:
    if len(group) == 1:
        return group[0].whole(size)
    # Tiles' full-resolution masks where a tile saw the object; the whole-image pass's
    # upsampled mask only outside every such tile.
    extent = _bounding(*(p.extent for p in group))
    mask = np.zeros(extent.size, dtype=bool)
    fine = [p for p in group if p.fine]
    for p in group:
        if not p.fine:
            mask |= _paste(p, extent)
    for p in fine:
        seen = p.window.intersect(extent)
        if seen is not None:
            mask[seen.y0 - extent.y0 : seen.y1 - extent.y0, seen.x0 - extent.x0 : seen.x1 - extent.x0] = False
    for p in fine:
        mask |= _paste(p, extent)
    best = max(group, key=lambda p: p.found.score)
    joined = _Piece(best.found, mask, (extent.x0, extent.y0), extent, fine=True).whole(size)
    # The parts' model boxes each end at their tile's border; the joined object's box is its mask's.
    x0, y0, x1, y1 = joined.mask.box() or (0, 0, 0, 0)
    return replace(joined, box=(float(x0), float(y0), float(x1), float(y1)))


def _bounding(*windows: Window) -> Window:
    return Window(
        min(w.x0 for w in windows), min(w.y0 for w in windows), max(w.x1 for w in windows), max(w.y1 for w in windows)
    )


def _paste(piece: _Piece, region: Window) -> np.ndarray:
    """The piece's mask over `region` (False where it has no pixels)."""
    out = np.zeros(region.size, dtype=bool)
    overlap = piece.extent.intersect(region)
    if overlap is not None:
        x, y = piece.origin
        out[overlap.y0 - region.y0 : overlap.y1 - region.y0, overlap.x0 - region.x0 : overlap.x1 - region.x0] = (
            piece.mask[overlap.y0 - y : overlap.y1 - y, overlap.x0 - x : overlap.x1 - x]
        )
    return out
