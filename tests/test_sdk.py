"""The SDK against the real service: sync == async == the server's own JSON, every image input
type, result objects, batches with per-item errors."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from compare import assert_results_match
from conftest import free_port
from sdk import APIError, AsyncClient, Client, ConnectionError, RetryPolicy, ValidationError
from sdk.images import image_bytes
from sdk.results import Result

SAMPLE = Path(__file__).resolve().parents[1] / "examples/images/chelsea.jpg"


def server_json(service: str, route: str, image: bytes, **params) -> dict:
    """The service's answer to a plain JSON request, with no SDK involved."""
    body = {"image": base64.b64encode(image).decode(), **params}
    response = httpx.post(f"{service}/v1/{route}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def input_forms(path: Path) -> dict:
    pil = Image.open(path)
    return {"path": path, "str": str(path), "bytes": path.read_bytes(), "pil": pil, "array": np.asarray(pil)}


@pytest.mark.parametrize("form", ["path", "str", "bytes", "pil", "array"])
def test_sync_and_async_equal_server_json(service, client, form):
    expected = server_json(service, "segment", SAMPLE.read_bytes(), prompt="cat", threshold=0.1)
    assert expected["instances"], "the comparison needs instances"
    image = input_forms(SAMPLE)[form]
    assert client.segment(image, prompt="cat", threshold=0.1).model_dump(mode="json") == expected

    async def run():
        async with AsyncClient(service, upload="original") as aclient:
            return await aclient.segment(image, prompt="cat", threshold=0.1)

    assert asyncio.run(run()).model_dump(mode="json") == expected


def test_points_health_info_sync_and_async(service, client):
    expected = server_json(service, "segment/points", SAMPLE.read_bytes(),
                           points=[{"x": 100, "y": 80}, {"x": 10, "y": 10, "label": "negative"}], box=None)
    assert client.segment_points(SAMPLE, [[100, 80], [10, 10]], labels=[1, 0]).model_dump(mode="json") == expected

    async def run():
        async with AsyncClient(service, upload="original") as aclient:
            return (await aclient.segment_points(SAMPLE, [[100, 80], [10, 10]], labels=[1, 0]),
                    await aclient.health(), await aclient.info())

    points, health, info = asyncio.run(run())
    assert points.model_dump(mode="json") == expected
    assert health == client.health()
    assert info.tiny_random_model and info.model == client.info().model


def test_result_masks_png_overlay_and_coco(client, tmp_path):
    result = client.segment(SAMPLE, prompt="cat", threshold=0.1)
    n = len(result.instances)
    assert n > 1
    width, height = Image.open(SAMPLE).size
    assert result.masks.shape == (n, height, width) and result.masks.dtype == bool
    assert result.boxes.shape == (n, 4) and list(result.scores) == sorted(result.scores, reverse=True)

    ids = np.asarray(Image.open(result.save_png(tmp_path / "ids.png")))
    assert ids.shape == (height, width) and ids.max() <= n
    for k, inst in enumerate(result.instances, start=1):  # each pixel belongs to the best instance covering it
        best_first = result.masks[:k - 1].any(axis=0)
        np.testing.assert_array_equal(ids[inst.array & ~best_first], k)
    assert not ids[~result.masks.any(axis=0)].any()
    categories = np.asarray(Image.open(result.save_png(tmp_path / "cat.png", kind="category")))
    np.testing.assert_array_equal(categories, np.where(ids > 0, 1, 0))

    drawn = result.overlay()  # the client remembered the image
    assert drawn.size == (width, height)
    assert np.abs(np.asarray(drawn, dtype=int) - np.asarray(Image.open(SAMPLE).convert("RGB"), dtype=int)).sum() > 0

    (tmp_path / "coco.json").write_text(json.dumps(result.to_coco(image_id=7, file_name=SAMPLE.name)))
    coco = COCO(str(tmp_path / "coco.json"))
    assert coco.getImgIds() == [7] and [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat"]
    for ann, inst in zip(coco.loadAnns(coco.getAnnIds(imgIds=[7])), result.instances):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), inst.array)
        assert ann["score"] == inst.score


def test_overlay_needs_an_image_when_result_has_none(client):
    bare = Result.model_validate_json(client.segment(SAMPLE, prompt="cat").model_dump_json())
    with pytest.raises(ValueError, match="pass it"):
        bare.overlay()
    assert bare.overlay(SAMPLE).size == Image.open(SAMPLE).size


def batch_inputs(images) -> list:
    good = [Image.fromarray(image) for image in images]
    return good[:2] + [b"this is not an image"] + good[2:] + [SAMPLE]


def test_segment_many_ordered_with_a_bad_image(client, images, capfd):
    inputs = batch_inputs(images)
    items = list(client.segment_many(inputs, prompt="dog", threshold=0.0, concurrency=3))
    assert [item.index for item in items] == list(range(len(inputs)))
    bad = items[2]
    assert isinstance(bad.error, APIError) and bad.error.status == 422 and "not a decodable" in bad.error.message
    for item in items[:2] + items[3:]:
        assert item.ok
        assert_results_match(item.result, client.segment(item.image, prompt="dog", threshold=0.0))
    progress = capfd.readouterr().err
    assert f"{len(inputs)}/{len(inputs)}" in progress and "failed=1" in progress


def test_segment_many_as_completed_async(service, images):
    inputs = batch_inputs(images)

    async def run():
        async with AsyncClient(service, upload="original") as aclient:
            return [item async for item in aclient.segment_many(inputs, prompt="dog", threshold=0.0, concurrency=4,
                                                                 ordered=False, progress=False)]

    items = asyncio.run(run())
    assert sorted(item.index for item in items) == list(range(len(inputs)))
    assert [item.index for item in items if not item.ok] == [2]


def test_segment_points_many_and_early_close(client, images):
    inputs = [Image.fromarray(image) for image in images] * 3
    items = list(client.segment_points_many(inputs, [[20, 20]], concurrency=2, progress=False))
    assert all(item.ok and len(item.result.instances) == 1 for item in items)
    with client.segment_many(inputs, prompt="cat", concurrency=2, progress=False) as batch:
        first = next(batch)  # leaving the block cancels the rest without hanging
    assert first.index == 0 and first.ok


def test_segment_many_raises_what_the_callers_iterator_raises(client, images):
    """An error from the caller's own iterable is not a quietly shorter batch."""

    def two_then_raise():
        yield from (Image.fromarray(image) for image in images[:2])
        raise OSError("the caller's listing failed")

    delivered = []
    with pytest.raises(OSError, match="listing failed"):
        for item in client.segment_many(two_then_raise(), prompt="cat", concurrency=4, progress=False):
            delivered.append(item)
    assert [item.index for item in delivered] == [0, 1] and all(item.ok for item in delivered)


def test_bad_parameters_fail_before_sending(client):
    with pytest.raises(ValidationError, match="x2 > x1"):
        client.segment(SAMPLE, exemplars=[[50, 50, 10, 10]])
    with pytest.raises(ValidationError, match="2 points but 1 labels"):
        client.segment_points(SAMPLE, [[1, 1], [2, 2]], labels=[1])
    with pytest.raises(ValidationError, match="text prompt, box exemplars"):
        client.segment_many([SAMPLE])
    with pytest.raises(ValidationError, match="finite number"):
        client.segment_points(SAMPLE, [[float("nan"), 1]])
    with pytest.raises(TypeError, match="unsupported image type"):
        client.segment(12345, prompt="cat")


def test_unreachable_service_is_a_connection_error(images):
    with Client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(max_retries=2, base_delay_s=0.01)) as dead:
        with pytest.raises(ConnectionError, match="cannot reach samfleet"):
            dead.health()
        with pytest.raises(ConnectionError):  # a dead service ends a batch instead of failing every image
            list(dead.segment_many([Image.fromarray(images[0])] * 5, prompt="cat", progress=False))


def test_a_host_that_never_answers_fails_at_the_connect_timeout_not_the_request_timeout():
    """A black-holed host (SYNs dropped): a loopback listener whose accept queue is full drops
    them as such a host does.  Each attempt gives up at the connect timeout, not at the request's
    120 s (six attempts of which made a dead host take twelve minutes to report), and the error
    says the service cannot be reached, so a batch ends at once."""
    import socket
    import time

    from sdk.transport import Settings

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        queued = []
        while True:  # until the accept queue is full: the next SYN is dropped
            try:
                queued.append(socket.create_connection(listener.getsockname(), timeout=0.5))
            except OSError:  # TimeoutError: the queue is full
                break
        settings = Settings(url=url, timeout_s=120, connect_timeout_s=1,
                            retry=RetryPolicy(max_retries=1, base_delay_s=0.01))

        async def health():
            async with AsyncClient(settings=settings) as client:
                return await client.health()

        async def batch():
            async with AsyncClient(settings=settings) as client:
                return [item async for item in client.segment_many([SAMPLE] * 20, "cat", concurrency=2, progress=False)]

        for call in (health, batch):  # a batch ends at once: its images are not each tried in turn
            started = time.monotonic()
            with pytest.raises(ConnectionError, match="cannot reach samfleet"):
                asyncio.run(call())
            assert time.monotonic() - started < settings.unreachable_after_s() + 5 < 120
        for connection in queued:
            connection.close()


def test_environment_supplies_url_and_key(service, monkeypatch):
    monkeypatch.setenv("SAMFLEET_URL", service)
    monkeypatch.setenv("SAMFLEET_API_KEY", "k-123")
    with Client() as c:
        assert c.settings.url == service and c.settings.api_key == "k-123"
        assert c.health().status == "ok"
    with Client(api_key="") as c:  # no key, whatever the environment says
        assert c.settings.api_key is None and "authorization" not in c._http.headers


def test_images_sent_as_png_are_lossless():
    pixels = (np.random.default_rng(3).random((40, 50, 3)) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(image_bytes(pixels)))), pixels)
