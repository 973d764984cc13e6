"""One command for a GPU machine: is samfleet right and fast there?  (`make gpu-check`)

    python benchmarks/gpu_check.py                 # full-size SAM3, random weights, bfloat16 on the GPU
    python benchmarks/gpu_check.py --model tiny    # the same checks with the tiny model (CI, on CPU)

Builds the full-size random-weight checkpoint once (`.cache/sam3-full-random`, the real
architecture: the trained model's compute; its masks are meaningless), starts the service on
an embedded Ray with one SAM3 replica (bfloat16 and TF32 on a GPU, as SAM3 recommends), and:

1. checks served answers equal transformers' own pipeline run in this process on the same device
   and dtype (counts, scores, boxes and masks within the tolerances of tests/compare.py, widened
   for bfloat16 on a GPU);
2. measures served throughput on 1 MP photos at 32 in flight against the same model's batched
   throughput in this process (the ceiling);
3. measures click latency: the first point prompt on an image and the later ones (embedding cache);
4. tracks a 300-frame 720p clip through the service (frames/s) and reads the GPU's peak memory;
5. reports the cold start: service start to healthy, weights included.

Prints one table and exits 1 if the equality check fails.  Sized to finish within 8 minutes on
one H100/H200 (the tiny model on 2 CPU cores: about 3 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import os
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, SAMPLES, model_or_tiny, running_service
from realistic_load import in_process_ceiling, load, photo

import av
import numpy as np
import torch
from PIL import Image

from sdk import Client, decode_mask
from serving.config import ServiceConfig

FULL_DIR = REPO / ".cache/sam3-full-random"
PROMPT = "thing"


def full_size_model() -> str:
    from serving.tiny_model import FULL_SIZE_NOTICE, build_random_model, is_tiny_model

    if not is_tiny_model(FULL_DIR):
        print(f"building {FULL_DIR} once: {FULL_SIZE_NOTICE}", flush=True)
        build_random_model(FULL_DIR, full_size=True)
    return str(FULL_DIR)


def in_process_reference(model: str, images: list[np.ndarray]) -> list[dict]:
    """transformers alone (no samfleet code) on this machine's device and dtype, threshold 0."""
    from transformers import Sam3Model, Sam3Processor

    from serving.model_loader import resolve_device, resolve_dtype

    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    processor = Sam3Processor.from_pretrained(model)
    sam3 = Sam3Model.from_pretrained(model, dtype=dtype).to(device).eval()
    answers = []
    for image in images:
        inputs = processor(images=Image.fromarray(image), text=PROMPT, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            outputs = sam3(**inputs)
        for name in ("pred_logits", "pred_boxes", "pred_masks", "presence_logits"):
            setattr(outputs, name, getattr(outputs, name).float())
        (result,) = processor.post_process_instance_segmentation(outputs, threshold=0.0,
                                                                 target_sizes=[image.shape[:2]])
        answers.append({k: v.cpu().numpy() for k, v in result.items()})
    del sam3
    return answers


def equality_problems(client: Client, model: str, gpu: bool) -> list[str]:
    images = [np.asarray(Image.open(p).convert("RGB")) for p in SAMPLES]
    expected = in_process_reference(model, images)
    # bfloat16 on a GPU: the replica's batch and the reference differ in more than the last bits.
    score_atol, mask_mismatch = (2e-2, 1e-2) if gpu else (1e-4, 1e-3)
    problems = []
    for path, image, want in zip(SAMPLES, images, expected):
        got = client.segment(image, PROMPT, threshold=0.0)
        if len(got.instances) != len(want["scores"]):
            problems.append(f"{path.name}: {len(got.instances)} instances served, {len(want['scores'])} in-process")
            continue
        for inst in got.instances:
            twin = int(np.abs(want["boxes"].clip(0, None) - np.array(inst.box)).sum(axis=1).argmin())
            differ = float((decode_mask(inst.mask) != want["masks"][twin].astype(bool)).mean())
            if abs(inst.score - want["scores"][twin]) > score_atol or differ > mask_mismatch:
                problems.append(f"{path.name}: score {inst.score:.4f} vs {want['scores'][twin]:.4f}, "
                                f"{differ:.2%} of mask pixels differ")
    return problems


def click_ms(client: Client, clicks: int) -> tuple[float, float]:
    """(median ms of the first click on an image, of the later clicks), one click at a time."""
    rng = np.random.default_rng(0)
    first, later = [], []
    client.segment_points(np.zeros((64, 64, 3), np.uint8), [[1, 1]])  # warm-up on an image of its own
    for path in SAMPLES:
        image = np.asarray(Image.open(path).convert("RGB"))
        for k in range(clicks):
            started = time.perf_counter()
            client.segment_points(image, [[float(rng.uniform(0, image.shape[1])), float(rng.uniform(0, image.shape[0]))]])
            (first if k == 0 else later).append((time.perf_counter() - started) * 1000)
    return statistics.median(first), statistics.median(later)


def clip(frames: int, width: int, height: int) -> bytes:
    """An MPEG-4 clip of the first sample image panning, `frames` frames at 30 fps."""
    base = np.asarray(Image.open(SAMPLES[0]).convert("RGB").resize((width + frames, height)))
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, t:t + width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def video_fps(client: Client, data: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    frames = sum(1 for _ in client.track_video(data, PROMPT))
    return frames / (time.perf_counter() - started), frames


def gpu_memory_mb() -> str:
    """Peak used memory of GPU 0 as nvidia-smi reports it now (the replica is another process)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
        used, total = (float(v) for v in out.split(","))
        return f"{used / 1024:.1f} of {total / 1024:.0f} GiB"
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return "n/a (no GPU)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="'tiny', a local folder or a model id; default: full-size random SAM3")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--clicks", type=int, default=4)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if gpu:  # the reference runs with the service's settings (serving.model_loader.use_tf32)
        from serving.model_loader import use_tf32

        use_tf32()
    model = model_or_tiny(None) if args.model == "tiny" else args.model or full_size_model()
    frames, requests = (args.frames, args.requests) if gpu or args.model != "tiny" else (
        min(args.frames, 30), min(args.requests, 32))
    image = photo(1)
    batch_size = ServiceConfig().batching.max_batch_size
    rows: list[tuple[str, str]] = []
    ceiling = in_process_ceiling(model, image, {"prompt": PROMPT, "threshold": 0.5}, batch_size)
    started = time.perf_counter()
    with running_service(model, replicas=1) as url:
        rows.append(("cold start: service start to healthy", f"{time.perf_counter() - started:.1f} s"))
        # Files as they are: served == in-process compares answers on the same pixels.
        with Client(url, timeout=900, upload="original") as client:
            problems = equality_problems(client, model, gpu)
            rows.append(("served == in-process transformers", "PASS" if not problems else
                         f"FAIL ({len(problems)}): {problems[0]}"))
            served = asyncio.run(load(url, image, {"prompt": PROMPT}, requests, 32))
            rows.append((f"throughput, 1 MP JPEG, 32 in flight ({requests} requests)",
                         f"{served.images_per_s:.1f} img/s = {served.images_per_s / ceiling:.2f} x in-process "
                         f"batch {batch_size} ({ceiling:.1f} img/s); p50 {served.ms(50):.0f} ms, "
                         f"p99 {served.ms(99):.0f} ms"))
            first, later = click_ms(client, args.clicks)
            rows.append(("click latency: first on an image / later (cache)",
                         f"{first:.0f} ms / {later:.0f} ms (x{first / later:.1f})"))
            fps, tracked = video_fps(client, clip(frames, 1280, 720))
            rows.append((f"video: {tracked} frames of 1280x720 tracked", f"{fps:.1f} frames/s"))
            rows.append(("GPU memory in use after the runs", gpu_memory_mb()))
    device = torch.cuda.get_device_name() if gpu else f"CPU ({len(os.sched_getaffinity(0))} cores)"
    print(f"\nsamfleet GPU check: {device}; model {model}; {'bfloat16' if gpu else 'float32'}")
    for what, value in rows:
        print(f"  {what:<58} {value}")
    print(f"  {'total':<58} {time.perf_counter() - started:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
