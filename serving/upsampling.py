"""Low-res mask logits -> full-resolution binary masks, computed only where an instance can be
foreground: work and memory in proportion to the object, not to the photo.

SAM3 predicts each mask at the model's low resolution (288x288 for the full-size model), and
transformers upsamples it bilinearly to the photo's size, then thresholds it: probabilities for
`Sam3Processor.post_process_instance_segmentation`, logits for the tracker's `post_process_masks`.
Bilinear interpolation is a convex combination of the 2x2 low-res values around each output
pixel, so an output pixel can only pass the threshold when one of those four does.  So:

- on the GPU replica, `support_windows` cuts each mask down to the low-res window around the
  values near or above the threshold, plus one low-res pixel on every side (the neighbours the
  interpolation reads): that window is all that travels to the ingress;
- on the ingress, `upsample_windows` computes the full-resolution pixels whose 2x2 sources lie in
  each window, and nothing else.  Every other pixel of the photo is provably background.

The values are torch's own, bit for bit: the source indices and weights of its CPU bilinear
kernel, combined in the same order with the same fused multiply-adds (`_ARITHMETIC`, detected
once against `torch.nn.functional.interpolate` itself), and sigmoid taken in torch's vectorised
lanes as transformers' whole-tensor call takes it.  So the masks equal transformers' masks
exactly, as tests/test_upsampling.py checks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from sdk.masks import RunMask

# A low-res value this close below the threshold still counts as support: the replica's sigmoid
# (on a GPU, in another precision path) and the ingress's may differ in the last bits.
SUPPORT_MARGIN = 1e-4


@dataclass
class MaskWindow:
    """One instance's low-res mask values inside the window where it can be foreground, as numpy
    (Ray pickles a numpy array as one buffer; a torch tensor costs ~0.2 ms each way)."""

    top: int
    left: int
    values: np.ndarray  # (rows, cols) logits in the model's dtype; bfloat16 as its raw 16 bits
    bfloat16: bool = False

    def logits(self) -> torch.Tensor:
        """The values as float32 (exact: every model dtype converts without rounding)."""
        values = torch.from_numpy(self.values)
        return (values.view(torch.bfloat16) if self.bfloat16 else values).float()


def support_windows(masks: torch.Tensor, threshold: float, *, probabilities: bool) -> list[MaskWindow]:
    """The window of each (h, w) mask in `masks` (N, h, w; any device) whose values, after sigmoid
    when `probabilities`, can pass `threshold` after upsampling.  One device-to-host copy."""
    bfloat16 = masks.dtype == torch.bfloat16
    host = (masks.view(torch.int16) if bfloat16 else masks).cpu().numpy()
    if threshold == math.inf or masks.shape[0] == 0:
        return [MaskWindow(0, 0, mask[:0, :0].copy(), bfloat16) for mask in host]
    level = masks.float().sigmoid() if probabilities else masks.float()
    support = level > threshold - SUPPORT_MARGIN * max(1.0, abs(threshold))
    rows = support.any(dim=2).cpu().numpy()
    cols = support.any(dim=1).cpu().numpy()
    height, width = masks.shape[1:]
    windows = []
    for mask, in_rows, in_cols in zip(host, rows, cols, strict=True):
        ys, xs = np.flatnonzero(in_rows), np.flatnonzero(in_cols)
        if len(ys) == 0:
            windows.append(MaskWindow(0, 0, mask[:0, :0].copy(), bfloat16))
            continue
        top, bottom = max(int(ys[0]) - 1, 0), min(int(ys[-1]) + 2, height)
        left, right = max(int(xs[0]) - 1, 0), min(int(xs[-1]) + 2, width)
        # A copy, so the whole batch's masks are not kept alive by the windows.
        windows.append(MaskWindow(top, left, mask[top:bottom, left:right].copy(), bfloat16))
    return windows


@dataclass(frozen=True)
class _Axis:
    """torch's bilinear source indices and weights along one axis (align_corners=False)."""

    first: np.ndarray  # int64, the lower source index of each output position
    second: np.ndarray  # int64, the upper one (== first at the last input)
    weight_first: np.ndarray  # float32
    weight_second: np.ndarray  # float32
    step: float  # how far apart consecutive outputs sit in the input: n_in / n_out


@dataclass(frozen=True)
class _Arithmetic:
    """How this torch build evaluates its bilinear kernel, which decides the last bits."""

    fused_source_index: bool  # scale * (dst + 0.5) - 0.5 as one fused multiply-add
    combine: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (a, wa, b, wb) -> a*wa + b*wb


def _fused(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> np.ndarray:
    # fma(a, wa, b * wb): a float32 product is exact in float64, so one float64 sum rounded to
    # float32 is the fused operation (double rounding aside, never seen to matter in the probe).
    return (a.astype(np.float64) * wa + (b * wb)).astype(np.float32)


def _plain(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> np.ndarray:
    return a * wa + b * wb


def _axis(n_in: int, n_out: int, arithmetic: _Arithmetic) -> _Axis:
    scale = np.float32(n_in) / np.float32(n_out)
    centre = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    if arithmetic.fused_source_index:
        source = (np.float64(scale) * centre - 0.5).astype(np.float32)
    else:
        source = scale * centre - np.float32(0.5)
    source = np.maximum(source, np.float32(0))
    first = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    weight = np.clip(source - first.astype(np.float32), np.float32(0), np.float32(1))
    second = first + (first < n_in - 1)
    return _Axis(first, second, np.float32(1) - weight, weight, n_in / n_out)


def _interpolate(values: np.ndarray, rows: _Axis, cols: _Axis, arithmetic: _Arithmetic) -> np.ndarray:
    """`values` at the output positions `rows` x `cols` (indices into `values`), as torch's kernel
    does it: along the width first, then those rows along the height.  Laid out column-major (a
    C-order array of the transpose): the order the masks' runs are read in."""
    along_width = arithmetic.combine(
        values.T[cols.first], cols.weight_first[:, None], values.T[cols.second], cols.weight_second[:, None]
    )  # (columns, window rows)
    return arithmetic.combine(
        along_width[:, rows.first], rows.weight_first, along_width[:, rows.second], rows.weight_second
    ).T


def _detect_arithmetic() -> tuple[_Arithmetic, bool]:
    """The candidate that reproduces F.interpolate on random probes, and whether one did."""
    rng = np.random.default_rng(0)
    probes = []
    for h, w, out_h, out_w in ((37, 53, 301, 409), (288, 288, 1013, 761), (64, 9, 64, 1000)):
        values = rng.random((h, w), dtype=np.float32)
        expected = F.interpolate(
            torch.from_numpy(values)[None, None], size=(out_h, out_w), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        probes.append((values, expected))
    candidates = [_Arithmetic(fused, combine) for fused in (True, False) for combine in (_fused, _plain)]
    for arithmetic in candidates:
        if all(
            np.array_equal(
                _interpolate(
                    values,
                    _axis(values.shape[0], expected.shape[0], arithmetic),
                    _axis(values.shape[1], expected.shape[1], arithmetic),
                    arithmetic,
                ),
                expected,
            )
            for values, expected in probes
        ):
            return arithmetic, True
    return candidates[-1], False


_ARITHMETIC, EXACT = _detect_arithmetic()


@functools.lru_cache(maxsize=64)
def _cached_axis(n_in: int, n_out: int) -> _Axis:
    return _axis(n_in, n_out, _ARITHMETIC)


def _sigmoid(windows: list[torch.Tensor]) -> list[np.ndarray]:
    """torch.sigmoid of each window as a whole (h, w) mask gets it, in one call.  torch's
    vectorised sigmoid and its scalar loop for a tensor's last few elements differ in the last
    bit; transformers applies it to whole masks, whose sizes fill every vector, so each window
    starts on a whole vector of one flat buffer, and the buffer splits evenly between threads."""
    lane = 64
    starts = np.concatenate(([0], np.cumsum([-(-w.numel() // lane) * lane for w in windows])))
    block = lane * torch.get_num_threads()
    flat = torch.zeros(-(-int(starts[-1]) // block) * block, dtype=torch.float32)
    for start, window in zip(starts[:-1], windows, strict=True):  # starts[-1]: the end of the last
        flat[start : start + window.numel()] = window.reshape(-1)
    probabilities = torch.sigmoid(flat).numpy()
    return [
        probabilities[start : start + w.numel()].reshape(w.shape) for start, w in zip(starts[:-1], windows, strict=True)
    ]


def upsample_windows(
    windows: list[MaskWindow],
    lowres_size: tuple[int, int],
    size: tuple[int, int],
    threshold: float,
    *,
    probabilities: bool,
) -> list[RunMask]:
    """For each window, the full-resolution mask of a (`lowres_size`) mask upsampled to `size`
    (height, width) and thresholded, from the window alone.  The values are probabilities (sigmoid
    of the logits) when `probabilities`."""
    logits = [window.logits() for window in windows]
    values = _sigmoid(logits) if probabilities else [v.numpy() for v in logits]
    return [_upsample(v, window, lowres_size, size, threshold) for v, window in zip(values, windows, strict=True)]


def _upsample(
    values: np.ndarray, window: MaskWindow, lowres_size: tuple[int, int], size: tuple[int, int], threshold: float
) -> RunMask:
    """The thresholded upsampled mask as runs, computed per column and per band of output rows
    that read the same two low-res rows, not per pixel.

    torch interpolates along the width first (`along`: exact, and only the window's rows wide),
    then along the height: an output pixel of the band between low-res rows k and k+1 is
    fma(along[k], 1 - w, along[k+1] * w) with w growing down the band.  In exact arithmetic that
    is monotone in w, so in each column the band's foreground is a run from its top or to its
    bottom, split where the line crosses the threshold.  Float rounding matters only within
    `margin` of the threshold: those few pixels (the object's outline) are computed exactly as
    torch does and place the split.  Should rounding ever make one band of one column
    non-monotone there, the window is computed pixel by pixel instead.
    """
    height, width = size
    rows = _span(_cached_axis(lowres_size[0], height), window.top, values.shape[0])
    cols = _span(_cached_axis(lowres_size[1], width), window.left, values.shape[1])
    if rows is None or cols is None:
        return RunMask.of_runs(size, _NO_RUNS, _NO_RUNS)
    (y, row_axis), (x, col_axis) = rows, cols
    if threshold == -math.inf:  # every pixel passes (a mask probability threshold of 0 on logits)
        return RunMask.from_crop(np.ones((len(row_axis.first), len(col_axis.first)), bool), (x, y), size)
    bands = int(row_axis.first[-1] - row_axis.first[0]) + 1  # at most; exactly when upsampling
    pixels, band_cells = len(row_axis.first) * len(col_axis.first), bands * len(col_axis.first)
    if PIXEL_NS * pixels < BAND_CELL_NS * band_cells + BANDS_FIXED_NS:
        return _raster(values, row_axis, col_axis, (x, y), size, threshold)
    band_starts = np.flatnonzero(np.diff(row_axis.first, prepend=-1))
    by_bands = _by_bands(values, row_axis, col_axis, band_starts, (x, y), size, threshold)
    return by_bands if by_bands is not None else _raster(values, row_axis, col_axis, (x, y), size, threshold)


def _by_bands(
    values: np.ndarray,
    row_axis: _Axis,
    col_axis: _Axis,
    band_starts: np.ndarray,
    origin: tuple[int, int],
    size: tuple[int, int],
    threshold: float,
) -> RunMask | None:
    """The window's mask from one split per (column, band); None where rounding makes a band of a
    column non-monotone, for the caller to compute pixel by pixel."""
    t = np.float32(threshold)
    margin = np.float32(UNCERTAIN * max(1.0, abs(threshold), float(np.abs(values).max(initial=0.0))))
    band_lengths = np.diff(np.append(band_starts, len(row_axis.first)))
    upper, lower = row_axis.first[band_starts], row_axis.second[band_starts]
    # A (column, band) cell whose four low-res corners are all clearly above (below) the threshold
    # is foreground (background) from top to bottom: interpolation only mixes them.  Only the
    # cells on the object's outline need the band's split.
    corners = np.stack([values[upper][:, :-1], values[upper][:, 1:], values[lower][:, :-1], values[lower][:, 1:]])
    if values.shape[1] == 1:
        corners = np.stack([values[upper], values[lower]])
    low_corner, high_corner = corners.min(axis=0), corners.max(axis=0)  # (bands, low-res columns)
    pair = np.minimum(col_axis.first, values.shape[1] - 2) if values.shape[1] > 1 else np.zeros_like(col_axis.first)
    inside = (low_corner > t + margin)[:, pair].T  # (columns, bands): RLE order
    outline = ~inside & ~(high_corner < t - margin)[:, pair].T
    begin = np.zeros(inside.size, dtype=np.int64)
    end = np.where(inside, band_lengths, 0).ravel()
    # Flat indices: on noisy masks most cells are on the outline, and 2-d index tuples cost ~5x more.
    cells = np.flatnonzero(outline)
    if len(cells):
        column, band = np.divmod(cells, len(band_starts))
        split = _splits(values, row_axis, col_axis, band_starts, band_lengths, (column, band), t, margin)
        if split is None:
            return None
        before, after, at = split
        begin[cells] = np.where(before, 0, at)
        end[cells] = np.where(after, band_lengths[band], at)
    keep = end > begin
    x, y = origin
    base = ((x + np.arange(len(col_axis.first))) * size[0])[:, None] + (y + band_starts)
    base = base.ravel()[keep]
    return RunMask.of_runs(size, base + begin[keep], base + end[keep])


def _splits(
    values: np.ndarray,
    row_axis: _Axis,
    col_axis: _Axis,
    band_starts: np.ndarray,
    band_lengths: np.ndarray,
    cells: tuple[np.ndarray, np.ndarray],
    t: np.float32,
    margin: np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For the (column, band) `cells`: the state of the band's rows above its split, below it, and
    the split (rows from the band's top); None if rounding makes a cell non-monotone."""
    column, band = cells
    upper, lower = row_axis.first[band_starts[band]], row_axis.second[band_starts[band]]
    first_col, second_col = col_axis.first[column], col_axis.second[column]
    weight_first, weight_second = col_axis.weight_first[column], col_axis.weight_second[column]
    # Flat indices into the window: ~3x faster than (row, column) pairs.
    lowres, upper, lower = values.ravel(), upper * values.shape[1], lower * values.shape[1]
    top = _ARITHMETIC.combine(lowres[upper + first_col], weight_first, lowres[upper + second_col], weight_second)
    bottom = _ARITHMETIC.combine(lowres[lower + first_col], weight_first, lowres[lower + second_col], weight_second)
    # Settled where the column's two values are clearly on one side: the band is all one state.
    before = np.minimum(top, bottom) > t + margin
    after = before.copy()
    split = np.zeros(len(column), dtype=np.int64)
    cross = np.flatnonzero(~before & (np.maximum(top, bottom) >= t - margin))
    if not len(cross):
        return before, after, split
    top, bottom, band = top[cross], bottom[cross], band[cross]
    slope = bottom - top
    flat, near = slope == 0, np.abs(top - t) <= margin
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = (t - margin - top) / slope, (t + margin - top) / slope
    # The band's rows with weight in [low_w, high_w] are uncertain: the first found by
    # `_rows_below`, the last by stepping from it (the range is a row or two at most, but where a
    # flat column sits on the threshold).
    low_w = np.where(flat, np.where(near, -np.inf, np.inf), np.minimum(a, b))
    high_w = np.where(flat, np.where(near, np.inf, -np.inf), np.maximum(a, b))
    start, length = band_starts[band], band_lengths[band]
    first = _rows_below(row_axis, band_starts, band_lengths, band, np.clip(low_w, -1, 2))
    last = first.copy()
    for _ in range(3):
        last += (last < length) & (row_axis.weight_second[start + np.minimum(last, length - 1)] <= high_w)
    more = np.flatnonzero((last < length) & (row_axis.weight_second[start + np.minimum(last, length - 1)] <= high_w))
    last[more] = _searched(row_axis, band_starts, band_lengths, band[more], np.clip(high_w[more], -1, 2), "right")
    above = (slope < 0) | (flat & (top > t))  # the state of the rows above the uncertain ones
    below = (slope > 0) | (flat & (top > t))  # and below them
    uncertain = last - first
    if uncertain.any():
        # The uncertain rows, computed as torch computes them, must read `above` then `below`.
        cell = np.repeat(np.arange(len(cross)), uncertain)
        offset = np.arange(len(cell)) - np.repeat(np.cumsum(uncertain) - uncertain, uncertain)
        row = start[cell] + first[cell] + offset
        weights = row_axis.weight_first[row], row_axis.weight_second[row]
        exact = _ARITHMETIC.combine(top[cell], weights[0], bottom[cell], weights[1]) > t
        settled_above = np.bincount(cell, weights=exact == above[cell], minlength=len(cross)).astype(np.int64)
        if (exact != np.where(offset < settled_above[cell], above[cell], below[cell])).any():
            return None
        first = first + settled_above
    before[cross], after[cross], split[cross] = above, below, first
    return before, after, split


def _rows_below(
    row_axis: _Axis, band_starts: np.ndarray, band_lengths: np.ndarray, band: np.ndarray, bound: np.ndarray
) -> np.ndarray:
    """How many rows of each `band` weigh less than its `bound` (in [-1, 2]).  A band's weights
    grow by `step` a row but where torch clamps the first rows to 0, so counting back from the
    band's last row is right but where rounding puts a row on the other side; the rows on either
    side confirm it, and the rest are searched for (which costs ~3x more)."""
    weights, start, length = row_axis.weight_second, band_starts[band], band_lengths[band]
    last_row = start + length - 1
    count = np.clip(np.ceil(length - 1 - (weights[last_row] - bound) / row_axis.step), 0, length).astype(np.int64)
    wrong = np.flatnonzero(
        ((count > 0) & (weights[np.maximum(start + count - 1, start)] >= bound))
        | ((count < length) & (weights[np.minimum(start + count, last_row)] < bound))
    )
    count[wrong] = _searched(row_axis, band_starts, band_lengths, band[wrong], bound[wrong], "left")
    return count


def _searched(
    row_axis: _Axis,
    band_starts: np.ndarray,
    band_lengths: np.ndarray,
    band: np.ndarray,
    bound: np.ndarray,
    side: Literal["left", "right"],
) -> np.ndarray:
    """How many rows of each `band` weigh less than its `bound` (in [-1, 2]; at most `bound` when
    `side` is "right"), by one search over all bands: band k's weights shifted to [4k, 4k + 1]."""
    if not len(band):
        return np.zeros(0, dtype=np.int64)
    keys = 4.0 * np.repeat(np.arange(len(band_starts)), band_lengths) + row_axis.weight_second
    return np.searchsorted(keys, 4.0 * band + bound, side=side) - band_starts[band]


_NO_RUNS = np.zeros(0, dtype=np.int64)
# Values this close to the threshold (relative to the magnitudes involved) are computed exactly.
# Between the linear value a band's split is placed by and torch's float32 result lie at most a
# few roundings: 1 - w, b * w, the fused add (each <= 2^-24 relative) and the float32 split
# arithmetic, ~4e-7 of the magnitudes in all, five times less than this.
UNCERTAIN = 2e-6
# What computing a window costs on one core (fitted over single objects of every size on 1 and
# 12 MP photos): ~10 ns per output pixel pixel by pixel; band by band ~14 ns per (column, band)
# and ~180 us more to start.  Bands pay off where each spans many output rows: large objects on
# large photos (a 1000x1000 px object on a 12 MP photo: 5.6 ms pixel by pixel, 1.7 ms by bands).
PIXEL_NS, BAND_CELL_NS, BANDS_FIXED_NS = 10, 14, 180_000


def _raster(
    values: np.ndarray,
    row_axis: _Axis,
    col_axis: _Axis,
    origin: tuple[int, int],
    size: tuple[int, int],
    threshold: float,
) -> RunMask:
    """Every output pixel of the window computed as torch computes it."""
    return RunMask.from_columns(
        np.float32(threshold) < _interpolate(values, row_axis, col_axis, _ARITHMETIC).T, origin, size
    )


def _span(axis: _Axis, start: int, length: int) -> tuple[int, _Axis] | None:
    """(first output position, its axis relative to the window) for the outputs whose two
    sources both lie in [start, start + length); None when there are none."""
    begin = int(np.searchsorted(axis.first, start, side="left"))
    end = int(np.searchsorted(axis.second, start + length, side="left"))
    if end <= begin:
        return None
    part = slice(begin, end)
    return begin, _Axis(
        axis.first[part] - start,
        axis.second[part] - start,
        axis.weight_first[part],
        axis.weight_second[part],
        axis.step,
    )
