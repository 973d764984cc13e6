"""Collect segmentation responses into one COCO instance-segmentation file (RLE masks)."""

from __future__ import annotations

from pycocotools import mask as coco_mask

from sdk.masks import rle_of
from sdk.schema import SegmentResponse


class CocoBuilder:
    """Images, categories (one per label) and annotations, in the layout pycocotools' COCO() reads."""

    def __init__(self) -> None:
        self.images: list[dict] = []
        self.categories: dict[str, int] = {}
        self.annotations: list[dict] = []

    def add(self, file_name: str, result: SegmentResponse) -> int:
        image_id = len(self.images) + 1
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
