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

import numpy as np
import torch
import torch.nn.functional as F

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
    return _Axis(first, second, np.float32(1) - weight, weight)


def _interpolate(values: np.ndarray, rows: _Axis, cols: _Axis, arithmetic: _Arithmetic) -> np.ndarray:
    """`values` at the output positions `rows` x `cols` (indices into `values`), as torch's kernel
    does it: along the width first, then those rows along the height."""
    along_width = arithmetic.combine(
        values[:, cols.first], cols.weight_first, values[:, cols.second], cols.weight_second
    )
    return arithmetic.combine(
        along_width[rows.first], rows.weight_first[:, None], along_width[rows.second], rows.weight_second[:, None]
    )


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
) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """For each window, (mask, (x, y)): the thresholded full-resolution pixels of a (`lowres_size`)
    mask upsampled to `size` (height, width) whose sources lie in the window, and where that crop
    sits.  The values are probabilities (sigmoid of the logits) when `probabilities`."""
    logits = [window.logits() for window in windows]
    values = _sigmoid(logits) if probabilities else [v.numpy() for v in logits]
    return [_upsample(v, window, lowres_size, size, threshold) for v, window in zip(values, windows, strict=True)]


def _upsample(
    values: np.ndarray, window: MaskWindow, lowres_size: tuple[int, int], size: tuple[int, int], threshold: float
) -> tuple[np.ndarray, tuple[int, int]]:
    rows = _span(_cached_axis(lowres_size[0], size[0]), window.top, values.shape[0])
    cols = _span(_cached_axis(lowres_size[1], size[1]), window.left, values.shape[1])
    if rows is None or cols is None:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    (y, row_axis), (x, col_axis) = rows, cols
    return _interpolate(values, row_axis, col_axis, _ARITHMETIC) > np.float32(threshold), (x, y)


def _span(axis: _Axis, start: int, length: int) -> tuple[int, _Axis] | None:
    """(first output position, its axis relative to the window) for the outputs whose two
    sources both lie in [start, start + length); None when there are none."""
    begin = int(np.searchsorted(axis.first, start, side="left"))
    end = int(np.searchsorted(axis.second, start + length, side="left"))
    if end <= begin:
        return None
    part = slice(begin, end)
    return begin, _Axis(
        axis.first[part] - start, axis.second[part] - start, axis.weight_first[part], axis.weight_second[part]
    )
