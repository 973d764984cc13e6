"""The tiling merge alone (`serving.tiling.merge_tiles`), on instances written by hand: what each
tile and the whole-image pass would have found, so each case says exactly what the merge is given.

The end-to-end cases, with a segmenter looking at real pixels, are in test_tiling_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdk.masks import RunMask
from sdk.schema import Tiling
from serving import tiling
from serving.postprocess import Found
from serving.tiling import Window, merge_tiles, plan

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 of the whole image, ends exclusive


def found_in(window: Window, mask: np.ndarray, origin: tuple[int, int], label: str = "red") -> Found | None:
    """What a segmenter looking at `window` reports of the object drawn by `mask` at `origin` (x, y)
    of the whole image: the part inside the window, in the window's coordinates; None if no part."""
    x, y = origin
    h, w = mask.shape
    seen = Window(x, y, x + w, y + h).intersect(window)
    if seen is None or not mask[seen.y0 - y : seen.y1 - y, seen.x0 - x : seen.x1 - x].any():
        return None
    part = mask[seen.y0 - y : seen.y1 - y, seen.x0 - x : seen.x1 - x]
    local = RunMask.from_crop(part, (seen.x0 - window.x0, seen.y0 - window.y0), window.size)
    box = local.box()
    assert box is not None
    return Found(score=0.9, box=tuple(float(v) for v in box), mask=local, label=label)  # type: ignore[arg-type]


def rect_mask(rect: Rect) -> tuple[np.ndarray, tuple[int, int]]:
    x0, y0, x1, y1 = rect
    return np.ones((y1 - y0, x1 - x0), bool), (x0, y0)


def seen_by_tiles(windows: list[Window], objects: list[Rect], coarse: list[Rect]) -> list[list[Found]]:
    """Per window: the tiles (all windows but the last) see `objects`, each part on its own; the
    whole-image pass (the last window) sees `coarse`."""
    *tiles, whole = windows
    per_window = [[f for o in objects if (f := found_in(t, *rect_mask(o))) is not None] for t in tiles]
    return [*per_window, [f for c in coarse if (f := found_in(whole, *rect_mask(c))) is not None]]


def as_rect(found: Found) -> Rect | None:
    """The instance's mask as the rectangle it fills exactly, else None."""
    crop, (x, y) = found.mask.crop()
    h, w = crop.shape
    return (x, y, x + w, y + h) if crop.all() else None


# --- cost: only pieces whose boxes overlap are compared --------------------------------------


def spread_objects(count: int, width: int, height: int, seed: int) -> list[Rect]:
    """`count` squares of 10 to 40 px at random over the image, 10 px apart at least (so they are
    distinct objects); many are cut by tile borders."""
    rng = np.random.default_rng(seed)
    objects: list[Rect] = []
    while len(objects) < count:
        side = int(rng.integers(10, 40))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        if all(x > b[2] + 10 or b[0] > x + side + 10 or y > b[3] + 10 or b[1] > y + side + 10 for b in objects):
            objects.append((x, y, x + side, y + side))
    return objects


def test_only_pieces_whose_boxes_overlap_have_their_masks_compared(monkeypatch):
    """The merge used to compare every piece with every other (P^2 / 2 mask comparisons for P
    pieces, 2 million for 2000): it now compares only pieces whose boxes overlap, found by a sweep.
    Counted, not timed: `python benchmarks/tiling_merge.py` measures the time."""
    windows = plan(6000, 4000, Tiling(tile_size=1008, overlap=200))
    objects = spread_objects(900, 6000, 4000, seed=5)
    per_window = seen_by_tiles(windows, objects, coarse=objects[::3])
    pieces = sum(len(f) for f in per_window)
    compared = []
    for name in ("_same_object", "_covers"):  # tile with tile; whole-image pass with tile
        original = getattr(tiling, name, None)
        if original is not None:
            monkeypatch.setattr(tiling, name, lambda a, b, iou, f=original: compared.append(1) or f(a, b, iou))

    merged = merge_tiles(per_window, windows, merge_iou=0.5)

    print(f"{pieces} pieces, {len(compared)} mask comparisons (all pairs: {pieces * (pieces - 1) // 2})")
    assert pieces > 1200
    # Each object's parts in the tiles that saw it and its whole-image twin, nothing else.
    assert len(compared) < 3 * pieces
    assert len(compared) < pieces * (pieces - 1) // 2 / 100
    assert sorted(as_rect(f) for f in merged) == sorted(objects), "each object whole, once"


@pytest.mark.parametrize("tall", [False, True])
def test_the_sweep_finds_exactly_the_overlapping_boxes(tall, monkeypatch):
    monkeypatch.setattr(tiling, "_SWEEP_PAIRS", 50)  # several batches of candidate pairs
    rng = np.random.default_rng(11)
    for _ in range(40):
        n = int(rng.integers(0, 120))
        corners = rng.integers(0, 300, size=(n, 2))
        sides = rng.integers(0, 80, size=(n, 2))  # empty boxes too (an empty mask's extent)
        boxes = [Window(int(x), int(y), int(x + w), int(y + h)) for (x, y), (w, h) in zip(corners, sides, strict=True)]
        found = {frozenset(pair) for pair in tiling._overlapping(boxes, tall=tall)}
        expected = {
            frozenset((i, j))
            for i in range(n)
            for j in range(i + 1, n)
            if boxes[i].intersect(boxes[j]) is not None
        }
        assert found == expected
        assert len(found) == len(list(tiling._overlapping(boxes, tall=tall))), "each pair once"


# --- the whole-image pass joins what the tiles found, never glues what they kept apart --------

# 2000x1000 in tiles of 1008 overlapping by 200: tiles at x = 0, 496 and 992, and the whole image.
WIDE = plan(2000, 1000, Tiling(tile_size=1008, overlap=200))
ADJACENT = {
    # Both inside tile 0 only, 2 px apart.
    "inside a tile": [(100, 100, 160, 160), (162, 100, 222, 160)],
    # Across tile 0's right border (x = 1008) and tile 2's left one (x = 992), 2 px apart: each
    # tile holds a whole square and a sliver of the other.
    "across tile borders": [(940, 300, 1000, 360), (1002, 300, 1062, 360)],
}


@pytest.mark.parametrize("merge_iou", [0.3, 0.5])
@pytest.mark.parametrize("where", ADJACENT)
def test_a_coarse_whole_image_blob_does_not_glue_two_objects_the_tiles_kept_apart(where, merge_iou):
    """The whole-image pass, seeing the photo shrunk, finds one blob over two neighbours that the
    tiles, at full resolution, found as two: the result is the two, each with its tile mask.  The
    merge used to join the blob to each tile part it overlapped and so the two parts with each
    other (one instance), or keep the blob as a third instance where it matched neither."""
    objects = ADJACENT[where]
    blob = (objects[0][0], objects[0][1], objects[1][2], objects[1][3])
    per_window = seen_by_tiles(WIDE, objects, coarse=[blob])
    assert len(per_window[-1]) == 1 and sum(len(f) for f in per_window[:-1]) >= 2

    merged = merge_tiles(per_window, WIDE, merge_iou)

    assert sorted(as_rect(f) for f in merged) == sorted(objects)


def test_the_whole_image_pass_still_joins_parts_no_tile_saw_together():
    """What the whole-image pass is for: a bar longer than a tile whose middle the tile there
    missed (a model can miss an object it sees only a featureless part of) comes back as one
    instance, its parts from the tiles at each end joined by the whole-image mask, which also
    fills the gap.  No tile saw the two parts apart, so joining them glues nothing.  An object only
    the whole-image pass found is kept as it is."""
    windows = plan(3000, 1000, Tiling(tile_size=1008, overlap=200))  # tiles at x = 0, 664, 1328, 1992
    bar, lone = (500, 400, 1800, 420), (2500, 100, 2700, 300)
    per_window = seen_by_tiles(windows, [bar], coarse=[bar, lone])
    per_window[1] = []  # the tile at x = 664 missed the bar
    assert [len(f) for f in per_window] == [1, 0, 1, 0, 2]

    merged = merge_tiles(per_window, windows, merge_iou=0.5)

    assert sorted(as_rect(f) for f in merged) == [bar, lone]
