"""The tiny SAM3 called in-process through transformers alone (no samfleet code): the ground
truth that served results are compared with."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def segment(ref: dict, image: np.ndarray, prompt=None, boxes=None, box_labels=None, threshold=0.5, mask_threshold=0.5):
    processor, model = ref["processor"], ref["model"]
    extra = {"input_boxes": [boxes], "input_boxes_labels": [box_labels]} if boxes else {}
    inputs = processor(images=Image.fromarray(image), text=prompt, return_tensors="pt", **extra)
    with torch.no_grad():
        outputs = model(**inputs)
    height, width = image.shape[:2]
    (result,) = processor.post_process_instance_segmentation(
        outputs, threshold=threshold, mask_threshold=mask_threshold, target_sizes=[(height, width)]
    )
    boxes_out = result["boxes"].numpy().copy()
    boxes_out[:, 0::2] = boxes_out[:, 0::2].clip(0, width)
    boxes_out[:, 1::2] = boxes_out[:, 1::2].clip(0, height)
    return {"scores": result["scores"].numpy(), "boxes": boxes_out, "masks": result["masks"].numpy().astype(bool)}


def segment_points(ref: dict, image: np.ndarray, points=None, labels=None, box=None, multimask=False):
    processor, model = ref["tracker_processor"], ref["tracker"]
    extra = {}
    if points:
        extra.update(input_points=[[points]], input_labels=[[labels]])
    if box:
        extra.update(input_boxes=[[box]])
    inputs = processor(images=Image.fromarray(image), return_tensors="pt", **extra)
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=multimask)
    (masks,) = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])
    return {"scores": outputs.iou_scores[0, 0].numpy(), "masks": masks[0].numpy().astype(bool)}
