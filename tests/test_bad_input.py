"""Bad input gets a 4xx JSON error naming the problem, and the service keeps serving."""

from __future__ import annotations

import base64
import io
import json
import math

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import TEST_LIMITS
from sdk import APIError
from sdk.schema import Limits, PointsRequest, SegmentRequest
from serving.http import check_json_values, json_value_budget


def png(width=64, height=48, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128 if mode != "1" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def post_json(url, path="/v1/segment", **body):
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def post_multipart(url, data: bytes, params: dict, path="/v1/segment"):
    return httpx.post(f"{url}{path}", files={"image": ("x", data)}, data={"params": json.dumps(params)}, timeout=60)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_error(response, status, code, *, field=None, says=""):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    if field is not None:
        assert error["field"] == field
    assert says.lower() in error["message"].lower(), error["message"]


@pytest.fixture(autouse=True)
def still_serving(service, client):
    yield
    assert httpx.get(f"{service}/healthz").json() == {"status": "ok"}
    assert client.segment(np.zeros((32, 32, 3), np.uint8), prompt="ok").width == 32


def test_corrupt_image(service):
    truncated = png(200, 200)[:80]
    assert_error(post_json(service, image=b64(truncated), prompt="cat"), 422, "invalid_image", field="image", says="corrupt")


def test_non_image_bytes(service):
    r = post_multipart(service, b"%PDF-1.4 definitely not an image", {"prompt": "cat"})
    assert_error(r, 422, "invalid_image", field="image", says="not a decodable")


def test_empty_image(service):
    assert_error(post_json(service, image="", prompt="cat"), 422, "invalid_image", says="empty")


def test_invalid_base64(service):
    assert_error(post_json(service, image="***not base64***", prompt="cat"), 422, "invalid_image", says="base64")


def test_empty_prompt(service):
    assert_error(post_json(service, image=b64(png()), prompt="   "), 422, "invalid_request", field="prompt", says="empty")


def test_no_prompt_at_all(service):
    assert_error(post_json(service, image=b64(png())), 422, "invalid_request", says="text prompt, box exemplars")


def test_oversized_prompt(service):
    r = post_json(service, image=b64(png()), prompt="x" * (TEST_LIMITS["max_prompt_chars"] + 1))
    assert_error(r, 422, "prompt_too_long", field="prompt", says=str(TEST_LIMITS["max_prompt_chars"]))


def test_too_many_exemplars(service):
    boxes = [{"box": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}}] * (TEST_LIMITS["max_exemplars"] + 1)
    assert_error(post_json(service, image=b64(png()), exemplars=boxes), 422, "too_many_exemplars")


def test_exemplar_outside_image(service):
    box = {"box": {"x1": 10, "y1": 10, "x2": 500, "y2": 20}}
    r = post_json(service, image=b64(png(64, 48)), exemplars=[box])
    assert_error(r, 422, "out_of_bounds", field="exemplars.0.box", says="64x48")


def test_inverted_box(service):
    box = {"box": {"x1": 30, "y1": 10, "x2": 5, "y2": 20}}
    r = post_json(service, image=b64(png()), exemplars=[box])
    assert_error(r, 422, "invalid_request", field="exemplars.0.box", says="x2 > x1")


def test_point_outside_image(service):
    r = post_json(service, "/v1/segment/points", image=b64(png(64, 48)), points=[{"x": 10, "y": 49}])
    assert_error(r, 422, "out_of_bounds", field="points")


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/segment/points", {"points": [{"x": math.nan, "y": 1}]}, "points.0.x"),
        ("/v1/segment/points", {"points": [{"x": 1, "y": 1}], "box": {"x1": 1, "y1": 1, "x2": math.inf, "y2": 9}}, "box.x2"),
        ("/v1/segment", {"prompt": "cat", "threshold": math.nan}, "threshold"),
        ("/v1/segment", {"exemplars": [{"box": {"x1": -math.inf, "y1": 1, "x2": 5, "y2": 5}}]}, "exemplars.0.box.x1"),
    ],
)
def test_non_finite_numbers_are_refused_with_the_field_named(service, path, body, field):
    """JSON as Python writes it (NaN, Infinity): in a JSON body and in a multipart `params`."""
    as_json = json.dumps({"image": b64(png()), **body})  # httpx's json= refuses to write NaN
    r = httpx.post(f"{service}{path}", content=as_json, headers={"content-type": "application/json"}, timeout=60)
    assert_error(r, 422, "invalid_request", field=field, says="finite")
    r = post_multipart(service, png(), body, path)
    assert_error(r, 422, "invalid_request", field=f"params.{field}", says="finite")


def test_too_many_points(service):
    points = [{"x": 1, "y": 1}] * (TEST_LIMITS["max_points"] + 1)
    assert_error(post_json(service, "/v1/segment/points", image=b64(png()), points=points), 422, "too_many_points")


def test_a_list_far_over_its_limit_is_refused_before_it_is_parsed(service):
    """A body of points up to the payload limit: counted in its bytes and refused, not parsed into
    a million objects (seconds and gigabytes on the ingress's event loop) to be refused after."""
    point = {"x": 1, "y": 1}
    in_json = [point] * ((TEST_LIMITS["max_payload_bytes"] - 1000) // len(json.dumps(point)))
    r = post_json(service, "/v1/segment/points", image=b64(png()), points=in_json)
    assert_error(r, 413, "params_too_large", field="params", says="admit at most")
    in_form = in_json[: 900_000 // len(json.dumps(point))]  # starlette's limit on a form field: 1 MB
    r = post_multipart(service, png(), {"points": in_form}, "/v1/segment/points")
    assert_error(r, 413, "params_too_large", field="params")


@pytest.mark.parametrize("limits", [Limits(), Limits.model_validate(TEST_LIMITS)], ids=["default", "test"])
def test_requests_at_every_limit_fit_the_value_budget(limits):
    """The separator count never refuses what the limits admit: every list full, every prompt
    made of nothing but separators, tiling and two data URLs."""
    text = ",{[" * (limits.max_prompt_chars // 3)
    box = {"x1": 1.5, "y1": 1.5, "x2": 5.5, "y2": 5.5}
    half = limits.max_exemplars // 2
    common = {"image": "data:image/png;base64,AAAA", "threshold": 0.3, "mask_format": "polygon"}
    prompts = SegmentRequest(**common, tiling={"tile_size": 512, "overlap": 64}, prompts=[text] * (limits.max_prompts // 2),
                             negative_prompts=[text] * (limits.max_prompts - limits.max_prompts // 2))
    exemplars = SegmentRequest(**common, prompt=text, negative_prompts=[text] * (limits.max_prompts - 1),
                               reference_image="data:image/png;base64,AAAA", exemplars=[{"box": box}] * half,
                               reference_exemplars=[{"box": box, "label": "negative"}] * (limits.max_exemplars - half))
    points = PointsRequest(image="AAAA", points=[{"x": 1.5, "y": 2.5, "label": "negative"}] * limits.max_points, box=box,
                           multimask=True)
    for request in (prompts, exemplars, points):
        raw = request.model_dump_json().encode()
        check_json_values(raw, limits)  # does not raise
        assert raw.count(b",") + raw.count(b"{") + raw.count(b"[") < json_value_budget(limits)


def test_image_over_pixel_limit_is_refused_before_decoding(service):
    # A 1-bit 4000x4000 PNG is a few KB on the wire but 16 M pixels: a decompression bomb.
    bomb = png(4000, 4000, mode="1")
    assert len(bomb) < 100_000
    r = post_multipart(service, bomb, {"prompt": "cat"})
    assert_error(r, 413, "image_too_large", field="image", says=str(TEST_LIMITS["max_image_pixels"]))


def test_payload_over_size_limit(service):
    big = b"\0" * (TEST_LIMITS["max_payload_bytes"] + 1)
    r = post_multipart(service, big, {"prompt": "cat"})
    assert_error(r, 413, "payload_too_large", says=str(TEST_LIMITS["max_payload_bytes"]))


def test_chunked_payload_over_size_limit(service):
    def chunks():
        for _ in range(TEST_LIMITS["max_payload_bytes"] // 65536 + 2):
            yield b"a" * 65536

    r = httpx.post(f"{service}/v1/segment", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert_error(r, 413, "payload_too_large")


def test_wrong_content_type(service):
    r = httpx.post(f"{service}/v1/segment", content=b"prompt=cat", headers={"content-type": "text/plain"})
    assert_error(r, 415, "unsupported_media_type", says="text/plain")


def test_unknown_field_json(service):
    r = post_json(service, image=b64(png()), prompt="cat", treshold=0.3)
    assert_error(r, 422, "invalid_request", field="treshold", says="extra inputs")


def test_unknown_field_multipart_params(service):
    r = post_multipart(service, png(), {"prompt": "cat", "colour": "red"})
    assert_error(r, 422, "invalid_request", field="params.colour")


def test_multipart_without_image(service):
    r = httpx.post(f"{service}/v1/segment", files={"params": (None, '{"prompt": "cat"}')})
    assert_error(r, 422, "invalid_request", field="image")


@pytest.mark.parametrize("body", [b"garbage", b"--xyz\r\nContent-Disposition form-data\r\n\r\nabc\r\n--xyz--\r\n"])
def test_malformed_multipart_is_a_400_naming_it(service, body):
    """Found by the schemathesis fuzz test: the multipart parser's own errors were answered 500."""
    r = httpx.post(f"{service}/v1/segment", content=body,
                   headers={"content-type": "multipart/form-data; boundary=xyz"}, timeout=60)
    assert_error(r, 400, "invalid_multipart", says="malformed multipart body")


def test_malformed_json(service):
    r = httpx.post(f"{service}/v1/segment", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_request", says="json")


def test_threshold_out_of_range(service):
    assert_error(post_json(service, image=b64(png()), prompt="cat", threshold=1.5), 422, "invalid_request", field="threshold")


def test_unknown_route(service):
    assert_error(httpx.get(f"{service}/v2/segment"), 404, "not_found")


def test_sdk_raises_api_error_with_server_message(client):
    with pytest.raises(APIError) as raised:
        client.segment(b"not an image", prompt="cat")
    assert raised.value.status == 422
    assert raised.value.code == "invalid_image"
    assert "not a decodable" in raised.value.message


def test_exif_orientation_is_honoured(client):
    image = Image.new("RGB", (60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the upright picture is 40 wide, 60 high
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    result = client.segment(buffer.getvalue(), prompt="cat")
    assert (result.width, result.height) == (40, 60)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _unusual(mode: str) -> tuple[bytes, np.ndarray]:
    """(file in `mode`, the 8-bit RGB pixels a viewer shows for it)."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8))
    if mode == "I;16":
        gray = (rng.random((48, 64)) * 65535).astype(np.uint16)
        return _encoded(Image.fromarray(gray), "PNG"), np.repeat((gray / 257).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        gray = rng.random((48, 64)).astype(np.float32) * 0.5 + 0.25
        scaled = ((gray - gray.min()) / (gray.max() - gray.min()) * 255).astype(np.uint8)
        return _encoded(Image.fromarray(gray), "TIFF"), np.repeat(scaled[..., None], 3, axis=2)
    data = _encoded(rgb.convert(mode), "JPEG" if mode == "CMYK" else "PNG")
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("mode", ["I;16", "F", "CMYK", "P", "LA", "RGBA"])
def test_unusual_image_modes_are_segmented_as_a_viewer_shows_them(client, reference, mode):
    """16-bit and float scans are scaled into 8 bits (not clipped white/black), CMYK converted."""
    import reference as ref_impl
    from test_served_equals_inprocess import assert_same_instances

    data, shown = _unusual(mode)
    served = client.segment(data, prompt="cat", threshold=0.0)
    assert_same_instances(served, ref_impl.segment(reference, shown, prompt="cat", threshold=0.0), shown)


def test_openapi_documents_both_encodings(service):
    spec = httpx.get(f"{service}/openapi.json").json()
    body = spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "SegmentRequest" in spec["components"]["schemas"]
    assert httpx.get(f"{service}/docs").status_code == 200
