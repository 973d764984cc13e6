"""Batch throughput of `Client.segment_many` vs. a plain sequential httpx loop (one run, ratios).

    python benchmarks/segment_many.py [--model DIR_OR_ID] [--images 96] [--concurrency 1 4 16]

Starts samfleet in this process (embedded Ray, the packaged Serve config), then sends the same
images (the samples, cycled) first with the loop a user would write by hand (httpx, one
multipart request after the other, JSON parsed), then through `segment_many` at each
concurrency.  Defaults to the tiny random model on CPU; pass --model on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import time

import httpx

from common import SAMPLES, model_or_tiny, running_service
from sdk import Client

PROMPT = "cat"


def httpx_loop(url: str, images: list[bytes]) -> float:
    """Images per second of the hand-written sequential loop."""
    params = json.dumps({"prompt": PROMPT})
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as http:
        for image in images:
            response = http.post("/v1/segment", files={"image": ("image", image)}, data={"params": params})
            response.raise_for_status()
            response.json()
    return len(images) / (time.perf_counter() - started)


def segment_many(url: str, images: list[bytes], concurrency: int) -> float:
    started = time.perf_counter()
    with Client(url, upload="original") as client:  # the same bytes as the httpx loop it is compared with
        failed = [item for item in client.segment_many(images, PROMPT, concurrency=concurrency, progress=False)
                  if not item.ok]
    assert not failed, failed[0].error
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    model = model_or_tiny(args.model)
    raw = [SAMPLES[i % len(SAMPLES)].read_bytes() for i in range(args.images)]
    with running_service(model) as url:
        httpx_loop(url, raw[: len(SAMPLES)])  # warm up
        baseline = httpx_loop(url, raw)
        rows = [(c, segment_many(url, raw, c)) for c in args.concurrency]
    print(f"model: {model}   images: {args.images} ({', '.join(p.name for p in SAMPLES)}, cycled)")
    print(f"{'':32}{'img/s':>9}{'vs loop':>10}")
    print(f"{'sequential httpx loop':32}{baseline:9.2f}{'1.00':>10}")
    for concurrency, tput in rows:
        print(f"{f'segment_many, concurrency {concurrency}':32}{tput:9.2f}{tput / baseline:10.2f}")


if __name__ == "__main__":
    main()
