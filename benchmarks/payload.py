"""Bytes on the wire and encode/decode time per instance for each mask format (one run, ratios).

    python benchmarks/payload.py [--size 1024x768] [--instances 60]

Masks are synthetic object shapes (ellipses with ragged borders, 0.1% to 20% of the image):
the tiny model's random masks are noise, which no format compresses, and no trained
checkpoint can be downloaded here.  Each mask goes through `sdk.masks` exactly as the service
encodes it and the SDK decodes it; bytes are those of the instance's JSON.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import common  # noqa: F401  (puts the repository on sys.path)
from pycocotools import mask as coco_mask

from sdk.masks import decode_mask, encode_mask
from sdk.schema import Instance

FORMATS = ("rle", "png", "polygon")


def shapes(width: int, height: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    masks = []
    for _ in range(count):
        area = width * height * 10 ** rng.uniform(-3, np.log10(0.2))
        ry = np.sqrt(area / np.pi / (aspect := rng.uniform(0.5, 2)))
        rx = ry * aspect
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        angle = np.arctan2(ys - cy, xs - cx)
        ragged = 1 + 0.15 * np.sin(angle * rng.integers(3, 9) + rng.uniform(0, 6))
        masks.append(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= ragged ** 2)
    return masks


def best_ms(work, repeats: int = 5) -> float:
    """Fastest of `repeats` runs of `work()`, in ms: the least disturbed by other processes."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def measure(masks: list[np.ndarray], fmt: str) -> tuple[float, float, float]:
    """(mean JSON bytes, mean encode ms, mean decode ms) per instance."""
    encoded = [encode_mask(m, fmt) for m in masks]
    payload = [len(Instance(mask=e, box=(0, 0, 1, 1), score=1.0, label="x").model_dump_json()) for e in encoded]
    decoded = [decode_mask(e) for e in encoded]
    exact = sum(np.array_equal(d, m) for d, m in zip(decoded, masks))
    if fmt != "polygon":
        assert exact == len(masks), f"{fmt} is lossless"
    n = len(masks)
    encode_ms = best_ms(lambda: [encode_mask(m, fmt) for m in masks]) / n
    return float(np.mean(payload)), encode_ms, best_ms(lambda: [decode_mask(e) for e in encoded]) / n


def numpy_layout_rle_ms(masks: list[np.ndarray]) -> float:
    """RLE encoding as it was before `sdk.masks` used OpenCV's transpose: the baseline."""
    return best_ms(lambda: [coco_mask.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]) / len(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--instances", type=int, default=60)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    masks = shapes(width, height, args.instances)
    rows = {fmt: measure(masks, fmt) for fmt in FORMATS}
    raw = width * height / 8
    print(f"{args.instances} synthetic instance masks of {width}x{height} "
          f"(raw bitmap {raw / 1024:.0f} KiB each)")
    print(f"{'format':10}{'bytes/inst':>12}{'vs rle':>8}{'encode ms':>11}{'decode ms':>11}")
    for fmt, (size, enc, dec) in rows.items():
        print(f"{fmt:10}{size:12.0f}{size / rows['rle'][0]:8.2f}{enc:11.2f}{dec:11.2f}")
    before = numpy_layout_rle_ms(masks)
    print(f"RLE encode with numpy's column-major copy (before): {before:.2f} ms -> now {rows['rle'][1]:.2f} ms "
          f"({before / rows['rle'][1]:.1f}x faster)")


if __name__ == "__main__":
    main()
