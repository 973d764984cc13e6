"""The service's real work, served: many instances on large photos, at GPU speed.

    python benchmarks/realistic_load.py [--forward-ms 30] [--instances 0 10 50 100 200]
        [--megapixels 1 12] [--concurrency 32] [--requests 96] [--ingress-replicas 1]
    python benchmarks/realistic_load.py --model tiny --threshold 0.1     # the real tiny SAM3
    python benchmarks/realistic_load.py --model /models/sam3-full-random  # on a GPU

By default the SAM3 deployment is the output double (serving/output_double.py) behind the real
application (same deployments, ingress and packaged Serve config, one SAM3 replica = one GPU):
each batch takes --forward-ms of sleep (a GPU's time, no CPU here) and answers N synthetic
SAM3-shaped instances per image ("N things" prompts).  Its ceiling is max_batch_size per
forward pass.  With --model, the real model answers (N is what it finds at --threshold) and the
ceiling is the same model's batched throughput in this process.

Photos are JPEGs (quality 90) of 1 and 12 MP made from the sample images, with sensor-like
noise so they weigh what phone photos weigh.  Per (photo, N) it prints, in one run: served
img/s against the ceiling, p50/p95/p99 latency, the peak resident memory of the ingress and
SAM3 replica processes, and the ingress's CPU milliseconds per request per stage (from the
`Server-Timing` header each answer carries: decode, preprocess, postprocess, encode, json; plus
the wall time of the model call), with `read` (multipart parsing) and `transfer` (pickling the
model's input and output, as Ray does) measured on the same request in this process.  Last, the
ingress cores one SAM3 replica needs at its ceiling, from those CPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import os
import pickle
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import PHOTO_SIZES, model_or_tiny, photo, running_service

import httpx
import numpy as np
from PIL import Image

from serving.config import BatchingConfig, ServiceConfig
from serving.output_double import build_output_double

STAGES = ("read", "decode", "preprocess", "transfer", "postprocess", "encode", "json")
WARMUP = 8


class MemoryPeaks:
    """Peak resident memory of the ingress and SAM3 replica processes, sampled every 50 ms."""

    NAMES = {"ingress": "ServeReplica:samfleet:Ingress", "model": "ServeReplica:samfleet:SAM3Model"}

    def __init__(self):
        self.peak_mb = dict.fromkeys(self.NAMES, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "MemoryPeaks":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for role, rss in self.now().items():
                self.peak_mb[role] = max(self.peak_mb[role], rss)

    @classmethod
    def now(cls) -> dict[str, float]:
        """Resident MB of each role's processes (summed over replicas)."""
        found = dict.fromkeys(cls.NAMES, 0.0)
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            except OSError:
                continue
            for role, name in cls.NAMES.items():
                if name.encode() in cmdline:
                    found[role] += rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        return found


@dataclass
class Run:
    latencies_s: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    instances: list[int] = field(default_factory=list)
    errors: int = 0
    images_per_s: float = 0.0

    def ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1000 if self.latencies_s else float("nan")

    def stage_ms(self, stage: str) -> float:
        return float(np.median(self.stages[stage])) if self.stages.get(stage) else float("nan")


def server_timing(header: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+);dur=([\d.]+)", header)}


async def load(url: str, image: bytes, params: dict, count: int, concurrency: int) -> Run:
    """`count` multipart /v1/segment requests, `concurrency` in flight, after a warm-up."""
    body = {"params": json.dumps(params)}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    run = Run()
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        async def one(record: bool) -> None:
            t = time.perf_counter()
            response = await http.post("/v1/segment", files={"image": ("photo.jpg", image)}, data=body)
            if not record:
                return
            if response.status_code != 200:
                run.errors += 1
                return
            run.latencies_s.append(time.perf_counter() - t)
            run.instances.append(len(response.json()["instances"]))
            for stage, ms in server_timing(response.headers.get("server-timing", "")).items():
                run.stages.setdefault(stage, []).append(ms)

        await asyncio.gather(*(one(False) for _ in range(WARMUP)))
        gate = asyncio.Semaphore(concurrency)

        async def gated() -> None:
            async with gate:
                await one(True)

        started = time.perf_counter()
        await asyncio.gather(*(gated() for _ in range(count)))
        run.images_per_s = len(run.latencies_s) / (time.perf_counter() - started)
    return run


def read_cpu_ms(image: bytes, params: dict) -> float:
    """CPU ms of the ingress's multipart parsing of one such request (starlette, as served)."""
    from starlette.requests import Request

    files = {"image": ("photo.jpg", image)}
    request = httpx.Request("POST", "http://x/v1/segment", files=files, data={"params": json.dumps(params)})
    body = request.read()
    scope = {"type": "http", "method": "POST", "path": "/v1/segment", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]}

    async def parse() -> None:
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}
        form = await Request(scope, receive).form()
        await form["image"].read()

    started = time.thread_time()
    for _ in range(5):
        asyncio.run(parse())
    return (time.thread_time() - started) * 1000 / 5


def transfer_cpu_ms(image: bytes, params: dict, model: str) -> tuple[float, float]:
    """(CPU ms, MB) of pickling the request's model input and its output and back, as Ray's
    handle call does (protocol 5, buffers out of band), for one request of this kind."""
    from sdk.schema import SegmentParams
    from serving.images import decode_image
    from serving.model_loader import load_processors
    from serving.predictor import model_image
    from serving.segmentation import plan_segment

    processor, _ = load_processors(model)
    limits = ServiceConfig().limits
    job = plan_segment(decode_image(image, limits), SegmentParams.model_validate(params), limits,
                       lambda pixels: model_image(pixels, processor))
    outputs = segmenter(model).segment(job.items)
    started = time.thread_time()
    for _ in range(5):
        for thing in (job.items, outputs):
            buffers: list = []
            pickle.loads(pickle.dumps(thing, protocol=5, buffer_callback=buffers.append), buffers=buffers)
    cpu_ms = (time.thread_time() - started) * 1000 / 5
    size = sum(len(pickle.dumps(thing, protocol=5)) for thing in (job.items, outputs))
    return cpu_ms, size / 2**20


@functools.cache
def segmenter(model: str):
    """What the SAM3 replica runs for `model`, in this process: the double or the predictor."""
    from serving.model_loader import load_sam3
    from serving.output_double import SegmentOutputDouble, is_output_double
    from serving.predictor import Sam3Predictor

    if is_output_double(model):
        return SegmentOutputDouble(model)
    config = ServiceConfig(model=model)
    return Sam3Predictor(load_sam3(config), config.text_cache_entries)


def in_process_ceiling(model: str, image: bytes, params: dict, batch_size: int) -> float:
    """Images/s of the model's own batched forward passes in this process (real models only)."""
    from serving.images import decode_image
    from serving.predictor import SegmentItem, model_image

    predictor = segmenter(model)
    prepared = model_image(decode_image(image, ServiceConfig().limits), predictor.m.processor)
    items = [SegmentItem(prepared, [params["prompt"]], threshold=params["threshold"])] * batch_size
    predictor.segment(items)
    started, passes = time.perf_counter(), 0
    while time.perf_counter() - started < 10 or passes < 3:
        predictor.segment(items)
        passes += 1
    return passes * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="'tiny', a local folder or a model id; default: the output double")
    parser.add_argument("--forward-ms", type=float, default=30.0, help="the double's time per forward pass")
    parser.add_argument("--instances", type=int, nargs="+", default=[0, 10, 50, 100, 200],
                        help="instances per image (the double only)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5],
                        help="score thresholds (real models: the instance count follows from them)")
    parser.add_argument("--megapixels", type=int, nargs="+", default=[1, 12], choices=sorted(PHOTO_SIZES))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=96, help="measured requests per case")
    parser.add_argument("--ingress-replicas", type=int, default=1)
    defaults = ServiceConfig().batching
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--batch-wait-s", type=float, default=defaults.batch_wait_timeout_s)
    args = parser.parse_args()

    batching = BatchingConfig(max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_s)
    double = args.model is None
    model = str(build_output_double(tempfile.mkdtemp(), args.forward_ms)) if double else model_or_tiny(
        None if args.model == "tiny" else args.model)
    photos = {mp: photo(mp) for mp in args.megapixels}
    # A case is (megapixels, instances) for the double, (megapixels, score threshold) for a model.
    cases = [(mp, n) for mp in args.megapixels for n in (args.instances if double else args.thresholds)]

    def params_of(n: float) -> dict:
        return {"prompt": f"{n} things"} if double else {"prompt": "thing", "threshold": n}

    ceilings = {mp: batching.max_batch_size / (args.forward_ms / 1000) if double else
                in_process_ceiling(model, photos[mp], params_of(args.thresholds[0]), batching.max_batch_size)
                for mp in args.megapixels}
    offline = {(mp, n): (read_cpu_ms(photos[mp], params_of(n)),
                         *transfer_cpu_ms(photos[mp], params_of(n), model)) for mp, n in cases}
    runs = {}
    with running_service(model, replicas=1, ingress_replicas=args.ingress_replicas,
                         batching=batching.model_dump()) as url:
        idle = MemoryPeaks.now()
        for mp, n in cases:
            with MemoryPeaks() as memory:
                run = asyncio.run(load(url, photos[mp], params_of(n), args.requests, args.concurrency))
            runs[mp, n] = run, memory.peak_mb

    what = (f"SAM3 output double, {args.forward_ms:g} ms per forward pass" if double else f"model {model}")
    levers = " RAY_SERVE_THROUGHPUT_OPTIMIZED=1;" if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1" else ""
    print(f"{what}; max_batch_size {batching.max_batch_size}, batch_wait_timeout_s {batching.batch_wait_timeout_s};"
          f"{levers} {args.concurrency} in flight; {args.requests} "
          f"requests per case; 1 SAM3 replica, {args.ingress_replicas} ingress replica(s); {os.cpu_count()} cores")
    print(f"photos: " + ", ".join(f"{mp} MP = {Image.open(io.BytesIO(b)).size[0]}x{Image.open(io.BytesIO(b)).size[1]}"
                                  f" JPEG {len(b) / 2**20:.1f} MB" for mp, b in photos.items()))
    print(f"idle RSS: ingress {idle['ingress']:.0f} MB, SAM3 replica {idle['model']:.0f} MB\n")
    print(f"{'MP':>3}{'N' if double else 'thr':>5}{'mean N' if not double else '':>7}{'img/s':>8}{'ceiling':>9}{'ratio':>7}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
          f"{'ingress MB':>11}{'model MB':>9}{'err':>5}  " + "".join(f"{s:>12}" for s in STAGES)
          + f"{'model wall':>11}{'cores/GPU':>10}")
    for (mp, n), (run, peaks) in runs.items():
        read_ms, transfer_ms, transfer_mb = offline[mp, n]
        cpu = {"read": read_ms, "transfer": transfer_ms, **{s: run.stage_ms(s) for s in STAGES[1:] if s != "transfer"}}
        cores = sum(cpu.values()) * ceilings[mp] / 1000
        mean_n = f"{np.mean(run.instances):.1f}" if not double and run.instances else ""
        print(f"{mp:>3}{n:>5}{mean_n:>7}{run.images_per_s:8.1f}{ceilings[mp]:9.1f}{run.images_per_s / ceilings[mp]:7.2f}"
              f"{run.ms(50):8.0f}{run.ms(95):8.0f}{run.ms(99):8.0f}{peaks['ingress']:11.0f}{peaks['model']:9.0f}"
              f"{run.errors:5d}  " + "".join(f"{cpu[s]:12.1f}" for s in STAGES)
              + f"{run.stage_ms('model'):11.1f}{cores:10.1f}")
    print(f"\nstages: CPU ms per request (median); transfer = pickling model input and output "
          f"({', '.join(f'{mp} MP N={n}: {offline[mp, n][2]:.1f} MB' for mp, n in cases[:2])}, ...); "
          f"cores/GPU = ingress CPU per request x ceiling: the ingress cores one SAM3 replica needs")


if __name__ == "__main__":
    main()
