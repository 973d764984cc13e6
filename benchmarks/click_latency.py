"""Interactive clicks on one image: latency of the first point prompt (vision encoder + mask
decoder) vs. the 2nd..Nth, with the embedding cache and with it disabled, in one run.

    python benchmarks/click_latency.py [--model DIR_OR_ID] [--clicks 8] [--images 3] [--replicas 1] [--cache on|off|both]
                                       [--rounds 2] [--json FILE] [--answers FILE]

Starts samfleet twice (cache on with the packaged `embedding_cache_mb`, then 0; `--cache on` or
`--cache off` for one of them), each in a process of its own, clicks
`--clicks` times at random points on each sample image in turn, one click at a time as an
annotator does, and prints median milliseconds per click position, the ratios, and how many
images went through the vision encoder (Prometheus counter, summed over every replica: with the
cache and any number of replicas it is one per image when clicks are routed to the replica
holding the embedding).  Then `--rounds` times every image gets two clicks at once, as several
annotators working on different images do (their clicks meet in one batch): the median latency
of those, and with `--answers FILE` every answer with its image and point (tests/test_embedding_cache.py
checks each against transformers on its own image).  Defaults to the tiny random model on CPU, whose
encoder is cheap: the ratio understates full-size SAM3's.  Images go as they are (upload="original").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Quick metric exports, so the encoder count settles seconds after the last click.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")

from common import SAMPLES, model_or_tiny, running_service  # noqa: E402
from sdk import AsyncClient, Client  # noqa: E402
from serving import cluster_metrics  # noqa: E402
from serving.metrics import IMAGE_ENCODINGS  # noqa: E402

ENCODINGS = f"ray_{IMAGE_ENCODINGS}"


def click_latencies(
    url: str, images: list[bytes], sizes: list[tuple[int, int]], clicks: int, think_s: float
) -> list[list[float]]:
    """Seconds per click: one row per image, one column per click position."""
    rng = np.random.default_rng(0)
    rows = []
    with Client(url, timeout=900, upload="original") as client:  # full-size SAM3 on CPU: minutes per image
        client.segment_points(np.zeros((64, 64, 3), np.uint8), [[1, 1]])  # warm-up, on an image of its own
        for image, (width, height) in zip(images, sizes):
            row = []
            for _ in range(clicks):
                point = [float(rng.uniform(0, width)), float(rng.uniform(0, height))]
                t = time.perf_counter()
                client.segment_points(image, [point])
                row.append(time.perf_counter() - t)
                time.sleep(think_s)
            rows.append(row)
    return rows


def concurrent_clicks(url: str, images: list[bytes], sizes: list[tuple[int, int]], rounds: int) -> list[dict]:
    """Each click of `rounds` bursts of two clicks on every image at once: seconds, image, point, answer."""
    rng = np.random.default_rng(1)

    async def burst(client: AsyncClient) -> list[dict]:
        async def click(index: int, point: list[float]) -> dict:
            t = time.perf_counter()
            answer = await client.segment_points(images[index], [point])
            return {"s": time.perf_counter() - t, "image": index, "point": point, "answer": answer.model_dump(mode="json")}

        points = [(i, [float(rng.uniform(0, w)), float(rng.uniform(0, h))]) for i, (w, h) in enumerate(sizes) for _ in (0, 1)]
        return await asyncio.gather(*(click(i, p) for i, p in points))

    async def run() -> list[dict]:
        async with AsyncClient(url, timeout=900, upload="original") as client:
            return [c for _ in range(rounds) for c in await burst(client)]

    return asyncio.run(run())


def settled_encodings(interval_s: float) -> float:
    """Vision-encoder runs summed over every replica, once two exports in a row agree."""
    def scrape() -> float:
        samples = asyncio.run(cluster_metrics.scrape(cluster_metrics.node_metric_urls()))
        return sum(s.value for s in samples if s.name == ENCODINGS)

    before = scrape()
    while True:
        time.sleep(interval_s + 1)
        if (now := scrape()) == before:
            return now
        before = now


def measure(
    model: str, replicas: int | None, images: list[bytes], sizes, clicks: int, think_s: float, rounds: int, **args
) -> dict:
    interval_s = int(os.environ["RAY_metrics_report_interval_ms"]) / 1000
    with running_service(model, replicas, **args) as url:
        rows = click_latencies(url, images, sizes, clicks, think_s)
        encodings = settled_encodings(interval_s) - 1  # less the warm-up click's
        together = concurrent_clicks(url, images, sizes, rounds) if rounds else []
    first = statistics.median(row[0] for row in rows)
    later = statistics.median(t for row in rows for t in row[1:])
    return {"first_click_s": first, "later_clicks_s": later, "images_encoded": encodings,
            "clicks": len(rows) * clicks, "images": len(rows),
            "concurrent_click_s": statistics.median(c["s"] for c in together) if together else None,
            "concurrent": together}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--clicks", type=int, default=8)
    parser.add_argument("--images", type=int, default=len(SAMPLES), help="how many of the sample images")
    parser.add_argument("--replicas", type=int, help="fixed SAM3 replicas (default: the config's autoscaling)")
    # Annotators take longer than this between clicks; it is also more than Serve's router needs
    # to learn which replica holds a new image (README: Embedding cache).
    parser.add_argument("--think-s", type=float, default=0.5, help="pause between clicks")
    parser.add_argument("--cache", choices=["on", "off", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=2, help="bursts of clicks on every image at once")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--answers", type=Path, help="write every concurrent click's answer here")
    args = parser.parse_args()
    args.model = model_or_tiny(args.model)
    if args.cache == "both":
        # One service per process: Ray is started once in a process (a second ray.init in the
        # same interpreter has ended in a segfault at exit), so each setting runs in a child.
        figures = {name: measure_in_child(args, setting) for name, setting in (("cache_on", "on"), ("cache_off", "off"))}
    else:
        figures = {f"cache_{args.cache}": measure_here(args, args.cache)}
    # A run with both settings runs each in a child, which keeps its answers (--answers needs one setting).
    answers = {name: figure.pop("concurrent", None) for name, figure in figures.items()}
    report(args, figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.answers:
        args.answers.write_text(json.dumps(answers))


def measure_here(args, cache: str) -> dict:
    from PIL import Image

    paths = SAMPLES[: args.images]
    images = [p.read_bytes() for p in paths]
    sizes = [Image.open(p).size for p in paths]
    options = {} if cache == "on" else {"embedding_cache_mb": 0}
    return measure(args.model, args.replicas, images, sizes, args.clicks, args.think_s, args.rounds, **options)


def measure_in_child(args, cache: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, __file__, "--model", args.model, "--clicks", str(args.clicks), "--images",
               str(args.images), "--think-s", str(args.think_s), "--cache", cache, "--rounds", str(args.rounds),
               "--json", str(out)]
        if args.replicas:
            cmd += ["--replicas", str(args.replicas)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())[f"cache_{cache}"]


def report(args, figures: dict) -> None:
    first = next(iter(figures.values()))
    print(f"model: {args.model}   replicas: {args.replicas or 'autoscaled'}   images: {first['images']}   "
          f"clicks per image: {args.clicks}")
    print(f"{'':16}{'click 1 ms':>12}{'clicks 2..N ms':>16}{'1 / 2..N':>10}{'encoder runs':>14}"
          f"{'all images at once ms':>23}")
    for name, r in figures.items():
        together = f"{r['concurrent_click_s'] * 1000:23.1f}" if r["concurrent_click_s"] else f"{'-':>23}"
        print(f"{name.replace('_', ' '):16}{r['first_click_s'] * 1000:12.1f}{r['later_clicks_s'] * 1000:16.1f}"
              f"{r['first_click_s'] / r['later_clicks_s']:10.2f}{r['images_encoded']:>9.0f} / {r['clicks']}{together}")
    if len(figures) == 2:
        ratio = figures["cache_off"]["later_clicks_s"] / figures["cache_on"]["later_clicks_s"]
        print(f"clicks 2..N, cache off / cache on: {ratio:.2f}x")


if __name__ == "__main__":
    main()
