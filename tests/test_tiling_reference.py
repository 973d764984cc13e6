"""High-resolution tiling and reference-image exemplars.

Logic: synthetic images whose objects are known, segmented by `ColorBlobSegmenter` (a test
double with the predictor's interface) through the service's own planning and merging.
Wiring: the same requests served with the tiny SAM3 equal the same job run in-process.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from transformers import Sam3Processor

from color_blob_segmenter import COLORS, ColorBlobSegmenter
from compare import assert_results_match
from sdk import ValidationError
from sdk.schema import Limits, SegmentParams, Tiling
from serving.postprocess import Found, segment_response
from serving.predictor import model_image
from serving.segmentation import EXEMPLAR_LABEL, plan_segment
from serving.errors import ServiceError
from serving.tiling import Window, plan, window_count
from test_bad_input import assert_error, b64, png, post_json
from test_prompts import only

BACKGROUND = 128
TILING = Tiling(tile_size=1008, overlap=200)


@pytest.fixture(scope="module")
def processor(tiny_model):
    return Sam3Processor.from_pretrained(tiny_model)


def paint(image: np.ndarray, box: tuple[int, int, int, int], color: str) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = COLORS[color]
    return box


def run(image, params: SegmentParams, processor, reference_image=None) -> list[Found]:
    """One /v1/segment request run in-process on the test double."""
    segmenter = ColorBlobSegmenter()
    job = plan_segment(image, params, Limits(), segmenter.prepare, reference_image)
    return job.finish(segmenter.segment(job.items), processor)


def iou(found: Found, box: tuple[int, int, int, int]) -> float:
    """Mask IoU of an instance with a filled rectangle, computed over their joint extent only
    (whole-image masks of a 6000x4000 picture would cost 24 MB each)."""
    crop, (x, y) = found.mask.crop()
    h, w = crop.shape
    x0, y0 = min(x, box[0]), min(y, box[1])
    x1, y1 = max(x + w, box[2]), max(y + h, box[3])
    ours = np.zeros((y1 - y0, x1 - x0), bool)
    ours[y - y0:y - y0 + h, x - x0:x - x0 + w] = crop
    truth = np.zeros_like(ours)
    truth[box[1] - y0:box[3] - y0, box[0] - x0:box[2] - x0] = True
    return np.count_nonzero(ours & truth) / np.count_nonzero(ours | truth)


def matches(found: list[Found], truth: list[tuple[int, int, int, int]], min_iou: float) -> list[int]:
    """For each true object, how many instances cover it with IoU >= min_iou."""
    return [sum(iou(f, box) >= min_iou for f in found) for box in truth]


def test_tiles_cover_the_image_with_at_least_the_overlap_asked():
    windows = plan(6000, 4000, TILING)
    whole, tiles = windows[-1], windows[:-1]
    assert whole == Window(0, 0, 6000, 4000)
    assert len(tiles) == 8 * 5
    assert all(t.size == (1008, 1008) for t in tiles)
    covered = np.zeros((4000, 6000), bool)
    for t in tiles:
        covered[t.y0:t.y1, t.x0:t.x1] = True
    assert covered.all()
    xs = sorted({t.x0 for t in tiles})
    assert min(a + 1008 - b for a, b in zip(xs, xs[1:])) >= TILING.overlap
    assert plan(900, 700, TILING) == [Window(0, 0, 900, 700)], "an image within one tile is not tiled"
    assert plan(3000, 900, TILING.model_copy(update={"full_image": False}))[-1] != Window(0, 0, 3000, 900)


@pytest.mark.parametrize("full_image", [True, False])
def test_the_window_count_is_the_plans_length_without_making_it(full_image):
    rng = np.random.default_rng(7)
    for _ in range(300):
        tile = int(rng.integers(64, 1200))
        tiling = Tiling(tile_size=tile, overlap=int(rng.integers(0, tile)), full_image=full_image)
        width, height = (int(n) for n in rng.integers(1, 5000, size=2))
        assert window_count(width, height, tiling) == len(plan(width, height, tiling)), (width, height, tiling)


def test_too_many_tiles_is_refused_before_any_tile_is_planned(processor):
    """The attack the limit exists for: a small PNG of 6000x4000 in tiles of 64 overlapping by 63
    is 23,373,970 windows; planning them first took 39 s of ingress time.  The refusal takes
    microseconds: the bound is far above that on a loaded machine and far below the old cost."""
    image = np.broadcast_to(np.zeros(3, np.uint8), (4000, 6000, 3))  # the shape alone, no 72 MB
    params = SegmentParams(prompt="cat", tiling=Tiling(tile_size=64, overlap=63))
    assert window_count(6000, 4000, params.tiling) == 23_373_970
    started = time.perf_counter()
    with pytest.raises(ServiceError, match="makes 23373970 tiles; the limit is 64") as refused:
        plan_segment(image, params, Limits(), lambda pixels: model_image(pixels, processor))
    assert time.perf_counter() - started < 0.1
    assert (refused.value.status, refused.value.code, refused.value.field) == (422, "too_many_tiles", "tiling")


@pytest.fixture(scope="module")
def large_scene():
    """6000x4000: 40 small red squares (14 px: ~2x3 pixels once SAM3-sized), squares and a bar
    cut by tile borders, a red area larger than a tile, and blue squares that are not red."""
    rng = np.random.default_rng(3)
    image = np.full((4000, 6000, 3), BACKGROUND, np.uint8)
    tiles = plan(6000, 4000, TILING)[:-1]
    first, second = tiles[0], tiles[1]  # side by side, sharing a 200+ px strip
    big = paint(image, (3000, 1500, 5400, 3300), "red")
    cut = [
        paint(image, (first.x1 - 7, 500, first.x1 + 7, 514), "red"),  # across tile 0's right border
        paint(image, (second.x0 - 250, 300, first.x1 + 150, 330), "red"),  # longer than the shared strip
    ]
    small = []
    while len(small) < 40:
        x, y = int(rng.integers(50, 2900)), int(rng.integers(1000, 3950))
        if all(abs(x - sx) > 60 or abs(y - sy) > 60 for sx, sy, _, _ in small):
            small.append(paint(image, (x, y, x + 14, y + 14), "red"))
    for x in range(3100, 5200, 400):
        paint(image, (x, 1000, x + 14, 1014), "blue")
    return image, small, cut, big


def test_tiling_finds_the_small_objects_the_whole_image_pass_misses(large_scene, processor):
    image, small, cut, big = large_scene
    whole = run(image, SegmentParams(prompt="red"), processor)
    tiled = run(image, SegmentParams(prompt="red", tiling=TILING), processor)
    recall_whole = np.mean([n > 0 for n in matches(whole, small, 0.5)])
    recall_tiled = np.mean([n > 0 for n in matches(tiled, small, 0.5)])
    print(f"small-object recall: whole image {recall_whole:.2f}, tiled {recall_tiled:.2f}")
    assert recall_whole <= 0.1
    assert recall_tiled == 1.0


def test_objects_cut_by_tile_borders_are_merged_not_duplicated(large_scene, processor):
    image, small, cut, big = large_scene
    tiled = run(image, SegmentParams(prompt="red", tiling=TILING), processor)
    assert matches(tiled, cut, 0.9) == [1, 1], "each cut object is one instance, whole again"
    assert matches(tiled, [big], 0.95) == [1], "an object larger than a tile is one instance"
    assert matches(tiled, small, 0.8) == [1] * len(small)
    assert len(tiled) == len(small) + len(cut) + 1, "no duplicates, nothing that is not red"
    assert {f.label for f in tiled} == {"red"}


def test_neighbours_the_whole_image_pass_sees_as_one_blob_stay_two(processor):
    """Two red squares 1 px apart where tiles meet, the pixel column between them dark red: each
    tile sees them apart (one whole, a sliver of the other); the whole-image pass, seeing the photo
    shrunk 2x, sees one blob over both (half the seam and half red is red).  The tiles, at full
    resolution, are right: two instances, each its own square.  The merge used to join the blob
    to the whole square in each of two tiles, and so the two squares into one instance."""
    image = np.full((1000, 2000, 3), BACKGROUND, np.uint8)
    first, _, last = plan(2000, 1000, TILING)[:-1]  # at x = 0, 496 and 992
    assert (first.x1, last.x0) == (1008, 992)
    squares = [paint(image, (940, 300, 1000, 360), "red"), paint(image, (1001, 300, 1061, 360), "red")]
    image[300:360, 1000] = (170, 30, 30)  # 50 from red: not red; averaged with red, red
    whole = run(image, SegmentParams(prompt="red"), processor)
    assert len(whole) == 1 and iou(whole[0], (940, 300, 1061, 360)) > 0.9, "one blob over both"
    tiled = run(image, SegmentParams(prompt="red", tiling=TILING), processor)
    assert matches(tiled, squares, 0.95) == [1, 1]
    assert len(tiled) == 2


def test_without_the_whole_image_pass_the_tiles_alone_assemble_large_objects(large_scene, processor):
    image, small, cut, big = large_scene
    tiles_only = run(image, SegmentParams(prompt="red", tiling=TILING.model_copy(update={"full_image": False})), processor)
    assert matches(tiles_only, [big] + cut, 0.95) == [1, 1, 1]
    assert len(tiles_only) == len(small) + len(cut) + 1


def test_negative_prompts_apply_within_tiles(large_scene, processor):
    image, small, cut, big = large_scene
    # Every red object is also found as "red" by the excluded query: all are suppressed.
    assert run(image, SegmentParams(prompt="red", negative_prompts=["red"], tiling=TILING), processor) == []
    kept = run(image, SegmentParams(prompt="red", negative_prompts=["blue"], tiling=TILING), processor)
    assert len(kept) == len(small) + len(cut) + 1


def reference_scene():
    target = np.full((600, 800, 3), BACKGROUND, np.uint8)
    reds = [paint(target, box, "red") for box in [(50, 60, 110, 120), (400, 300, 450, 350), (700, 500, 780, 580)]]
    for box in [(200, 100, 260, 160), (600, 80, 650, 130)]:
        paint(target, box, "blue")
    other = np.full((200, 300, 3), 255, np.uint8)  # a different picture: white, one red square
    example = paint(other, (100, 60, 150, 110), "red")
    return target, reds, other, example


def test_reference_exemplar_finds_what_the_other_image_shows(processor):
    target, reds, other, example = reference_scene()
    params = SegmentParams(reference_exemplars=[{"box": dict(zip(["x1", "y1", "x2", "y2"], example))}])
    found = run(target, params, processor, reference_image=other)
    assert matches(found, reds, 0.9) == [1, 1, 1]
    assert len(found) == 3, "the pasted example itself is not returned"
    assert all(f.mask.size == target.shape[:2] and f.mask.box()[2] <= target.shape[1] for f in found)
    assert all(f.box[2] <= target.shape[1] for f in found)
    assert {f.label for f in found} == {EXEMPLAR_LABEL}


def test_reference_composite_puts_the_boxed_example_on_a_strip(processor):
    target, reds, other, example = reference_scene()
    params = SegmentParams(reference_exemplars=[{"box": dict(zip(["x1", "y1", "x2", "y2"], example))}])
    job = plan_segment(target, params, Limits(), ColorBlobSegmenter().prepare, other)
    composite = job.composite
    assert composite.image.shape[0] == 600 and 800 < composite.image.shape[1] <= 800 * 1.25
    assert np.array_equal(composite.image[:, :800], target)
    (x1, y1, x2, y2), = composite.boxes
    assert x1 >= 800
    inside = composite.image[int(y1) + 2:int(y2) - 2, int(x1) + 2:int(x2) - 2]
    assert (np.abs(inside.astype(int) - COLORS["red"]).max(axis=2) < 10).all(), "the moved box frames the example"


# --- the same paths served with the tiny SAM3 ----------------------------------------------


@pytest.fixture(scope="module")
def predictor(tiny_model):
    from serving.config import ServiceConfig
    from serving.model_loader import load_sam3
    from serving.predictor import Sam3Predictor

    return Sam3Predictor(load_sam3(ServiceConfig(model=tiny_model)))


def in_process(predictor, processor, tiny_model, image, params, reference_image=None):
    job = plan_segment(image, params, Limits(), lambda pixels: model_image(pixels, processor), reference_image)
    found = job.finish(predictor.segment(job.items), processor)
    return segment_response(found, height=image.shape[0], width=image.shape[1], mask_format="rle", model=tiny_model)


def test_served_tiled_request_equals_in_process(client, predictor, processor, tiny_model, images):
    image = np.concatenate([images[3], images[3][:, ::-1]], axis=1)  # 420x150: several 112 px tiles
    tiling = Tiling(tile_size=112, overlap=32, merge_iou=0.3)
    served = client.segment(image, ["cat", "dog"], tiling=tiling, threshold=0.2)
    expected = in_process(predictor, processor, tiny_model, image,
                          SegmentParams(prompts=["cat", "dog"], tiling=tiling, threshold=0.2))
    assert len(plan(image.shape[1], image.shape[0], tiling)) > 4
    assert {i.label for i in served.instances} == {"cat", "dog"}
    for label in ("cat", "dog"):  # the random model finds near-identical boxes for both
        assert_results_match(only(served, label), only(expected, label))


def test_served_reference_request_equals_in_process(client, predictor, processor, tiny_model, images):
    target, other = images[0], images[1]
    served = client.segment(target, "cat", reference_image=other, reference_boxes=[[10, 20, 60, 90]], threshold=0.2)
    expected = in_process(predictor, processor, tiny_model, target,
                          SegmentParams(prompt="cat", reference_exemplars=[{"box": {"x1": 10, "y1": 20, "x2": 60, "y2": 90}}],
                                        threshold=0.2), reference_image=other)
    assert len(served.instances) > 0
    assert_results_match(served, expected)


def test_bad_tiling_and_reference_requests_are_refused(service, client):
    image = b64(png(64, 48))
    assert_error(post_json(service, image=image, prompt="cat", tiling={"tile_size": 64, "overlap": 64}), 422,
                 "invalid_request", says="overlap must be smaller")
    assert_error(post_json(service, image=b64(png(1000, 900)), prompt="cat", tiling={"tile_size": 64, "overlap": 0}),
                 422, "too_many_tiles", field="tiling", says="the limit is 64")
    box = {"box": {"x1": 1, "y1": 1, "x2": 20, "y2": 20}}
    assert_error(post_json(service, image=image, prompt="cat", exemplars=[box], tiling={}), 422, "invalid_request",
                 says="text prompts only")
    assert_error(post_json(service, image=image, reference_exemplars=[box]), 422, "invalid_request",
                 field="reference_image", says="need a reference_image")
    assert_error(post_json(service, image=image, prompt="cat", reference_image=b64(png(64, 48))), 422,
                 "invalid_request", field="reference_exemplars")
    assert_error(post_json(service, image=image, reference_image=b64(png(16, 16)), reference_exemplars=[box]), 422,
                 "out_of_bounds", field="reference_exemplars.0.box")
    assert_error(post_json(service, image=image, reference_image=b64(b"not an image"), reference_exemplars=[box]), 422,
                 "invalid_image", field="reference_image", says="reference_image is not a decodable")
    with pytest.raises(ValidationError, match="overlap"):
        client.segment(png(), "cat", tiling={"tile_size": 64, "overlap": 100})
