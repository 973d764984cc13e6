"""Wire mask formats round-trip (pycocotools RLE, PNG, COCO polygons)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sdk.masks import decode_mask, encode_mask, in_mask_order, rle_of


@pytest.fixture
def mask():
    m = np.zeros((40, 60), dtype=bool)
    m[5:20, 10:30] = True
    m[25:35, 40:55] = True
    return m


@pytest.mark.parametrize("fmt", ["rle", "png"])
def test_lossless_formats_round_trip(mask, fmt):
    encoded = encode_mask(mask, fmt)
    assert encoded.size == (40, 60)
    np.testing.assert_array_equal(decode_mask(encoded), mask)


def test_polygons_trace_each_part(mask):
    encoded = encode_mask(mask, "polygon")
    assert len(encoded.polygons) == 2
    decoded = decode_mask(encoded)
    # COCO rasterises the outline; for rectangles it matches up to the last row/column.
    assert (decoded & mask).sum() / mask.sum() > 0.85 and (decoded & ~mask).sum() == 0


def test_polygons_without_opencv_say_which_extra_to_install():
    """The laptop install has no OpenCV: RLE and PNG work, polygons say how to get them."""
    script = """
import sys
sys.modules["cv2"] = None  # as if OpenCV were not installed
import numpy as np
from sdk.masks import decode_mask, encode_mask
mask = np.eye(9, dtype=bool)
assert (decode_mask(encode_mask(mask, "rle")) == mask).all() and (decode_mask(encode_mask(mask, "png")) == mask).all()
try:
    encode_mask(mask, "polygon")
except ImportError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "polygon masks are traced with OpenCV: pip install 'samfleet[polygons]'"


def test_empty_mask_round_trips_in_every_format():
    empty = np.zeros((8, 9), dtype=bool)
    for fmt in ("rle", "png", "polygon"):
        np.testing.assert_array_equal(decode_mask(encode_mask(empty, fmt)), empty)


def test_rle_of_png_equals_rle(mask):
    assert rle_of(encode_mask(mask, "png")) == rle_of(encode_mask(mask, "rle"))


def test_a_crop_encodes_as_the_whole_image_it_stands_for():
    """The service encodes each instance from the crop around it: every format must equal the
    encoding of the whole image, with crops on every border, full-height, empty and full ones
    (RLE compared with pycocotools' own encoding of the whole image)."""
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(0)
    for trial in range(400):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        rows, cols = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
        y, x = int(rng.integers(0, height - rows + 1)), int(rng.integers(0, width - cols + 1))
        crop = rng.random((rows, cols)) < rng.random()
        whole = np.zeros((height, width), dtype=bool)
        whole[y:y + rows, x:x + cols] = crop
        rle = encode_mask(crop, "rle", origin=(x, y), size=(height, width))
        assert rle.counts == coco_mask.encode(np.asfortranarray(whole.astype(np.uint8)))["counts"].decode()
        if trial % 8 == 0:
            for fmt in ("png", "polygon"):
                assert encode_mask(crop, fmt, origin=(x, y), size=(height, width)) == encode_mask(whole, fmt)

@pytest.mark.parametrize("fmt", ["rle", "png"])  # pycocotools decodes column-major, PNG row-major
def test_in_mask_order_selects_the_same_pixels(mask, fmt):
    decoded = decode_mask(encode_mask(mask, fmt))
    for channels in ((), (3,)):
        target = np.arange(mask.size * max(channels, default=1)).reshape(mask.shape + channels)
        expected = target.copy()
        expected[mask] = -1
        view, order = in_mask_order(target, decoded)
        assert sorted(view[order].ravel()) == sorted(target[mask].ravel())
        view[order] = -1
        np.testing.assert_array_equal(target, expected)


def test_run_masks_round_trip_through_their_raster_and_box():
    """RunMask (the service's mask, runs down the columns) gives back the object's raster and box,
    also when runs join across columns (crops of the full height)."""
    from sdk.masks import RunMask

    rng = np.random.default_rng(1)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 30, 2))
        rows, cols = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
        y, x = int(rng.integers(0, height - rows + 1)), int(rng.integers(0, width - cols + 1))
        whole = np.zeros((height, width), dtype=bool)
        whole[y:y + rows, x:x + cols] = rng.random((rows, cols)) < rng.random()
        runs = RunMask.from_crop(whole[y:y + rows, x:x + cols], (x, y), (height, width))
        assert np.array_equal(decode_mask(runs.rle()), whole)
        ys, xs = np.nonzero(whole)
        if not len(xs):
            assert runs.box() is None and runs.crop()[0].size == 0
            continue
        crop, (cx, cy) = runs.crop()
        x0, y0, x1, y1 = runs.box()
        assert (cx, cy) == (x0, y0) and crop.shape == (y1 - y0, x1 - x0)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        pasted = np.zeros_like(whole)
        pasted[y0:y1, x0:x1] = crop
        assert np.array_equal(pasted, whole)
