"""Compare two results of the same request.  Batched inference on CPU reorders float32 sums, so
the same image can differ in the last bits depending on which other images shared its batch:
scores by ~1e-7, a mask by a boundary pixel.  Anything beyond that is a real difference."""

from __future__ import annotations

import numpy as np

from sdk import decode_mask

SCORE_ATOL = 1e-5
BOX_ATOL = 0.05
MAX_MASK_MISMATCH = 1e-3  # fraction of pixels


def assert_results_match(got, expected) -> None:
    assert (got.width, got.height, got.model) == (expected.width, expected.height, expected.model)
    assert len(got.instances) == len(expected.instances)
    expected_boxes = np.array([inst.box for inst in expected.instances]).reshape(-1, 4)
    for inst in got.instances:
        # Pair by box: near-tied scores may swap places, boxes are distinct.
        twin = expected.instances[int(np.abs(expected_boxes - np.array(inst.box)).sum(axis=1).argmin())]
        assert inst.label == twin.label
        np.testing.assert_allclose(inst.score, twin.score, atol=SCORE_ATOL)
        np.testing.assert_allclose(inst.box, twin.box, atol=BOX_ATOL)
        assert (decode_mask(inst.mask) != decode_mask(twin.mask)).mean() <= MAX_MASK_MISMATCH
