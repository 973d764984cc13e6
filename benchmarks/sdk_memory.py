"""Peak memory and time of what the SDK does with a large Result: masks decoded one at a time
(now) vs. every decoded mask kept on its instance (before), in one run, with ratios.

    python benchmarks/sdk_memory.py [--size 4000x3000] [--instances 100] [--repeats 3]

SDK only (numpy, pillow, pycocotools, pydantic): no service, no Ray, no torch.  The result is
what a labelling team gets for a 12 MP photo: COCO RLE masks of ellipses (polygons rasterised by
pycocotools), areas log-uniform between 0.005% and 4% of the image, every 20th one centred on
the border and cut by it.

Memory is tracemalloc's peak above the start of a call, on a fresh Result each time; "held" is
what is still allocated when the call has returned (its output included).  tracemalloc sees
numpy's and pycocotools' arrays but not PIL's own image buffers (the photo, the drawn overlay),
which are the same in both columns.  Time is the fastest of --repeats untraced calls.
"Before" is the code as it was, on instances whose `array` is a cached property: label images
painted by indexing each kept mask row by row, the overlay tinted in a float32 copy of the whole
image (its boxes and labels, a few ms drawn the same way in both, left out), masks stacked from
the kept masks; to_coco never decoded RLE masks and is the same code in both.
"""

from __future__ import annotations

import argparse
import functools
import gc
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

import common  # noqa: F401  (puts the repository on sys.path)
from pycocotools import mask as coco_mask

from sdk.images import ImageInput, load_rgb
from sdk.masks import decode_mask
from sdk.render import palette
from sdk.results import InstanceResult, Result

MB = 1024 * 1024
LABELS = ("person", "car", "bicycle", "dog", "sign")


class CachedInstance(InstanceResult):
    """An instance as it was: its mask decoded on first read and kept for the instance's life."""

    @functools.cached_property
    def array(self) -> np.ndarray:  # type: ignore[override]
        return decode_mask(self.mask)


class CachedResult(Result):
    instances: list[CachedInstance]  # type: ignore[assignment]


def label_image_before(result: Result) -> np.ndarray:
    """`Result.label_image()` as it was: instance ids, each (kept) mask indexed row by row."""
    out = np.zeros((result.height, result.width), dtype=np.uint8 if len(result.instances) <= 255 else np.uint16)
    for k in reversed(range(len(result.instances))):
        out[result.instances[k].array] = k + 1
    return out


def overlay_before(image: ImageInput, result: Result, alpha: float = 0.5) -> Image.Image:
    """`sdk.render.overlay`'s tint as it was: in a float32 copy of the whole image."""
    base = np.asarray(load_rgb(image), dtype=np.float32)
    for inst, colour in zip(result.instances, palette(len(result.instances))):
        mask = decode_mask(inst.mask)
        base[mask] = (1 - alpha) * base[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return Image.fromarray(base.astype(np.uint8))


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float, points: int = 64) -> list[float]:
    """A COCO polygon (x0, y0, x1, y1, ...) tracing a rotated ellipse."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    xs, ys = cx + x * np.cos(angle) - y * np.sin(angle), cy + x * np.sin(angle) + y * np.cos(angle)
    return np.stack([xs, ys], axis=1).ravel().tolist()


def response(width: int, height: int, count: int, seed: int = 0) -> dict:
    """A segmentation response as the service sends it (JSON) with `count` RLE instances, best
    score first."""
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.uniform(0.3, 1.0, count))[::-1]
    instances = []
    for k in range(count):
        area = width * height * 10 ** rng.uniform(np.log10(5e-5), np.log10(0.04))
        aspect = rng.uniform(0.5, 2)
        ry = np.sqrt(area / np.pi / aspect)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        if k % 20 == 0:  # on the border: pycocotools clips the polygon to the image
            cx, cy = (cx, 0.0) if k % 40 else (float(width), cy)
        polygon = ellipse(cx, cy, ry * aspect, ry, rng.uniform(0, np.pi))
        rle = coco_mask.merge(coco_mask.frPyObjects([polygon], height, width))
        x, y, w, h = coco_mask.toBbox(rle).tolist()
        instances.append({"mask": {"format": "rle", "size": [height, width], "counts": rle["counts"].decode("ascii")},
                          "box": [x, y, x + w, y + h], "score": float(scores[k]), "label": LABELS[k % len(LABELS)]})
    return {"width": width, "height": height, "instances": instances, "model": "synthetic"}


def every_mask_once(result: Result) -> int:
    return sum(int(np.count_nonzero(inst.array)) for inst in result.instances)


def operations(photo: Image.Image, folder: Path) -> list[tuple[str, Callable[[Result], object], Callable[[Result], object]]]:
    """(name, as it was, as it is now) for each thing measured."""
    def save_png_before(result: Result) -> None:
        Image.fromarray(label_image_before(result)).save(folder / "ids.png", format="PNG")

    return [
        ("label_image", label_image_before, Result.label_image),
        ("save_png", save_png_before, lambda r: r.save_png(folder / "ids.png")),
        ("to_coco", Result.to_coco, Result.to_coco),
        ("overlay", lambda r: overlay_before(photo, r), lambda r: r.overlay(photo)),
        ("every mask once", every_mask_once, every_mask_once),
        ("masks (N,H,W)", lambda r: np.stack([inst.array for inst in r.instances]), lambda r: r.masks),
    ]


def ratio(before: float, now: float, floor: float) -> str:
    """before/now, or "-" when now is below `floor`, too small for the ratio to mean anything."""
    return f"{before / now:.1f}" if now >= floor else "-"


def traced(work: Callable[[], object]) -> tuple[float, float]:
    """(peak, held) MB allocated by `work()` above what was allocated before it."""
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    output = work()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del output
    return (peak - start) / MB, (held - start) / MB


def measure(kind: type[Result], wire: dict, op: Callable[[Result], object], repeats: int) -> tuple[float, float, float]:
    """(peak MB, held MB, fastest ms) of `op` on a `kind` result built from `wire`, a fresh one
    for every call: a kept mask would make the next call faster."""
    result = kind.model_validate(wire)
    peak, held = traced(lambda: op(result))
    times = []
    for _ in range(repeats):
        result = kind.model_validate(wire)
        started = time.perf_counter()
        op(result)
        times.append(time.perf_counter() - started)
    return peak, held, min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    wire = response(width, height, args.instances)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8))
    areas = [coco_mask.area({"size": [height, width], "counts": inst["mask"]["counts"].encode()}) / (width * height)
             for inst in wire["instances"]]
    print(f"{args.instances} RLE instances on {width}x{height} ({width * height / 1e6:.0f} MP, "
          f"{width * height / MB:.1f} MB per decoded mask), areas {min(areas):.4%} to {max(areas):.2%} of the image")

    with tempfile.TemporaryDirectory() as folder:
        print(f"{'':16}{'peak MB':^24}{'held MB after':^24}{'ms':^24}")
        print(f"{'':16}" + f"{'before':>9}{'now':>8}{'ratio':>7}" * 3)
        for name, before_op, now_op in operations(photo, Path(folder)):
            before = measure(CachedResult, wire, before_op, args.repeats)
            now = measure(Result, wire, now_op, args.repeats)
            print(f"{name:16}" + "".join(f"{b:9.1f}{n:8.1f}{ratio(b, n, floor):>7}"
                                         for b, n, floor in zip(before, now, (0.05, 0.05, 0.01))))


if __name__ == "__main__":
    main()
