"""The classes of a label field, stored on the dataset so that every export numbers them alike.

`dataset.classes[field]` lists them and `dataset.mask_targets[field]` gives each its pixel value
({value: class}).  Classes are only ever appended: a value, once given, never changes, so the
PNG masks and COCO category ids of two exports (two views, or before and after a run that
found new classes) mean the same thing, and the dataset says which value is which.
"""

from __future__ import annotations

from collections.abc import Iterable

import fiftyone as fo
import fiftyone.core.collections as foc

# 8-bit PNG masks: value 0 is the background.
MAX_CLASSES = 255


def dataset_of(collection: foc.SampleCollection) -> fo.Dataset:
    return collection if isinstance(collection, fo.Dataset) else fo.load_dataset(collection.dataset_name)


def add_classes(collection: foc.SampleCollection, label_field: str, classes: Iterable[str]) -> dict[int, str]:
    """Append the classes the field does not have yet (numbered after the highest value) to the
    dataset's classes and mask targets of `label_field`; returns its mask targets."""
    dataset = dataset_of(collection)
    dataset.reload()  # another process (a delegated run) may have added classes meanwhile
    targets = dict(dataset.mask_targets.get(label_field) or {})
    known = list(dataset.classes.get(label_field) or [])
    if not all(isinstance(value, int) for value in targets):
        raise ValueError(f"the mask targets of {label_field} are RGB colours; SAM3 classes are numbered 1, 2, ...")
    new = [c for c in dict.fromkeys(classes) if c not in targets.values()]
    start = max(targets, default=0) + 1
    if start + len(new) - 1 > MAX_CLASSES:
        raise ValueError(
            f"{label_field} would have more than {MAX_CLASSES} classes, the most an 8-bit PNG mask "
            f"export can number: {len(targets)} stored, {len(new)} new"
        )
    targets.update({start + i: name for i, name in enumerate(new)})
    known += [c for c in targets.values() if c not in known]
    if new or known != dataset.classes.get(label_field):
        # Whole-dict assignment: FiftyOne cannot save an in-place edit keyed "frames.<field>".
        dataset.mask_targets = {**dataset.mask_targets, label_field: targets}
        dataset.classes = {**dataset.classes, label_field: known}
    return targets


def coco_categories(targets: dict[int, str]) -> list[dict]:
    """COCO categories whose ids are the mask values, so both exports number a class alike."""
    return [{"id": value, "name": name, "supercategory": None} for value, name in sorted(targets.items())]
