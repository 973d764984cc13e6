"""Reduced uploads: the SDK sends a photo reduced to what the model sees, with the photo's size,
and gets the answer the original upload gets, in the photo's pixels (README "Reduced uploads")."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco
from scipy.optimize import linear_sum_assignment

from sdk import Client, calls
from sdk.errors import ValidationError
from sdk.images import Encoded, upload_bytes
from sdk.schema import Limits, OriginalSize, PointsParams, SegmentParams
from serving.images import decode_image
from serving.postprocess import logit, point_masks_response, segment_response
from serving.predictor import PointsItem, model_image
from serving.segmentation import plan_segment
from test_bad_input import assert_error, b64, post_json, post_multipart

REPO = Path(__file__).resolve().parents[1]
PHOTO_LIMITS = Limits(max_image_pixels=40_000_000)
PROMPTS = ["person", "cat"]
SAM3_SIDE = 1008  # full-size SAM3's input side, which its /v1/info reports


def photo(name: str, size: tuple[int, int], quality: int = 92, exif: Image.Exif | None = None) -> bytes:
    """A JPEG of an example image at `size` (width, height), as a camera would write it."""
    buffer = io.BytesIO()
    picture = Image.open(REPO / "examples/images" / name).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    picture.save(buffer, "JPEG", quality=quality, **({"exif": exif.tobytes()} if exif else {}))
    return buffer.getvalue()


def rles(response) -> list[dict]:
    return [{"counts": i.mask.counts.encode(), "size": list(i.mask.size)} for i in response.instances]


def matched_ious(a, b) -> np.ndarray:
    """Mask IoU of each instance of `a` with its match in `b` (one-to-one, best total IoU)."""
    ious = np.asarray(coco.iou(rles(a), rles(b), [0] * len(b.instances))).reshape(len(a.instances), -1)
    rows, cols = linear_sum_assignment(-ious)
    return ious[rows, cols]


@pytest.fixture(scope="module")
def pipeline(tiny_model):
    """The ingress's own steps, in-process: decode, plan, the SAM3 replica's predictor, post-process."""
    from transformers import Sam3Processor, Sam3TrackerProcessor

    from serving.config import ServiceConfig
    from serving.model_loader import load_sam3
    from serving.predictor import Sam3Predictor

    predictor = Sam3Predictor(load_sam3(ServiceConfig(model=tiny_model)))
    processor, tracker_processor = (p.from_pretrained(tiny_model) for p in (Sam3Processor, Sam3TrackerProcessor))
    side = processor.image_processor.size.height

    def segment(data: bytes, params: SegmentParams):
        job = plan_segment(decode_image(data, PHOTO_LIMITS), params, PHOTO_LIMITS, lambda p: model_image(p, processor))
        found = job.finish(predictor.segment(job.items), processor)
        return segment_response(found, height=job.size[0], width=job.size[1], mask_format="rle", model="tiny")

    def click(data: bytes, params: PointsParams):
        image = decode_image(data, PHOTO_LIMITS)
        declared = params.original_size
        height, width = (declared.height, declared.width) if declared else image.shape[:2]
        item = PointsItem(image=replace(model_image(image, tracker_processor), original_size=(height, width)),
                          points=[[p.x, p.y] for p in params.points], point_labels=[1] * len(params.points),
                          mask_logit_threshold=logit(0.5))
        (raw,) = predictor.segment_points([item])
        return point_masks_response(raw, height=height, width=width, mask_threshold=0.5, mask_format="rle", model="t")

    return side, segment, click


def reduced(data: bytes, side: int, params):
    upload = upload_bytes(data, side)
    width, height = upload.original_size
    return upload.data, params.model_copy(update={"original_size": OriginalSize(width=width, height=height)})


@pytest.mark.parametrize("name", ["astronaut.jpg", "chelsea.jpg"])
def test_a_12_mp_photo_sent_reduced_gets_the_masks_of_the_original(pipeline, name):
    """Reduced as the SDK reduces for full-size SAM3 (input side 1008); the tiny model then
    shrinks both uploads to its own 112 pixels."""
    _, segment, click = pipeline
    side = SAM3_SIDE
    original = photo(name, (4000, 3000))
    params = SegmentParams(prompts=PROMPTS, threshold=0.2)
    data, reduced_params = reduced(original, side, params)
    assert len(data) * 5 < len(original)  # an upscaled small picture: smooth, so the 12 MP JPEG is small too
    whole, small = segment(original, params), segment(data, reduced_params)
    assert (small.width, small.height) == (whole.width, whole.height) == (4000, 3000)
    assert len(small.instances) == len(whole.instances) > 10
    ious = matched_ious(whole, small)
    print(f"{name}: {len(whole.instances)} instances, mask IoU mean {ious.mean():.4f} min {ious.min():.4f}, "
          f"{len(original)} bytes -> {len(data)}")
    assert ious.mean() >= 0.98 and ious.min() >= 0.95
    # A click and an exemplar box, in the photo's pixels, land on the same object either way.
    at = PointsParams(points=[{"x": 2100, "y": 900}])
    assert matched_ious(click(original, at), click(*reduced(original, side, at))).min() >= 0.95
    exemplar = SegmentParams(prompt="person", exemplars=[{"box": {"x1": 1500, "y1": 300, "x2": 2800, "y2": 1600}}],
                             threshold=0.2)
    boxed, boxed_small = segment(original, exemplar), segment(*reduced(original, side, exemplar))
    assert len(boxed.instances) == len(boxed_small.instances) > 0
    assert matched_ious(boxed, boxed_small).mean() >= 0.95


def test_reduction_is_deterministic_applies_exif_and_keeps_lossless_sources_lossless():
    rotated = Image.Exif()
    rotated[0x0112] = 6  # the camera was held upright: shown 3000 wide, 4000 high
    upright = photo("coffee.jpg", (4000, 3000), exif=rotated)
    first, second = upload_bytes(upright, 112), upload_bytes(upright, 112)
    assert first == second, "the same photo must give the same bytes: the service's embedding cache keys on them"
    assert first.original_size == (3000, 4000)
    sent = Image.open(io.BytesIO(first.data))
    assert (sent.format, sent.size, sent.getexif().get(0x0112)) == ("JPEG", (112, 149), None)
    shown = np.asarray(Image.open(io.BytesIO(decode_photo_as_server(upright))).resize((112, 149)), dtype=float)
    assert np.abs(np.asarray(sent, dtype=float) - shown).mean() < 8, "the upload is the photo as displayed"
    lossless = io.BytesIO()
    Image.open(io.BytesIO(upright)).save(lossless, "PNG")
    assert Image.open(io.BytesIO(upload_bytes(lossless.getvalue(), 112).data)).format == "PNG"
    small = photo("coffee.jpg", (150, 100))
    assert upload_bytes(small, 112).data == small, "an image the model sees whole goes as it is"
    sixteen_bit = io.BytesIO()
    Image.fromarray(np.zeros((300, 400), np.uint16)).save(sixteen_bit, "PNG")
    assert upload_bytes(sixteen_bit.getvalue(), 112).data == sixteen_bit.getvalue(), "the server converts these"
    broken = b"\xff\xd8\xff\xe0 cut off here"
    assert upload_bytes(broken, 112) == Encoded(broken), "what the laptop cannot decode, the service refuses itself"


def decode_photo_as_server(data: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(decode_image(data, PHOTO_LIMITS)).save(buffer, "PNG")
    return buffer.getvalue()


def test_what_the_sdk_sends():
    original = photo("astronaut.jpg", (1200, 900))

    def sent(call) -> tuple[int, str]:
        return len(call.kwargs["files"]["image"][1]), call.kwargs["data"]["params"]

    size, params = sent(calls.segment(original, "cat", reduce_to=112))
    assert size < len(original) / 10 and '"original_size":{"width":1200,"height":900}' in params
    assert sent(calls.segment(original, "cat")) == (len(original), '{"prompt":"cat"}')  # upload="original"
    tiled = calls.segment(original, "cat", tiling={"tile_size": 512}, reduce_to=112)
    assert sent(tiled)[0] == len(original), "tiling needs the photo itself"
    with_reference = calls.segment(original, "cat", reference_image=original, reference_boxes=[[1, 1, 9, 9]],
                                   reduce_to=112)
    assert sent(with_reference)[0] == len(original), "so does a reference image"
    assert '"original_size"' in sent(calls.segment_points(original, [[5, 5]], reduce_to=112))[1]


def test_served_reduced_upload_answers_in_the_photos_pixels(client, service):
    """Through the service (whose limits admit about 1 MP): the SDK asks /v1/info for the model's
    input side once, reduces, and gets the original upload's answer."""
    original = photo("astronaut.jpg", (1150, 860))
    assert client.info().input_size == 112
    whole = client.segment(original, PROMPTS, threshold=0.2, upload="original")
    small = client.segment(original, PROMPTS, threshold=0.2, upload="reduced")
    assert (small.width, small.height) == (whole.width, whole.height) == (1150, 860)
    assert len(small.instances) == len(whole.instances) > 0
    assert matched_ious(whole, small).mean() >= 0.95
    with Client(service) as laptop:  # what a user gets without asking
        assert laptop.segment(original, PROMPTS, threshold=0.2).instances == small.instances
    with pytest.raises(ValidationError, match="upload must be"):
        client.segment(original, "cat", upload="thumbnail")


def test_clicks_on_one_photo_sent_reduced_share_one_embedding(client):
    from test_embedding_cache import encoded

    original = photo("chelsea.jpg", (1100, 800))
    before = encoded(client)
    first = client.segment_points(original, [[500, 300]], upload="reduced")
    second = client.segment_points(original, [[520, 310]], upload="reduced")
    assert encoded(client) == before + 1, "the second click on the reduced photo was encoded again"
    assert (first.width, first.height) == (second.width, second.height) == (1100, 800)


@pytest.mark.parametrize("original_size, status, code, says", [
    ({"width": 800, "height": 450}, 422, "invalid_original_size", "not the 800x450 photo reduced"),
    ({"width": 40, "height": 30}, 422, "invalid_original_size", "must be smaller"),
    ({"width": 40_000, "height": 30_000}, 413, "image_too_large", "the limit is"),
])
def test_an_upload_that_is_not_the_declared_photo_reduced_is_refused(service, original_size, status, code, says):
    upload = photo("astronaut.jpg", (160, 120))
    for response in (post_multipart(service, upload, {"prompt": "cat", "original_size": original_size}),
                     post_json(service, "/v1/segment/points", image=b64(upload), points=[{"x": 1, "y": 1}],
                               original_size=original_size)):
        assert_error(response, status, code, field="original_size", says=says)


def test_tiling_with_a_reduced_upload_is_refused(service):
    r = post_json(service, image=b64(photo("astronaut.jpg", (160, 120))), prompt="cat",
                  tiling={"tile_size": 512, "overlap": 64}, original_size={"width": 800, "height": 600})
    assert_error(r, 422, "invalid_request", says="need the photo itself")
