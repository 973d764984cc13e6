"""The tiling merge (serving.tiling.merge_tiles) on many pieces: the service's sweep, which compares
the masks of pieces whose boxes overlap, against the all-pairs loop it replaced (kept below as the
baseline), measured in the same run on the same pieces.

    python benchmarks/tiling_merge.py [--pieces 500 1000 2000] [--repeats 3]

The pieces are what the tiles and the whole-image pass of a 6000x4000 photo in tiles of 1008
overlapping by 200 (40 tiles) would report of squares of 10 to 40 px spread over it, 10 px apart
at least: each square is a piece in every tile that sees part of it, and every third one is also
found by the whole-image pass.  Printed: the pieces, the mask comparisons each way (counted), the
best time of --repeats each way and their ratio; both must give the same instances.
"""

from __future__ import annotations

import argparse
import time

from common import REPO  # noqa: F401  (puts the repository on sys.path)

import numpy as np
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from sdk.masks import RunMask
from sdk.schema import Tiling
from serving import tiling
from serving.postprocess import Found
from serving.tiling import Window, merge_tiles, plan

WIDTH, HEIGHT = 6000, 4000
WINDOWS = plan(WIDTH, HEIGHT, Tiling(tile_size=1008, overlap=200))


def part(window: Window, square: Window) -> Found | None:
    seen = square.intersect(window)
    if seen is None:
        return None
    h, w = seen.size
    mask = RunMask.from_crop(np.ones((h, w), bool), (seen.x0 - window.x0, seen.y0 - window.y0), window.size)
    x0, y0 = seen.x0 - window.x0, seen.y0 - window.y0
    return Found(score=0.9, box=(x0, y0, x0 + w, y0 + h), mask=mask, label="thing")


def scene(pieces: int, seed: int = 5) -> tuple[list[list[Found]], int]:
    """(found per window with at least `pieces` pieces in all, the number of squares)."""
    rng = np.random.default_rng(seed)
    squares: list[Window] = []
    per_window: list[list[Found]] = [[] for _ in WINDOWS]
    while sum(map(len, per_window)) < pieces:
        side = int(rng.integers(10, 40))
        x, y = int(rng.integers(0, WIDTH - side)), int(rng.integers(0, HEIGHT - side))
        square = Window(x, y, x + side, y + side)
        if any(Window(s.x0 - 10, s.y0 - 10, s.x1 + 10, s.y1 + 10).intersect(square) for s in squares):
            continue
        squares.append(square)
        for k, window in enumerate(WINDOWS[:-1] if len(squares) % 3 else WINDOWS):
            if (found := part(window, square)) is not None:
                per_window[k].append(found)
    return per_window, len(squares)


def all_pairs(found_per_window: list[list[Found]], windows: list[Window], merge_iou: float) -> list[Found]:
    """The merge as it was: every piece's mask compared with every other's (same label, other window)."""
    whole = Window(0, 0, max(w.x1 for w in windows), max(w.y1 for w in windows))
    pieces = [
        tiling._piece(f, w, fine=w != whole or len(windows) == 1)
        for fs, w in zip(found_per_window, windows, strict=True)
        for f in fs
    ]
    pairs = [
        (i, j)
        for i, a in enumerate(pieces)
        for j in range(i + 1, len(pieces))
        if a.window != pieces[j].window
        and a.found.label == pieces[j].found.label
        and tiling._same_object(a, pieces[j], merge_iou)
    ]
    rows, cols = zip(*pairs, strict=True) if pairs else ((), ())
    graph = coo_array((np.ones(len(pairs)), (rows, cols)), shape=(len(pieces), len(pieces)))
    _, group_of = connected_components(graph, directed=False)
    groups: dict[int, list[tiling._Piece]] = {}
    for piece, group in zip(pieces, group_of, strict=True):
        groups.setdefault(int(group), []).append(piece)
    return [tiling._assembled(group, whole.size) for group in groups.values()]


def measured(merge, per_window: list[list[Found]], repeats: int) -> tuple[float, int, list]:
    """(best seconds of `repeats`, mask comparisons in one merge, the merged boxes sorted)."""
    counted = {name: getattr(tiling, name) for name in ("_same_object", "_covers") if hasattr(tiling, name)}
    calls = [0]

    def counting(f):
        def wrapper(*args):
            calls[0] += 1
            return f(*args)

        return wrapper

    best = float("inf")
    for _ in range(repeats):
        for name, f in counted.items():
            setattr(tiling, name, counting(f))
        calls[0] = 0
        try:
            started = time.perf_counter()
            merged = merge(per_window, WINDOWS, 0.5)
            best = min(best, time.perf_counter() - started)
        finally:
            for name, f in counted.items():
                setattr(tiling, name, f)
    return best, calls[0], sorted(f.box for f in merged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{WIDTH}x{HEIGHT}, {len(WINDOWS) - 1} tiles + the whole image; best of {args.repeats}")
    print(f"{'pieces':>7} {'squares':>8} {'compared (sweep)':>17} {'compared (all pairs)':>21} "
          f"{'sweep ms':>9} {'all pairs ms':>13} {'speed-up':>9}")
    for pieces in args.pieces:
        per_window, squares = scene(pieces)
        total = sum(map(len, per_window))
        swept, swept_calls, swept_boxes = measured(merge_tiles, per_window, args.repeats)
        looped, looped_calls, looped_boxes = measured(all_pairs, per_window, args.repeats)
        assert swept_boxes == looped_boxes and len(swept_boxes) == squares, "the same instances, one per square"
        print(f"{total:>7} {squares:>8} {swept_calls:>17} {looped_calls:>21} "
              f"{swept * 1000:>9.1f} {looped * 1000:>13.1f} {looped / swept:>8.0f}x")


if __name__ == "__main__":
    main()
