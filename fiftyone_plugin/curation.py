"""Reviewing SAM3 labels: accept/reject as label tags, a saved "needs review" view, counts per
prompt, and export of what survived review with FiftyOne's own exporters.  Review works on video
frame labels too (`frames.<field>`); export is for images."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.media as fom
from fiftyone import ViewField as F

ACCEPTED = "accepted"
REJECTED = "rejected"
NEEDS_REVIEW_VIEW = "sam3-needs-review"
Decision = Literal["accept", "reject", "clear"]
ExportFormat = Literal["coco", "png"]


def decide(dataset: fo.Dataset, selected_labels: list[dict], decision: Decision) -> int:
    """Tag the selected labels (the App's `selected_labels` dicts) accepted or rejected, or
    clear the decision; a label carries at most one of the two tags.  Returns how many."""
    view = dataset.select_labels(labels=selected_labels)
    view.untag_labels([ACCEPTED, REJECTED])
    if decision != "clear":
        view.tag_labels(ACCEPTED if decision == "accept" else REJECTED)
    return len(selected_labels)


def needs_review(collection: foc.SampleCollection, label_field: str, min_score: float) -> foc.SampleCollection:
    """Samples with labels below `min_score` (and not yet accepted) or rejected, showing only those labels."""
    low = (F("confidence") < min_score) & ~F("tags").contains(ACCEPTED)
    return collection.filter_labels(label_field, low | F("tags").contains(REJECTED))


def save_needs_review(dataset: fo.Dataset, label_field: str, min_score: float) -> foc.SampleCollection:
    view = needs_review(dataset, label_field, min_score)
    dataset.save_view(
        NEEDS_REVIEW_VIEW, view, overwrite=True, description=f"{label_field}: score < {min_score} or rejected"
    )
    return view


def counts_per_prompt(
    collection: foc.SampleCollection, label_field: str, min_score: float
) -> dict[str, dict[str, int]]:
    """{prompt: {instances, accepted, rejected, low_score}} over the collection, counted by the database."""
    prompt = f"{label_field}.detections.prompt"
    subsets = {
        "instances": collection,
        ACCEPTED: collection.filter_labels(label_field, F("tags").contains(ACCEPTED)),
        REJECTED: collection.filter_labels(label_field, F("tags").contains(REJECTED)),
        "low_score": collection.filter_labels(label_field, F("confidence") < min_score),
    }
    counted = {name: subset.count_values(prompt) for name, subset in subsets.items()}
    return {p: {name: counted[name].get(p, 0) for name in subsets} for p in counted["instances"]}


def without_rejected(collection: foc.SampleCollection, label_field: str) -> foc.SampleCollection:
    return collection.filter_labels(label_field, ~F("tags").contains(REJECTED), only_matches=False)


def export_labels(
    collection: foc.SampleCollection, label_field: str, export_dir: str | Path, formats: list[ExportFormat]
) -> dict[ExportFormat, str]:
    """Export the labels minus rejected ones; returns {format: directory}.

    coco: FiftyOne's COCO instance-segmentation export (masks as COCO polygons, as FiftyOne writes
    non-crowd masks).  png: FiftyOne's image segmentation export, one PNG per image whose pixel
    values are the prompt index given in the export's `mask_targets` (lossless).
    """
    if collection.media_type == fom.VIDEO:
        raise ValueError(
            "export of video frame labels is not supported: the COCO and PNG exports are per "
            "image; use FiftyOne's video exporters (e.g. fo.types.FiftyOneVideoLabelsDataset) directly"
        )
    view = without_rejected(collection, label_field)
    written = {}
    for fmt in formats:
        target = Path(export_dir) / fmt
        if fmt == "coco":
            view.export(
                export_dir=str(target),
                dataset_type=fo.types.COCODetectionDataset,
                label_field=label_field,
                export_media=False,
                tolerance=0,
            )
        else:
            view.export(
                export_dir=str(target),
                dataset_type=fo.types.ImageSegmentationDirectory,
                label_field=label_field,
                export_media=False,
                mask_targets=prompt_targets(view, label_field),
            )
        written[fmt] = str(target)
    return written


def prompt_targets(collection: foc.SampleCollection, label_field: str) -> dict[int, str]:
    labels = sorted(collection.distinct(f"{label_field}.detections.label"))
    return {i + 1: label for i, label in enumerate(labels)}
