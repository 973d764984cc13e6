"""Several prompts in one request and negative text prompts: the suppression rule on masks whose
overlaps are known, then served results against the tiny model called in-process, one prompt
at a time, with the rule applied by this test's own numpy overlaps."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

import reference as ref_impl
from sdk import ValidationError
from serving.negatives import suppressed
from test_bad_input import assert_error, b64, png, post_json
from test_served_equals_inprocess import assert_same_instances


def rle(masks):
    """COCO RLE of whole-image boolean masks, as the service's instances carry them."""
    return [coco_mask.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


def rectangle(x1, y1, x2, y2, height=40, width=60) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_suppression_by_iou_or_containment():
    person, tree, overlapping_half = rectangle(0, 0, 20, 40), rectangle(40, 0, 60, 20), rectangle(10, 0, 30, 40)
    mannequin = rectangle(2, 2, 18, 38)  # IoU with person 0.72, inside person
    wanted = rle([person, tree, overlapping_half])
    assert suppressed(wanted, rle([mannequin]), iou=0.5, containment=0.8).tolist() == [True, False, False]
    assert suppressed(wanted, rle([mannequin]), iou=0.8, containment=0.8).tolist() == [False, False, False]
    # Half of person lies inside overlapping_half (IoU only 1/3): containment decides.
    assert suppressed(rle([person]), rle([overlapping_half]), iou=0.9, containment=0.5).tolist() == [True]
    assert suppressed(rle([person]), rle([overlapping_half]), iou=0.9, containment=0.6).tolist() == [False]
    assert suppressed(wanted, [], iou=0.5, containment=0.8).tolist() == [False] * 3


def only(result, label: str):
    return result.model_copy(update={"instances": [i for i in result.instances if i.label == label]})


def test_several_prompts_equal_one_request_per_prompt(client, reference, images):
    image = images[2]
    prompts = ["cat", "red bus", "a dog on a sofa"]
    served = client.segment(image, prompts, threshold=0.0)
    assert {i.label for i in served.instances} == set(prompts)
    scores = [i.score for i in served.instances]
    assert scores == sorted(scores, reverse=True)
    for prompt in prompts:
        assert_same_instances(only(served, prompt), ref_impl.segment(reference, image, prompt=prompt, threshold=0.0), image)


def overlaps(wanted: np.ndarray, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, share of each wanted mask inside each excluded one), computed here without pycocotools."""
    w = wanted.reshape(len(wanted), -1).astype(np.float64)
    e = excluded.reshape(len(excluded), -1).astype(np.float64)
    inter = w @ e.T
    area = w.sum(1, keepdims=True)
    return inter / (area + e.sum(1)[None] - inter), inter / area


def splitting(values: np.ndarray) -> float:
    top = np.unique(values)[-2:]
    return float(top.mean())


def test_negative_prompt_drops_the_instances_overlapping_it(client, reference, images):
    image = images[0]
    wanted = ref_impl.segment(reference, image, prompt="person", threshold=0.0)
    excluded = ref_impl.segment(reference, image, prompt="mannequin", threshold=0.0)
    iou, inside = overlaps(wanted["masks"], excluded["masks"])
    # Thresholds that split this random model's instances, so the test sees both outcomes: each
    # halfway between the two highest overlaps, far from any instance's value.
    cut, containment = splitting(iou.max(axis=1)), splitting(inside.max(axis=1))
    drop = ((iou >= cut) | (inside >= containment)).any(axis=1)
    assert 0 < drop.sum() < len(drop)
    served = client.segment(image, "person", negative_prompts=["mannequin"], negative_iou=cut,
                            negative_containment=containment, threshold=0.0)
    kept = {k: v[~drop] for k, v in wanted.items()}
    assert_same_instances(served, kept, image)
    assert all(i.label == "person" for i in served.instances)


def test_a_concept_excluded_from_itself_leaves_nothing(client, images):
    assert client.segment(images[1], "cat", threshold=0.2).instances
    assert client.segment(images[1], "cat", negative_prompts=["cat"], threshold=0.2).instances == []


def test_bad_prompt_combinations_are_refused(service):
    image = b64(png())
    assert_error(post_json(service, image=image, prompt="cat", prompts=["dog"]), 422, "invalid_request",
                 says="not both")
    assert_error(post_json(service, image=image, prompts=["cat", "dog"],
                           exemplars=[{"box": {"x1": 1, "y1": 1, "x2": 9, "y2": 9}}]), 422, "invalid_request",
                 says="single prompt")
    assert_error(post_json(service, image=image, prompt="cat", negative_prompts=[" "]), 422, "invalid_request",
                 field="negative_prompts", says="empty")
    assert_error(post_json(service, image=image, prompts=[f"thing {i}" for i in range(9)]), 422,
                 "too_many_prompts", field="prompts", says="limit is 8")
    assert_error(post_json(service, image=image, prompt="cat", negative_prompts=["x" * 51]), 422,
                 "prompt_too_long", field="negative_prompts.0")


def test_sdk_refuses_bad_prompts_before_sending(client):
    with pytest.raises(ValidationError, match="not both|empty"):
        client.segment(png(), ["cat", ""])
