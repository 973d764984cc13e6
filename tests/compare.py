"""How the tests compare model outputs: every tolerance is named here, with the reason for it.

Three kinds of comparison, from strictest to loosest:

- EXACT (`assert_same_answer`): the same bytes.  Only for things that are computed once and then
  copied, encoded or transported (a result and its JSON, a mask and its PNG, a stream and the SDK's
  iterator over it), or computed alone from the same inputs by the same code.  Never for two model
  runs that may have shared a batch with different neighbours.
- BATCH (`assert_results_match`, the default for two served results of the same request): batched
  inference on CPU reorders float32 sums, so the same image can differ in the last bits depending
  on which other images shared its batch (README: "batch composition").  Measured: scores by
  ~1e-7, boxes by ~4e-6 px, a mask by a boundary pixel.  The tolerances leave a wide margin above
  that and stay far below anything a real difference moves.
- REFERENCE (`assert_matches_reference`): a served result against the tiny model called in-process
  through transformers alone (tests/reference.py).  Same model, different code around it (the
  service's post-processing crops and upsamples mask windows, serving/upsampling.py), so scores
  are allowed 1e-4 and a mask 0.1 % of its pixels (bilinear upsampling flips boundary pixels).

Anything beyond these is a real difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdk import decode_mask


@dataclass(frozen=True)
class Tolerance:
    score: float  # absolute, on scores in [0, 1]
    box: float  # absolute, in pixels, per coordinate
    mask: float  # fraction of the image's pixels that may differ
    why: str


BATCH = Tolerance(
    score=1e-5, box=0.05, mask=1e-3,
    why="the same request served twice: batch composition changes float32 summation order (~1e-7 on scores)",
)
REFERENCE = Tolerance(
    score=1e-4, box=0.05, mask=1e-3,
    why="served vs transformers in-process: the service's mask windows are upsampled on their own",
)
# Raw model outputs (logits) of one batch vs the same items one at a time, in-process.
LOGITS_ATOL = 1e-5
# Low-res mask logits after the service's windowing, batched vs alone (a window's edge moves only
# if a value sits within this of the support margin).
WINDOW_LOGITS_ATOL = 1e-4

# The service's post-processing vs transformers' on the same raw outputs, in-process (no model run
# twice): masks bit for bit; a score is the same float32 product computed in another order (a few
# ulps), a box the same normalised coordinates scaled to pixels in float32 (ulps of ~1000 px).
POSTPROCESS_SCORE_ATOL = 1e-6
POSTPROCESS_BOX_ATOL = 1e-3


def mask_mismatch(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels where two boolean masks of one image differ."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a != b).mean())


def assert_masks_close(a: np.ndarray, b: np.ndarray, tol: Tolerance = BATCH, what: str = "mask") -> None:
    mismatch = mask_mismatch(a, b)
    assert mismatch <= tol.mask, f"{what}: {mismatch:.3%} of pixels differ (allowed {tol.mask:.3%}: {tol.why})"


def assert_results_match(got, expected, tol: Tolerance = BATCH) -> None:
    """Two `sdk.Result`s of the same request: same instances within `tol`, each paired with the
    instance of its label nearest in box and score (near-tied scores may swap places; the tiny
    model's instances of two prompts can have near-identical boxes)."""
    assert (got.width, got.height, got.model) == (expected.width, expected.height, expected.model)
    assert sorted(i.label for i in got.instances) == sorted(i.label for i in expected.instances)
    for inst in got.instances:
        twin = min((e for e in expected.instances if e.label == inst.label),
                   key=lambda e: np.abs(np.array(e.box) - np.array(inst.box)).sum() + abs(e.score - inst.score))
        np.testing.assert_allclose(inst.score, twin.score, atol=tol.score, err_msg=tol.why)
        np.testing.assert_allclose(inst.box, twin.box, atol=tol.box, err_msg=tol.why)
        assert_masks_close(decode_mask(inst.mask), decode_mask(twin.mask), tol)


def assert_matches_reference(served, expected: dict, tol: Tolerance = REFERENCE, *, pair_by_box: bool = True) -> None:
    """A served `sdk.Result` against tests/reference.py's output (`scores`, `masks`, and `boxes`
    when `pair_by_box`): same number of instances, each within `tol` of its twin.  Point prompts
    (pair_by_box=False) give their masks in a fixed order, compared in that order."""
    assert len(served.instances) == len(expected["scores"]), (len(served.instances), len(expected["scores"]))
    for k, inst in enumerate(served.instances):
        if pair_by_box:
            j = int(np.abs(expected["boxes"] - np.array(inst.box)).sum(axis=1).argmin())
            np.testing.assert_allclose(inst.box, expected["boxes"][j], atol=tol.box, err_msg=tol.why)
        else:
            j = k
        np.testing.assert_allclose(inst.score, expected["scores"][j], atol=tol.score, err_msg=tol.why)
        assert_masks_close(decode_mask(inst.mask), expected["masks"][j], tol, what=f"instance {k}")


def assert_same_answer(got, expected, why: str) -> None:
    """EXACT: equal as data (pydantic models, lists, arrays).  `why` says why exactness holds."""
    if isinstance(got, np.ndarray) or isinstance(expected, np.ndarray):
        assert np.array_equal(got, expected), why
    else:
        assert got == expected, why
