"""Baseline for benchmarks/throughput.py: the single-process FastAPI wrapper teams write today.

    SAMFLEET_NAIVE_MODEL=DIR python -m uvicorn naive_fastapi:app --app-dir benchmarks --port 8001

One process, the model loaded at import, a plain `def` route (FastAPI runs it in its thread
pool, so concurrent requests run the model at the same time in several threads), no batching,
no queue limit.  It answers /v1/segment's multipart form with the same JSON as samfleet, masks
encoded the same way, so the comparison is about serving, not about output.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import torch
from fastapi import FastAPI, Form, UploadFile
from PIL import Image, ImageOps
from transformers import Sam3Model, Sam3Processor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdk.masks import encode_mask  # noqa: E402
from sdk.schema import Instance, SegmentResponse  # noqa: E402

MODEL = os.environ["SAMFLEET_NAIVE_MODEL"]
processor = Sam3Processor.from_pretrained(MODEL)
model = Sam3Model.from_pretrained(MODEL).eval()
app = FastAPI()


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.post("/v1/segment")
def segment(image: UploadFile, params: str = Form("{}")) -> SegmentResponse:
    prompt = json.loads(params)["prompt"]
    picture = ImageOps.exif_transpose(Image.open(io.BytesIO(image.file.read()))).convert("RGB")
    inputs = processor(images=picture, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    (result,) = processor.post_process_instance_segmentation(outputs, threshold=0.5, target_sizes=[picture.size[::-1]])
    instances = [
        Instance(mask=encode_mask(mask.numpy(), "rle"), box=tuple(box.tolist()), score=float(score), label=prompt)
        for mask, box, score in zip(result["masks"], result["boxes"], result["scores"])
    ]
    return SegmentResponse(width=picture.width, height=picture.height, instances=instances, model=MODEL)
