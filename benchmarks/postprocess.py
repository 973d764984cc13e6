"""Post-processing + encoding of one image's raw SAM3 outputs: the service's crop-wise path against
the whole-image path it replaced (transformers' post_process_instance_segmentation, then each
full-size mask encoded), measured in the same run on the same SAM3-shaped outputs.

    python benchmarks/postprocess.py [--instances 10 50 100 200] [--sizes 1024x768 4000x3000]
                                     [--format rle] [--baseline-max-pixels 700000000]
                                     [--response-instances 200]

Outputs come from serving/synthetic_outputs.py (288x288 low-res logits, realistic sizes, some
cut by the border).  Crop-wise: what the ingress runs, `found_instances` + `segment_response`
(the replica's support windows are made beforehand: on a GPU that is device work).  Each case
runs in a forked child so its peak memory (ru_maxrss above the child's starting RSS) is its own.
The whole-image baseline needs N x H x W x 4 bytes at once; cases above --baseline-max-pixels
(N x H x W) are skipped rather than swapping the machine.  Last, building and serialising the
HTTP answer of --response-instances instances: FastAPI's response_model path against the
ingress's (constructed from validated parts, serialised once).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from types import SimpleNamespace

from common import REPO  # noqa: F401  (puts the repository on sys.path)

import torch
from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

from sdk.masks import encode_mask
from serving.postprocess import found_instances, segment_response
from serving.predictor import RawDetections
from serving.synthetic_outputs import synthetic_detections

PROCESSOR = Sam3ImageProcessor()
REPEATS = 3


def crop_wise(raw: RawDetections, size: tuple[int, int], fmt: str) -> int:
    found = found_instances([raw], [("thing", False)], SimpleNamespace(image_processor=PROCESSOR), height=size[0],
                            width=size[1], mask_threshold=0.5, negative_iou=0.5, negative_containment=0.8)
    return len(segment_response(found, height=size[0], width=size[1], mask_format=fmt, model="m").instances)


def whole_image(outputs: SimpleNamespace, size: tuple[int, int], fmt: str) -> int:
    (result,) = PROCESSOR.post_process_instance_segmentation(outputs, threshold=0.0, mask_threshold=0.5,
                                                             target_sizes=[size])
    return len([encode_mask(m, fmt) for m in result["masks"].numpy().astype(bool)])


def measured(work) -> tuple[float, float]:
    """(best ms of REPEATS, peak MB above the starting RSS), run in a forked child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        start_kb = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        best = float("inf")
        for _ in range(REPEATS):
            t = time.perf_counter()
            work()
            best = min(best, time.perf_counter() - t)
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        os.write(write, f"{best * 1000} {(peak_kb - start_kb) / 1024}".encode())
        os._exit(0)
    os.close(write)
    ms, mb = (float(v) for v in os.read(read, 100).split())
    os.waitpid(pid, 0)
    return ms, max(mb, 0.0)


def response_building(count: int, size: tuple[int, int]) -> tuple[float, float]:
    """(ms as FastAPI's response_model path builds it, ms as the ingress builds it) for one
    /v1/segment answer of `count` RLE instances: routes of a FastAPI app in this process, one
    returning the model for FastAPI to validate and serialise, one returning the body serialised
    once (segment_response's unvalidated construction + model_dump_json), called through
    starlette's TestClient so both pay the same HTTP plumbing."""
    from fastapi import FastAPI
    from fastapi.responses import Response
    from fastapi.testclient import TestClient

    from sdk.schema import Instance, SegmentResponse

    made = synthetic_detections(count, seed=count)
    tensors = {k: torch.from_numpy(v) for k, v in vars(made).items()}
    raw = RawDetections.of(tensors["pred_logits"], tensors["pred_boxes"], tensors["pred_masks"],
                           tensors["presence_logits"], 0.5)
    found = found_instances([raw], [("thing", False)], SimpleNamespace(image_processor=PROCESSOR), height=size[0],
                            width=size[1], mask_threshold=0.5, negative_iou=0.5, negative_containment=0.8)
    found.sort(key=lambda f: f.score, reverse=True)
    masks = [f.encoded("rle") for f in found]  # encoding is measured above; here only the response
    app = FastAPI()

    @app.get("/validated", response_model=SegmentResponse)
    def validated() -> SegmentResponse:
        instances = [Instance(mask=m, box=f.box, score=f.score, label=f.label) for m, f in zip(masks, found)]
        return SegmentResponse(width=size[1], height=size[0], instances=instances, model="m")

    @app.get("/once")
    def once() -> Response:
        return Response(segment_response(found, height=size[0], width=size[1], mask_format="rle",
                                         model="m").model_dump_json(), media_type="application/json")

    timings = []
    with TestClient(app) as http:
        assert http.get("/validated").json() == http.get("/once").json()
        for path in ("/validated", "/once"):
            best = float("inf")
            for _ in range(REPEATS * 3):
                t = time.perf_counter()
                http.get(path)
                best = min(best, time.perf_counter() - t)
            timings.append(best * 1000)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--sizes", nargs="+", default=["1024x768", "4000x3000"])
    parser.add_argument("--format", default="rle", choices=["rle", "png", "polygon"])
    parser.add_argument("--response-instances", type=int, default=200)
    parser.add_argument("--baseline-max-pixels", type=float, default=7e8,
                        help="skip the whole-image baseline above N*H*W (it holds N float32 masks of H*W)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # an ingress replica has one core
    print(f"mask format {args.format}; best of {REPEATS}; one thread; peak = extra memory of the case")
    print(f"{'image':>10}{'N':>5}{'crop-wise ms':>14}{'peak MB':>9}{'whole-image ms':>16}{'peak MB':>9}"
          f"{'speed-up':>10}{'memory':>8}")
    for size_text in args.sizes:
        width, height = (int(v) for v in size_text.split("x"))
        for count in args.instances:
            made = synthetic_detections(count, seed=count)
            tensors = {k: torch.from_numpy(v) for k, v in vars(made).items()}
            raw = RawDetections.of(tensors["pred_logits"], tensors["pred_boxes"], tensors["pred_masks"],
                                   tensors["presence_logits"], 0.5)
            outputs = SimpleNamespace(**{k: v[None] for k, v in tensors.items()})
            new_ms, new_mb = measured(lambda: crop_wise(raw, (height, width), args.format))
            if count * width * height <= args.baseline_max_pixels:
                old_ms, old_mb = measured(lambda: whole_image(outputs, (height, width), args.format))
                old = f"{old_ms:16.1f}{old_mb:9.0f}{old_ms / new_ms:9.0f}x{old_mb / max(new_mb, 1):7.0f}x"
            else:
                old = f"{'skipped':>16}{'':9}{'':10}{'':8}"
            print(f"{size_text:>10}{count:5d}{new_ms:14.1f}{new_mb:9.0f}{old}")
    print(f"\nresponse building, {args.response_instances} RLE instances on {args.sizes[-1]} "
          f"(HTTP plumbing of a TestClient included in both)")
    width, height = (int(v) for v in args.sizes[-1].split("x"))
    fastapi_ms, once_ms = response_building(args.response_instances, (height, width))
    print(f"  FastAPI response_model (validated, serialised by FastAPI): {fastapi_ms:7.1f} ms")
    print(f"  built unvalidated, serialised once (the ingress):         {once_ms:7.1f} ms   x{fastapi_ms / once_ms:.1f}")


if __name__ == "__main__":
    main()
