"""`sdk.results` without a service: masks are decoded when read and never kept, and the label
image keeps its meaning (best score wins, ids 1..N in instance order, uint16 past 255 ids)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdk.masks import encode_mask
from sdk.results import InstanceResult, Result
from sdk.schema import MaskFormat


def result_of(masks: list[np.ndarray], labels: list[str] | None = None, fmt: MaskFormat = "rle") -> Result:
    """A Result whose instances are `masks` in order, scores falling (as the service sorts them)."""
    height, width = masks[0].shape
    labels = labels or ["thing"] * len(masks)
    instances = [InstanceResult(mask=encode_mask(m, fmt), box=(0, 0, width, height), score=1 - k / (len(masks) + 1),
                                label=label) for k, (m, label) in enumerate(zip(masks, labels))]
    return Result(width=width, height=height, instances=instances, model="test")


def first_covering(masks: list[np.ndarray]) -> np.ndarray:
    """1-based index of the first (best-scoring) mask covering each pixel, 0 where none does."""
    stacked = np.stack(masks)
    return np.where(stacked.any(axis=0), stacked.argmax(axis=0) + 1, 0)


def overlapping_rectangles() -> list[np.ndarray]:
    masks = [np.zeros((12, 16), dtype=bool) for _ in range(3)]
    masks[0][2:8, 2:10] = True
    masks[1][5:11, 6:14] = True  # overlaps the first and the third
    masks[2][0:6, 8:16] = True
    return masks


def test_array_is_decoded_on_each_read_and_not_kept():
    masks = overlapping_rectangles()
    inst = result_of(masks).instances[1]
    first, second = inst.array, inst.array
    np.testing.assert_array_equal(first, masks[1])
    np.testing.assert_array_equal(second, masks[1])
    assert first is not second
    assert not [name for name, value in vars(inst).items() if isinstance(value, np.ndarray)]


def test_masks_stack_every_instance_in_order():
    masks = overlapping_rectangles()
    stacked = result_of(masks).masks
    assert stacked.dtype == bool
    np.testing.assert_array_equal(stacked, np.stack(masks))
    empty = Result(width=16, height=12, instances=[], model="test")
    assert empty.masks.shape == (0, 12, 16) and empty.masks.dtype == bool


@pytest.mark.parametrize("fmt", ["rle", "png"])  # column-major and row-major decoded masks
def test_label_image_best_score_wins_where_masks_overlap(fmt):
    masks = overlapping_rectangles()
    result = result_of(masks, labels=["cat", "dog", "cat"], fmt=fmt)
    ids = result.label_image()
    assert ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, first_covering(masks))
    categories = np.array([0, 1, 2, 1])[first_covering(masks)]  # cat = 1, dog = 2 (order of first appearance)
    np.testing.assert_array_equal(result.label_image("category"), categories)
    np.testing.assert_array_equal(result.label_image("category", categories=["dog", "cat"]), np.array([0, 2, 1, 2])[first_covering(masks)])


def test_label_image_is_uint16_past_255_instances():
    rng = np.random.default_rng(0)
    masks = []
    for k in range(300):  # a pixel of its own (first 300 pixels), overlaps with the others in the rest
        mask = rng.random((20, 30)) < 0.05
        mask.flat[:300] = False
        mask.flat[k] = True
        masks.append(mask)
    ids = result_of(masks).label_image()
    assert ids.dtype == np.uint16 and ids.max() == 300
    np.testing.assert_array_equal(ids, first_covering(masks))
    assert result_of(masks[:255]).label_image().dtype == np.uint8


def test_save_png_writes_the_label_image(tmp_path):
    result = result_of(overlapping_rectangles())
    np.testing.assert_array_equal(np.asarray(Image.open(result.save_png(tmp_path / "ids.png"))), result.label_image())
