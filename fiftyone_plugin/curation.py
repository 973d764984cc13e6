"""Reviewing SAM3 labels: a patches view of the labels to review, lowest score first, accept/reject
as label tags, counts per prompt, and export of what survived review with FiftyOne's own
exporters, numbering classes as the dataset stores them (`fiftyone_plugin.classes`).  Review
works on video frame labels too (`frames.<field>`); export is for images."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.media as fom
import fiftyone.core.patches as fop
from fiftyone import ViewField as F

from fiftyone_plugin.classes import add_classes, coco_categories, dataset_of
from fiftyone_plugin.video import FRAMES

ACCEPTED = "accepted"
REJECTED = "rejected"
Decision = Literal["accept", "reject", "clear"]
ExportFormat = Literal["coco", "png"]


def decide(dataset: fo.Dataset, labels: list[dict], decision: Decision) -> int:
    """Tag labels accepted or rejected, or clear the decision; a label carries at most one of the
    two tags.  `labels` are the App's selection dicts; only their `label_id` and `field` are
    read, since in a patches view `sample_id` names the patch.  Returns how many."""
    if not labels:
        return 0
    fields = sorted({label["field"] for label in labels})
    view = dataset.select_labels(ids=[label["label_id"] for label in labels], fields=fields)
    view.untag_labels([ACCEPTED, REJECTED], label_fields=fields)
    if decision != "clear":
        view.tag_labels(ACCEPTED if decision == "accept" else REJECTED, label_fields=fields)
    return len(labels)


def patch_labels(view: foc.SampleCollection, patch_ids: list[str]) -> list[dict]:
    """The labels of the patches selected in a patches view (selecting a patch in the grid
    selects a sample, not its label), in the App's selected-labels format."""
    if not patch_ids or not isinstance(view, fop.PatchesView):
        return []
    field = view.patches_field
    return [{"label_id": i, "field": field} for i in view.select(patch_ids).values(f"{field}.id")]


def to_review(max_score: float, undecided_only: bool) -> fo.ViewExpression:
    """Labels scoring at most `max_score`, and (`undecided_only`) neither accepted nor rejected yet."""
    wanted = F("confidence") <= max_score
    if undecided_only:
        wanted &= ~F("tags").contains([ACCEPTED, REJECTED])
    return wanted


def review_view(
    collection: foc.SampleCollection, label_field: str, max_score: float, undecided_only: bool
) -> foc.SampleCollection:
    """One patch per label to review, lowest confidence first: the order in which a reviewer
    finds the model's mistakes soonest.  Video frame labels, which FiftyOne cannot show as
    patches, come as the videos holding them, only those labels shown."""
    view = collection.filter_labels(label_field, to_review(max_score, undecided_only))
    if label_field.startswith(FRAMES):
        return view
    return view.to_patches(label_field).sort_by(f"{label_field}.confidence")


def counts_per_prompt(
    collection: foc.SampleCollection, label_field: str, max_score: float, undecided_only: bool
) -> dict[str, dict[str, int]]:
    """{prompt: {instances, accepted, rejected, to_review}} over the collection, counted by the database."""
    prompt = f"{label_field}.detections.prompt"
    subsets = {
        "instances": collection,
        ACCEPTED: collection.filter_labels(label_field, F("tags").contains(ACCEPTED)),
        REJECTED: collection.filter_labels(label_field, F("tags").contains(REJECTED)),
        "to_review": collection.filter_labels(label_field, to_review(max_score, undecided_only)),
    }
    counted = {name: subset.count_values(prompt) for name, subset in subsets.items()}
    return {p: {name: counted[name].get(p, 0) for name in subsets} for p in counted["instances"]}


def without_rejected(collection: foc.SampleCollection, label_field: str) -> foc.SampleCollection:
    return collection.filter_labels(label_field, ~F("tags").contains(REJECTED), only_matches=False)


def export_labels(
    collection: foc.SampleCollection, label_field: str, export_dir: str | Path, formats: list[ExportFormat]
) -> dict[ExportFormat, str]:
    """Export the labels minus rejected ones; returns {format: directory}.

    Classes are numbered as the dataset's mask targets of `label_field` say (classes not there
    yet are added first), so every export of the field, whatever the view, numbers them alike.
    coco: FiftyOne's COCO instance-segmentation export, category id = mask value (masks as COCO
    polygons, as FiftyOne writes non-crowd masks).  png: FiftyOne's image segmentation export,
    one PNG per image whose pixel values are the mask values (lossless).
    """
    if collection.media_type == fom.VIDEO:
        raise ValueError(
            "export of video frame labels is not supported: the COCO and PNG exports are per "
            "image; use FiftyOne's video exporters (e.g. fo.types.FiftyOneVideoLabelsDataset) directly"
        )
    labels = dataset_of(collection).distinct(f"{label_field}.detections.label")
    targets = add_classes(collection, label_field, labels)
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
                categories=coco_categories(targets),
                tolerance=0,
            )
        else:
            view.export(
                export_dir=str(target),
                dataset_type=fo.types.ImageSegmentationDirectory,
                label_field=label_field,
                export_media=False,
                mask_targets=targets,
            )
        written[fmt] = str(target)
    return written
