"""Served results equal the same tiny SAM3 called in-process through transformers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import reference as ref_impl
from compare import LOGITS_ATOL, WINDOW_LOGITS_ATOL, assert_matches_reference


def assert_same_instances(served, expected, image):
    """The transformers reference's instances (tolerances: compare.REFERENCE), sorted by score."""
    height, width = image.shape[:2]
    assert (served.height, served.width) == (height, width)
    assert len(expected["scores"]) > 0, "the comparison needs instances"
    # Paired by box: scores of a random model can tie, boxes are distinct.
    assert_matches_reference(served, expected)
    got_scores = [i.score for i in served.instances]
    assert got_scores == sorted(got_scores, reverse=True), "instances are sorted by score"


@pytest.mark.parametrize("mask_format", ["rle", "png", "polygon"])
def test_text_prompt(client, reference, images, mask_format):
    image = images[0]
    expected = ref_impl.segment(reference, image, prompt="red bus", threshold=0.0)
    served = client.segment(image, prompt="red bus", threshold=0.0, mask_format=mask_format)
    if mask_format == "polygon":  # polygons trace the outline: compare areas loosely, exact elsewhere
        for inst in served.instances:
            assert inst.mask.format == "polygon"
        served = client.segment(image, prompt="red bus", threshold=0.0)
    assert all(i.label == "red bus" for i in served.instances)
    assert_same_instances(served, expected, image)


def test_threshold_filters_like_transformers(client, reference, images):
    image = images[1]
    scores = ref_impl.segment(reference, image, prompt="dog", threshold=0.0)["scores"]
    threshold = float(np.median(scores))
    expected = ref_impl.segment(reference, image, prompt="dog", threshold=threshold)
    served = client.segment(image, prompt="dog", threshold=threshold)
    assert 0 < len(served.instances) < len(scores)
    assert_same_instances(served, expected, image)


def test_positive_and_negative_exemplars(client, reference, images):
    image = images[3]
    boxes, labels = [[10, 12, 80, 90], [100, 20, 190, 140]], [1, 0]
    expected = ref_impl.segment(reference, image, boxes=boxes, box_labels=labels, threshold=0.0)
    served = client.segment(image, exemplars=[boxes[0]], negative=[boxes[1]], threshold=0.0)
    assert all(i.label == "exemplar" for i in served.instances)
    assert_same_instances(served, expected, image)


def test_text_with_exemplar(client, reference, images):
    image = images[2]
    expected = ref_impl.segment(reference, image, prompt="cup", boxes=[[5, 5, 40, 50]], box_labels=[1], threshold=0.0)
    served = client.segment(image, prompt="cup", exemplars=[[5, 5, 40, 50]], threshold=0.0)
    assert_same_instances(served, expected, image)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"points": [[30, 40]], "labels": [1]},
        {"points": [[30, 40], [100, 90]], "labels": [1, 0], "multimask": True},
        {"box": [20, 20, 120, 100]},
        {"points": [[60, 50]], "labels": [1], "box": [20, 20, 120, 100]},
    ],
)
def test_point_and_box_prompts(client, reference, images, kwargs):
    image = images[0]
    expected = ref_impl.segment_points(reference, image, **kwargs)
    points = kwargs.pop("points", [])
    served = client.segment_points(image, points, **kwargs)
    assert len(served.instances) == len(expected["scores"]) == (3 if kwargs.get("multimask") else 1)
    assert_matches_reference(served, expected, pair_by_box=False)


def test_concurrent_requests_are_batched_and_equal_single_ones(client, reference, images):
    prompts = ["cat", "red bus", "person", "tree"]
    with ThreadPoolExecutor(len(prompts)) as pool:
        served = list(pool.map(lambda a: client.segment(a[0], prompt=a[1], threshold=0.0), zip(images, prompts)))
    for image, prompt, result in zip(images, prompts, served):
        assert_same_instances(result, ref_impl.segment(reference, image, prompt=prompt, threshold=0.0), image)


def test_predictor_batch_equals_one_by_one(tiny_model, images):
    """Deterministic check of the batching itself, mixed prompt kinds in one batch."""
    from serving.config import ServiceConfig
    from serving.model_loader import load_sam3
    from serving.predictor import EXEMPLAR_ONLY_TEXT, PointsItem, Sam3Predictor, SegmentItem, model_image

    loaded = load_sam3(ServiceConfig(model=tiny_model))
    predictor = Sam3Predictor(loaded, text_cache_entries=16)
    seen = [model_image(image, loaded.processor) for image in images]
    items = [
        SegmentItem(seen[0], ["cat"], threshold=0.0),
        SegmentItem(seen[1], [], boxes=[[5, 5, 50, 60]], box_labels=[1], threshold=0.0),
        SegmentItem(seen[2], ["a much longer prompt"], threshold=0.0, negative_prompts=["cat"]),
        SegmentItem(seen[3], ["dog"], boxes=[[5, 5, 50, 60]], box_labels=[0], threshold=0.0),
        SegmentItem(seen[0], ["cat", "dog", "bus"], threshold=0.0, negative_prompts=["tree"]),
    ]
    for batched, item in zip(predictor.segment(items), items):
        # One image encoding shared by several prompts gives what one prompt at a time gives.
        singles = [predictor.segment([SegmentItem(item.image, [] if text == EXEMPLAR_ONLY_TEXT else [text],
                                                  [] if excluded else item.boxes, [] if excluded else item.box_labels,
                                                  threshold=0.0)])[0][0]
                   for text, excluded in item.queries()]
        assert len(batched) == len(singles) == len(item.queries())
        for got, single in zip(batched, singles):
            np.testing.assert_allclose(got.pred_logits, single.pred_logits, atol=LOGITS_ATOL)
            assert_same_windows(got.masks, single.masks)
    # Repeated prompts were encoded once and then taken from the text cache.
    assert predictor.texts.misses == len({"cat", "dog", "bus", "tree", "a much longer prompt", EXEMPLAR_ONLY_TEXT})
    assert predictor.texts.hits > 0
    tracker_seen = [model_image(image, loaded.tracker_processor) for image in images]
    point_items = [
        PointsItem(tracker_seen[0], [[10, 10]], [1]),
        PointsItem(tracker_seen[1], [[10, 10], [40, 50]], [1, 0], multimask=True),
        PointsItem(tracker_seen[2], [[20, 30]], [0], box=[5, 5, 60, 60]),
    ]
    for batched, item in zip(predictor.segment_points(point_items), point_items):
        (single,) = predictor.segment_points([item])
        assert_same_windows(batched.masks, single.masks)
        np.testing.assert_allclose(batched.scores, single.scores, atol=LOGITS_ATOL)


def assert_same_windows(got, expected):
    """Masks cut to the same low-res windows with the same values, within batching's float noise
    (compare.WINDOW_LOGITS_ATOL): a window's edge moves only if a value sits that close to the support margin."""
    assert [(w.top, w.left, tuple(w.values.shape)) for w in got] == \
        [(w.top, w.left, tuple(w.values.shape)) for w in expected]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.logits().numpy(), b.logits().numpy(), atol=WINDOW_LOGITS_ATOL)


def test_a_repeated_prompt_is_encoded_once_per_replica(client, images):
    """The SAM3 replica keeps encoded text prompts (text_cache_entries): a prompt sent again is a
    cache hit, reported by /v1/info (the session's service has one SAM3 replica)."""
    prompt = "a prompt only this test sends"
    before = client.info().text_cache
    first = client.segment(images[0], prompt, threshold=0.0)
    again = client.segment(images[1], prompt, threshold=0.0)
    after = client.info().text_cache
    assert after.misses == before.misses + 1 and after.hits >= before.hits + 1
    assert after.entries <= after.capacity
    assert first.instances and again.instances
