"""Bounded soak: a fixed number of requests kept above the model's queue capacity for minutes;
does memory stay flat, and does every request end in an answer?

    python benchmarks/soak.py [--requests 16000] [--concurrency 64] [--ongoing 16] [--queue 16]

Starts samfleet (embedded Ray, packaged Serve config with SAM3Model's max_ongoing_requests and
max_queued_requests set to --ongoing and --queue so that --concurrency overflows them), sends --requests segment requests through
raw httpx (no retries, so overflow shows as 503s), and samples the resident memory of the
service's Ray worker processes every few seconds.  Prints answers by status, the 503s' latency
(they must come back at once), and memory after warm-up vs. at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import httpx
import numpy as np
import psutil

from common import SAMPLES, free_port, model_or_tiny
from serving import runner

SAMPLE_EVERY_S = 5.0


def service_rss_mib() -> float:
    """Resident memory of this process's Ray workers (the replicas), the raylet excluded."""
    workers = [p for p in psutil.Process().children(recursive=True) if "ray::" in " ".join(p.cmdline()[:1])]
    return sum(p.memory_info().rss for p in workers) / 2**20


async def soak(url: str, images: list[bytes], count: int, concurrency: int) -> tuple[Counter, list[float], list[tuple[float, float]]]:
    statuses: Counter = Counter()
    refused_s: list[float] = []
    memory: list[tuple[float, float]] = []
    params = json.dumps({"prompt": "cat"})
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def sample() -> None:
        while True:
            memory.append((time.monotonic() - started, service_rss_mib()))
            await asyncio.sleep(SAMPLE_EVERY_S)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as http:
        async def one(i: int) -> None:
            async with gate:
                t = time.perf_counter()
                try:
                    response = await http.post("/v1/segment", files={"image": ("i", images[i % len(images)])},
                                               data={"params": params})
                    statuses[response.status_code] += 1
                    if response.status_code == 503:
                        refused_s.append(time.perf_counter() - t)
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(one(i) for i in range(count)))
        sampler.cancel()
    memory.append((time.monotonic() - started, service_rss_mib()))
    return statuses, refused_s, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=16000, help="about 5 minutes on a 2-core CPU")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--ongoing", type=int, default=16, help="SAM3Model max_ongoing_requests during the soak")
    parser.add_argument("--queue", type=int, default=16, help="SAM3Model max_queued_requests during the soak")
    args = parser.parse_args()
    settings = runner.load_settings(model=model_or_tiny(args.model), port=free_port())
    # A smaller replica than packaged, so that --concurrency overflows ongoing + queued at once.
    settings.deployment_options["SAM3Model"].update(max_ongoing_requests=args.ongoing, max_queued_requests=args.queue)
    runner.start(settings)
    try:
        images = [p.read_bytes() for p in SAMPLES]
        asyncio.run(soak(settings.url, images, 50, 4))  # warm-up: replicas loaded, caches filled
        started = time.monotonic()
        statuses, refused_s, memory = asyncio.run(soak(settings.url, images, args.requests, args.concurrency))
        elapsed = time.monotonic() - started
    finally:
        runner.stop()
    first, middle, last = memory[0][1], memory[len(memory) // 2][1], memory[-1][1]
    print(f"{args.requests} requests, {args.concurrency} in flight, model replica {args.ongoing} ongoing + "
          f"{args.queue} queued: {elapsed:.0f} s")
    print("answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str)))
    if refused_s:
        print(f"503 latency: p50 {np.percentile(refused_s, 50) * 1000:.0f} ms, p99 {np.percentile(refused_s, 99) * 1000:.0f} ms")
    print(f"Ray workers' memory: {first:.0f} MiB after warm-up, {middle:.0f} MiB half-way, {last:.0f} MiB at the end "
          f"(second half {(last - middle) / middle:+.1%}); peak {max(m for _, m in memory):.0f} MiB over "
          f"{len(memory)} samples")


if __name__ == "__main__":
    main()
