"""What the SDK hands back: the wire response plus numpy masks (decoded when asked for), PNG
label images, overlays and COCO dicts.

A 12 MP image with 100 instances is 1.2 GB of decoded masks, so nothing here keeps decoded masks:
every consumer decodes one instance at a time and lets it go."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import PrivateAttr

from sdk import coco
from sdk.images import ImageInput
from sdk.masks import decode_mask, paint
from sdk.render import overlay
from sdk.schema import Instance, SegmentResponse


class InstanceResult(Instance):
    """One instance; `array` is its HxW boolean mask."""

    @property
    def array(self) -> np.ndarray:
        """The HxW boolean mask, decoded from the wire format on every read and not kept (a
        full-size mask per instance would add up); bind it to a name to use it more than once."""
        return decode_mask(self.mask)


class Result(SegmentResponse):
    """A segmentation result.  Instances are sorted by score, highest first."""

    instances: list[InstanceResult]  # type: ignore[assignment]  # pydantic field narrowed: decodable instances
    _image: ImageInput | None = PrivateAttr(default=None)

    def with_image(self, image: ImageInput) -> Result:
        """Remember the image this result is about, so `overlay()` needs no argument."""
        self._image = image
        return self

    @property
    def masks(self) -> np.ndarray:
        """All masks stacked: a boolean (N, H, W) array, decoded anew on every read.

        It materialises every mask at once, N*H*W bytes (1.2 GB for 100 instances of 12 MP);
        to go one mask at a time use `for inst in result.instances: inst.array`, and
        `label_image()` for one HxW array of instance or category ids."""
        # Filled in place (a list of masks to stack would double the peak), each plane column-major
        # like pycocotools' decoded masks (and np.stack of them), so filling is a copy, not a transpose.
        out = np.empty((len(self.instances), self.width, self.height), dtype=bool).transpose(0, 2, 1)
        for k, inst in enumerate(self.instances):
            out[k] = inst.array
        return out

    @property
    def boxes(self) -> np.ndarray:
        return np.array([inst.box for inst in self.instances], dtype=np.float64).reshape(-1, 4)

    @property
    def scores(self) -> np.ndarray:
        return np.array([inst.score for inst in self.instances], dtype=np.float64)

    @property
    def labels(self) -> list[str]:
        return [inst.label for inst in self.instances]

    def label_image(
        self, kind: Literal["instance", "category"] = "instance", categories: Sequence[str] | None = None
    ) -> np.ndarray:
        """HxW ids, 0 = background.  "instance": 1..N in `instances` order; "category": 1-based
        index of the label in `categories` (default: labels in order of first appearance).
        Where masks overlap the higher-scoring instance wins.  uint8, or uint16 past 255 ids."""
        names = list(dict.fromkeys(categories if categories is not None else self.labels))
        ids = (
            [k + 1 for k in range(len(self.instances))]
            if kind == "instance"
            else [names.index(label) + 1 for label in self.labels]
        )
        dtype = np.uint8 if max(ids, default=0) <= 255 else np.uint16
        out = np.zeros((self.height, self.width), dtype=dtype)
        # Lowest score first, so the best paints last.
        for inst, value in reversed(list(zip(self.instances, ids, strict=True))):
            paint(out, inst.array, value)  # a call, so each mask is freed before the next is decoded
        return out

    def save_png(
        self,
        path: str | Path,
        kind: Literal["instance", "category"] = "instance",
        categories: Sequence[str] | None = None,
    ) -> Path:
        """Write `label_image(kind, categories)` as a lossless PNG (8- or 16-bit grey)."""
        path = Path(path)
        Image.fromarray(self.label_image(kind, categories)).save(path, format="PNG")
        return path

    def overlay(self, image: ImageInput | None = None, alpha: float = 0.5, caption: str | None = None) -> Image.Image:
        """The image with coloured masks, boxes, labels and scores drawn on it."""
        image = image if image is not None else self._image
        if image is None:
            raise ValueError("this result does not know its image; pass it: result.overlay(image)")
        return overlay(image, self, alpha=alpha, caption=caption)

    def to_coco(self, image_id: int = 1, file_name: str = "", categories: Sequence[str] | None = None) -> dict:
        """A complete single-image COCO instance-segmentation dict (RLE masks)."""
        builder = coco.CocoBuilder(categories)
        builder.add(file_name, self, image_id=image_id)
        return builder.to_dict()
