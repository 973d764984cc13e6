"""Collect segmentation responses into one COCO instance-segmentation file (RLE masks)."""

from __future__ import annotations

from collections.abc import Sequence

from pycocotools import mask as coco_mask

from sdk.masks import rle_of
from sdk.schema import SegmentResponse


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
        image_id = len(self.images) + 1 if image_id is None else image_id
        self.images.append({"id": image_id, "file_name": file_name, "width": result.width, "height": result.height})
        for inst in result.instances:
            category_id = self.categories.setdefault(inst.label, len(self.categories) + 1)
            rle = rle_of(inst.mask)
            x1, y1, x2, y2 = inst.box
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": rle,
                    "area": float(coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()})),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": inst.score,
                    "iscrowd": 0,
                }
            )
        return image_id

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i, "name": name} for name, i in self.categories.items()],
        }
