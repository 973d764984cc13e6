"""Draw a segmentation response over its image (PIL only, so it works on a laptop)."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from sdk.images import ImageInput, load_rgb
from sdk.masks import decode_mask, in_mask_order
from sdk.schema import SegmentResponse


def palette(n: int) -> list[tuple[int, int, int]]:
    """n well-separated colours (golden-ratio hue steps)."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
        colours.append((int(255 * r), int(255 * g), int(255 * b)))
    return colours


def _tint(pixels: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float) -> None:
    """Blend `colour` into the HxWx3 uint8 `pixels` under `mask`, in place."""
    view, order = in_mask_order(pixels, mask)
    # Only the covered pixels go to float: a float32 copy of the whole image is 4x the output.
    covered = view[order].astype(np.float32)
    view[order] = (1 - alpha) * covered + alpha * np.asarray(colour, dtype=np.float32)


def overlay(image: ImageInput, result: SegmentResponse, alpha: float = 0.5, caption: str | None = None) -> Image.Image:
    """The image with each instance's mask tinted, its box drawn and its label and score written."""
    pixels = np.array(load_rgb(image))
    colours = palette(len(result.instances))
    for inst, colour in zip(result.instances, colours, strict=True):
        _tint(pixels, decode_mask(inst.mask), colour, alpha)  # a call, so each mask is freed before the next is decoded
    out = Image.fromarray(pixels)
    draw = ImageDraw.Draw(out)
    for inst, colour in zip(result.instances, colours, strict=True):
        x1, y1, x2, y2 = inst.box
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        draw.text((x1 + 3, y1 + 2), f"{inst.label} {inst.score:.2f}", fill=colour)
    if caption:
        draw.rectangle([0, out.height - 16, out.width, out.height], fill=(0, 0, 0))
        draw.text((4, out.height - 14), caption, fill=(255, 255, 0))
    return out
