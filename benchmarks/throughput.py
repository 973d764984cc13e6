"""Served throughput and latency against three baselines measured in the same run.

    python benchmarks/throughput.py [--model DIR_OR_ID] [--concurrency 1 8 32 128] [--requests 192]

Baselines: (1) the model in-process through transformers, one image at a time (the
per-request ceiling); (2) in-process with the best batch size (the throughput ceiling);
(3) `benchmarks/naive_fastapi.py`, a single-process FastAPI/uvicorn wrapper of the same model.
Then the naive wrapper and samfleet (embedded Ray, the packaged Serve config) take the same
bounded load over loopback at each concurrency: `--requests` multipart requests with
`--concurrency` in flight.  Prints img/s, p50/p95/p99 latency, and the ratios served /
batched ceiling and served / naive wrapper.  Defaults to the tiny random model on CPU; on a
GPU pass --model (the full-size architecture with random weights costs what the trained one does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import torch
from PIL import Image

from common import REPO, SAMPLES, free_port, model_or_tiny, running_service
from serving import runner

PROMPT = "cat"
WARMUP = 4


@dataclass
class Run:
    name: str
    images_per_s: float
    latencies_s: list[float]
    errors: int = 0

    def ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1000 if self.latencies_s else float("nan")


def in_process(model: str, images: list[Image.Image], count: int, batch_sizes: list[int]) -> tuple[Run, list[Run]]:
    """(one at a time, each batch size): processor -> model -> post-processing, in this process."""
    from transformers import Sam3Model, Sam3Processor

    processor = Sam3Processor.from_pretrained(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sam3 = Sam3Model.from_pretrained(model, dtype=dtype).to(device).eval()

    def run(batch: list[Image.Image]) -> None:
        inputs = processor(images=batch, text=[PROMPT] * len(batch), return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            out = sam3(**inputs)
        processor.post_process_instance_segmentation(out, threshold=0.5, target_sizes=[i.size[::-1] for i in batch])
        if device == "cuda":
            torch.cuda.synchronize()

    def measure(size: int) -> Run:
        batches = [[images[(k * size + j) % len(images)] for j in range(size)] for k in range(max(1, count // size))]
        for batch in batches[:2]:
            run(batch)  # warm-up
        latencies = []
        started = time.perf_counter()
        for batch in batches:
            t = time.perf_counter()
            run(batch)
            latencies.append(time.perf_counter() - t)
        return Run(f"in-process, batch {size}", len(batches) * size / (time.perf_counter() - started), latencies)

    single = measure(1)
    batched = [measure(size) for size in batch_sizes]
    del sam3
    gc.collect()
    return single, batched


async def load(url: str, images: list[bytes], count: int, concurrency: int, name: str) -> Run:
    """`count` multipart /v1/segment requests, `concurrency` in flight, each one timed."""
    params = json.dumps({"prompt": PROMPT})
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        async def one(i: int) -> tuple[float, bool]:
            t = time.perf_counter()
            response = await http.post("/v1/segment", files={"image": ("image", images[i % len(images)])},
                                       data={"params": params})
            if response.status_code == 200:
                response.json()
            return time.perf_counter() - t, response.status_code == 200

        for i in range(WARMUP):
            await one(i)
        gate = asyncio.Semaphore(concurrency)

        async def gated(i: int) -> tuple[float, bool]:
            async with gate:
                return await one(i)

        started = time.perf_counter()
        results = await asyncio.gather(*(gated(i) for i in range(count)))
        elapsed = time.perf_counter() - started
    ok = [latency for latency, good in results if good]
    return Run(f"{name}, {concurrency} in flight", len(ok) / elapsed, ok, errors=count - len(ok))


@contextlib.contextmanager
def naive_wrapper(model: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "naive_fastapi:app", "--app-dir", str(REPO / "benchmarks"),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "SAMFLEET_NAIVE_MODEL": model}, cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        runner.wait_healthy(url, time.monotonic() + 300)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--requests", type=int, default=192, help="requests per concurrency level")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    args = parser.parse_args()
    model = model_or_tiny(args.model)
    raw = [p.read_bytes() for p in SAMPLES]
    pictures = [Image.open(p).convert("RGB") for p in SAMPLES]

    single, batched = in_process(model, pictures, args.requests, args.batch_sizes)
    ceiling = max([single, *batched], key=lambda r: r.images_per_s)
    with naive_wrapper(model) as url:
        naive = {c: asyncio.run(load(url, raw, args.requests, c, "naive FastAPI")) for c in args.concurrency}
    with running_service(model, replicas=1) as url:  # one model replica: what one GPU serves
        served = {c: asyncio.run(load(url, raw, args.requests, c, "samfleet")) for c in args.concurrency}

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(f"model: {model}   device: {device}   requests per level: {args.requests}   "
          f"images: {', '.join(p.name for p in SAMPLES)} (cycled)")
    print(f"{'':34}{'img/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for run in [single, *batched, *naive.values(), *served.values()]:
        print(f"{run.name:34}{run.images_per_s:8.2f}{run.ms(50):9.1f}{run.ms(95):9.1f}{run.ms(99):9.1f}{run.errors:8d}")
    print(f"\nthroughput ceiling: {ceiling.name} ({ceiling.images_per_s:.2f} img/s)")
    print(f"{'in flight':>10}{'served / ceiling':>18}{'served / naive':>16}{'p50 naive / served':>20}")
    for c in args.concurrency:
        print(f"{c:>10}{served[c].images_per_s / ceiling.images_per_s:18.2f}"
              f"{served[c].images_per_s / naive[c].images_per_s:16.2f}{naive[c].ms(50) / served[c].ms(50):20.2f}")


if __name__ == "__main__":
    main()
