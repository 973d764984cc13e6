"""Served samfleet vs. the same model called in-process through transformers (one run, ratios).

    python benchmarks/serve_vs_inprocess.py [--model DIR_OR_ID] [--requests 48] [--concurrency 8]

Measures, in one process and one run: the cold start of `samfleet serve` (process launch to
first healthy answer), in-process latency/throughput (processor -> model -> post-process, one
image at a time: the per-request baseline), and the served latency (one client) and throughput
(`--concurrency` clients) of the same model over loopback HTTP.  Defaults to the tiny random
model on CPU; pass --model facebook/sam3 (or a local copy) on a GPU machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch
from PIL import Image

from common import REPO, SAMPLES, free_port, model_or_tiny, running_service
from sdk import Client

PROMPT = "cat"


def cold_start(model: str) -> float:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdk.cli", "serve", "--model", model, "--port", str(port)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() - started > 600:
                raise RuntimeError("samfleet serve did not start")
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def in_process(model: str, images: list[np.ndarray], n: int) -> list[float]:
    from transformers import Sam3Model, Sam3Processor

    processor = Sam3Processor.from_pretrained(model)
    sam3 = Sam3Model.from_pretrained(model).eval()
    latencies = []
    for i in range(n + 2):
        image = images[i % len(images)]
        t = time.perf_counter()
        inputs = processor(images=image, text=PROMPT, return_tensors="pt")
        with torch.inference_mode():
            out = sam3(**inputs)
        processor.post_process_instance_segmentation(out, threshold=0.5, target_sizes=[image.shape[:2]])
        if i >= 2:  # first calls warm up
            latencies.append(time.perf_counter() - t)
    return latencies


def served(url: str, images: list[bytes], n: int, concurrency: int) -> tuple[list[float], float]:
    with Client(url) as client:
        for image in images:
            client.segment(image, prompt=PROMPT)  # warm up every replica path

        def one(i: int) -> float:
            t = time.perf_counter()
            client.segment(images[i % len(images)], prompt=PROMPT)
            return time.perf_counter() - t

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(one, range(n)))
        return latencies, n / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    model = model_or_tiny(args.model)
    paths = SAMPLES
    raw = [p.read_bytes() for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]

    start_s = cold_start(model)
    base = in_process(model, arrays, args.requests)
    with running_service(model) as url:
        seq, seq_tput = served(url, raw, args.requests, 1)
        conc, conc_tput = served(url, raw, args.requests, args.concurrency)

    base_tput = len(base) / sum(base)
    print(f"model: {model}   device: {'cuda' if torch.cuda.is_available() else 'cpu'}   "
          f"requests: {args.requests}   images: {', '.join(p.name for p in paths)}")
    print(f"cold start of `samfleet serve` (launch -> healthy): {start_s:.1f} s")
    print(f"{'':34}{'p50 ms':>9}{'p95 ms':>9}{'img/s':>9}{'vs in-process':>15}")
    print(f"{'in-process transformers, 1 by 1':34}{pct(base, 50):9.1f}{pct(base, 95):9.1f}{base_tput:9.2f}{'1.00':>15}")
    print(f"{'served, 1 client':34}{pct(seq, 50):9.1f}{pct(seq, 95):9.1f}{seq_tput:9.2f}"
          f"{seq_tput / base_tput:15.2f}")
    print(f"{f'served, {args.concurrency} clients':34}{pct(conc, 50):9.1f}{pct(conc, 95):9.1f}{conc_tput:9.2f}"
          f"{conc_tput / base_tput:15.2f}")
    print(f"served/in-process p50 latency ratio (1 client): {statistics.median(seq) / statistics.median(base):.2f}")


if __name__ == "__main__":
    main()
