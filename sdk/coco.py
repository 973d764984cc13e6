"""Collect segmentation responses into one COCO instance-segmentation file (RLE masks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pycocotools import mask as coco_mask

from sdk.masks import rle_of
from sdk.schema import SegmentResponse


@dataclass(frozen=True)
class CocoImage:
    """One image's part of a COCO file before it is given ids: a result converted once (RLE masks
    in COCO's encoding, areas, xywh boxes: the costly part), to be added to any number of files."""

    file_name: str
    width: int
    height: int
    instances: tuple[dict[str, Any], ...]  # annotations without ids, "label" for the category

    @classmethod
    def of(cls, file_name: str, result: SegmentResponse) -> CocoImage:
        instances = []
        for inst in result.instances:
            rle = rle_of(inst.mask)
            x1, y1, x2, y2 = inst.box
            instances.append(
                {
                    "label": inst.label,
                    "segmentation": rle,
                    "area": float(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()})),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": inst.score,
                    "iscrowd": 0,
                }
            )
        return cls(file_name, result.width, result.height, tuple(instances))


class CocoBuilder:
    """Images, categories (one per label) and annotations, in the layout pycocotools' COCO() reads.

    `categories` fixes the first category ids (e.g. the prompts of a run, so ids do not depend on
    which label happened to be seen first); labels not in it are appended as they appear.
    """

    def __init__(self, categories: Sequence[str] | None = None) -> None:
        self.images: list[dict] = []
        self.categories: dict[str, int] = {name: i + 1 for i, name in enumerate(dict.fromkeys(categories or ()))}
        self.annotations: list[dict] = []

    def add(self, file_name: str, result: SegmentResponse, image_id: int | None = None) -> int:
        return self.add_image(CocoImage.of(file_name, result), image_id)

    def add_image(self, image: CocoImage, image_id: int | None = None) -> int:
        """Add an already converted image (see CocoImage); returns its id."""
        image_id = len(self.images) + 1 if image_id is None else image_id
        self.images.append({"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height})
        for inst in image.instances:
            fields = {k: v for k, v in inst.items() if k != "label"}
            category_id = self.categories.setdefault(inst["label"], len(self.categories) + 1)
            self.annotations.append(
                {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": category_id, **fields}
            )
        return image_id

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i, "name": name} for name, i in self.categories.items()],
        }
