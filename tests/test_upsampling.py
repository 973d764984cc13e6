"""Post-processing crop by crop equals transformers' whole-image post-processing, mask for mask.

The service upsamples each instance's mask only where it can pass the threshold (the low-res
window the replica sends, see serving/upsampling.py).  These tests compare that path, bit for
bit, with transformers' own functions on SAM3-shaped outputs (serving/synthetic_outputs.py):
many instances of varied sizes, blobs cut by the image border and masks larger than their box.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

from compare import POSTPROCESS_BOX_ATOL, POSTPROCESS_SCORE_ATOL
from sdk import decode_mask
from serving import upsampling
from serving.postprocess import found_instances, logit, point_masks_response
from serving.predictor import RawDetections, RawPointMasks
from serving.synthetic_outputs import synthetic_detections

PROCESSOR = Sam3ImageProcessor()


def test_torch_bilinear_arithmetic_is_reproduced():
    assert upsampling.EXACT, "this torch build's bilinear kernel is not reproduced: masks may differ in boundary pixels"


def transformers_masks(detections, size, mask_threshold):
    outputs = SimpleNamespace(**{k: torch.from_numpy(v)[None] for k, v in vars(detections).items()})
    (result,) = PROCESSOR.post_process_instance_segmentation(outputs, threshold=0.0, mask_threshold=mask_threshold,
                                                             target_sizes=[size])
    return result


def served_instances(detections, size, mask_threshold, dtype=torch.float32):
    raw = RawDetections.of(torch.from_numpy(detections.pred_logits), torch.from_numpy(detections.pred_boxes),
                           torch.from_numpy(detections.pred_masks).to(dtype),
                           torch.from_numpy(detections.presence_logits), mask_threshold)
    return found_instances([raw], [("thing", False)], SimpleNamespace(image_processor=PROCESSOR), height=size[0],
                           width=size[1], mask_threshold=mask_threshold, negative_iou=0.5, negative_containment=0.8)


def whole(found) -> np.ndarray:
    return decode_mask(found.encoded("rle"))


@pytest.fixture(params=["cost-chosen", "pixel by pixel", "band by band", "band by band, then pixels"])
def upsampling_path(request, monkeypatch):
    """The same masks whichever way a window is computed (serving/upsampling.py picks one by cost;
    the last falls back to pixels as when rounding makes a band non-monotone)."""
    if request.param == "pixel by pixel":
        monkeypatch.setattr(upsampling, "PIXEL_NS", 0)
    elif request.param.startswith("band by band"):
        monkeypatch.setattr(upsampling, "PIXEL_NS", 10**9)
    if request.param.endswith("then pixels"):
        monkeypatch.setattr(upsampling, "_splits", lambda *args: None)
    return request.param


@pytest.mark.parametrize("count, size, mask_threshold", [
    (30, (1200, 1600), 0.5),  # a 4:3 photo: non-uniform scale from the square low-res grid
    (12, (301, 457), 0.3),
    (8, (97, 1500), 0.9),  # panorama, threshold near the top
    (6, (40, 25), 0.5),  # smaller than the low-res grid: downsampling
    (5, (288, 288), 0.0),  # every pixel passes
    (5, (500, 400), 1.0),  # no pixel passes
])
def test_crop_wise_masks_equal_transformers_whole_image_masks(count, size, mask_threshold, upsampling_path):
    detections = synthetic_detections(count, seed=count, mask_size=(288, 288))
    expected = transformers_masks(detections, size, mask_threshold)
    found = served_instances(detections, size, mask_threshold)
    assert len(found) == count
    touching_border = larger_than_box = 0
    for instance, mask, score, box in zip(found, expected["masks"].numpy().astype(bool), expected["scores"],
                                          expected["boxes"]):
        assert np.array_equal(whole(instance), mask)
        assert instance.score == pytest.approx(float(score), abs=POSTPROCESS_SCORE_ATOL)
        assert instance.box == pytest.approx(np.clip(box.numpy(), 0, [size[1], size[0]] * 2).tolist(),
                                             abs=POSTPROCESS_BOX_ATOL)
        ys, xs = np.nonzero(mask)
        if len(xs):
            touching_border += int(xs.min() == 0 or ys.min() == 0 or xs.max() == size[1] - 1 or ys.max() == size[0] - 1)
            x1, y1, x2, y2 = instance.box
            larger_than_box += int(xs.min() < x1 - 1 or ys.min() < y1 - 1 or xs.max() > x2 or ys.max() > y2)
    if 0 < mask_threshold < 1 and count >= 12:
        assert touching_border > 0 and larger_than_box > 0, "the scene covers both cases"


def test_bfloat16_outputs_give_the_masks_of_their_float32_values():
    """On a GPU the replica sends bfloat16 logits; converted to float32 they are exact."""
    detections = synthetic_detections(10, seed=3)
    rounded = torch.from_numpy(detections.pred_masks).to(torch.bfloat16)
    detections.pred_masks = rounded.float().numpy()
    expected = transformers_masks(detections, (600, 800), 0.5)["masks"].numpy().astype(bool)
    found = served_instances(detections, (600, 800), 0.5, dtype=torch.bfloat16)
    assert all(np.array_equal(whole(f), m) for f, m in zip(found, expected))


@pytest.mark.parametrize("mask_threshold", [0.5, 0.2, 0.0])
def test_point_masks_equal_the_trackers_whole_image_masks(mask_threshold, upsampling_path):
    """The tracker's post_process_masks thresholds upsampled logits; so does the crop-wise path."""
    logits = torch.from_numpy(synthetic_detections(3, seed=5, mask_size=(256, 256)).pred_masks)
    size = (750, 1000)
    (expected,) = PROCESSOR.post_process_masks([logits[None]], original_sizes=[size],
                                               mask_threshold=logit(mask_threshold))
    raw = RawPointMasks(mask_size=(256, 256),
                        masks=upsampling.support_windows(logits, logit(mask_threshold), probabilities=False),
                        scores=np.array([0.9, 0.8, 0.7], np.float32))
    served = point_masks_response(raw, height=size[0], width=size[1], mask_threshold=mask_threshold,
                                  mask_format="rle", model="m")
    for instance, mask in zip(served.instances, expected[0].numpy()):
        assert np.array_equal(decode_mask(instance.mask), mask)
        ys, xs = np.nonzero(mask)
        assert instance.box == ((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, 0, 0))


def test_the_replica_sends_only_the_support_of_each_mask():
    detections = synthetic_detections(50, seed=1)
    windows = upsampling.support_windows(torch.from_numpy(detections.pred_masks), 0.5, probabilities=True)
    sent = sum(w.values.size for w in windows)
    assert sent < 0.25 * detections.pred_masks.size, "50 instances cover far less than 50 whole low-res masks"


@pytest.mark.parametrize("path", ["pixel by pixel", "band by band"])
def test_values_at_and_near_the_threshold_upsample_as_torch_does(path, monkeypatch):
    """The bands' splits are placed by arithmetic and only values near the threshold are computed
    exactly: windows whose values sit on the threshold, or within 1e-6..1 of it, still give torch's
    own thresholded F.interpolate, whatever the sizes."""
    monkeypatch.setattr(upsampling, "PIXEL_NS", 0 if path == "pixel by pixel" else 10**9)
    rng = np.random.default_rng(5)
    for _ in range(60):
        (h, w), (height, width) = rng.integers(2, 40, 2), rng.integers(2, 2500, 2)
        threshold = float(rng.choice([0.3, 0.5, 0.9]))
        values = np.clip(threshold + rng.normal(size=(h, w)) * 10 ** rng.uniform(-6, 0), 0, 1).astype(np.float32)
        values[rng.random((h, w)) < rng.choice([0.0, 0.3, 1.0])] = np.float32(threshold)
        expected = torch.nn.functional.interpolate(torch.from_numpy(values)[None, None], size=(int(height), int(width)),
                                                   mode="bilinear", align_corners=False)[0, 0] > threshold
        (mask,) = upsampling.upsample_windows([upsampling.MaskWindow(0, 0, values)], (int(h), int(w)),
                                              (int(height), int(width)), threshold, probabilities=False)
        assert np.array_equal(decode_mask(mask.rle()), expected.numpy())
