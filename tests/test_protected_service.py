"""A service configured unlike the shared one: as it is exposed (API keys required, a queue of 2
so that a burst overflows it, under a route prefix as behind a shared gateway, image bodies
limited below the videos it tracks) and with the embedding cache off.  Real service in its own
process (its own Ray)."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
import yaml

from conftest import one_model_replica
from sdk import APIError, Client, RetryPolicy
from sdk.schema import TrackLine, VideoSummary
from serving.auth import new_key
from service_process import service_process
from test_bad_input import assert_error, png
from video_double import moving_squares_clip

pytestmark = pytest.mark.service
BURST = 40


KEY, KEY_HASH = new_key()
PREFIX = "/sam3"
IMAGE_BODY_LIMIT = 16 * 1024  # below a 100-frame test clip (19 KB), which the video limit admits


@pytest.fixture(scope="module")
def protected(tmp_path_factory, tiny_model):
    """(URL, the service's stderr file) of a service needing KEY, with a queue of 2, under PREFIX."""
    from serving.runner import default_config_path

    tmp = tmp_path_factory.mktemp("protected")
    raw = yaml.safe_load(default_config_path().read_text())
    app = raw["applications"][0]
    app["args"].update(model=tiny_model, batching={"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
                       auth={"api_key_hashes": [KEY_HASH]}, embedding_cache_mb=0)
    app["args"]["limits"]["max_payload_bytes"] = IMAGE_BODY_LIMIT
    app["route_prefix"] = PREFIX
    one_model_replica(app, max_ongoing_requests=1, max_queued_requests=2, backpressure_config={"retry_after_s": 1})
    config = tmp / "protected.yaml"
    config.write_text(yaml.safe_dump(raw))
    with service_process(config, tmp / "service.log") as running:
        assert running.url.endswith(PREFIX)
        yield running.url, running.log


async def burst(url: str, path: str, **request) -> list[tuple[int, float, httpx.Response]]:
    """BURST requests at once: (status, seconds, response) of each."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers,
                                 limits=httpx.Limits(max_connections=BURST)) as http:
        async def one():
            started = time.perf_counter()
            response = await http.post(path, **request)
            return response.status_code, time.perf_counter() - started, response

        return await asyncio.gather(*(one() for _ in range(BURST)))


def assert_refused_at_once(results: list[tuple[int, float, httpx.Response]]) -> None:
    """Some requests served, the others refused with 503 `overloaded` and Retry-After, quickly."""
    statuses = sorted({status for status, _, _ in results})
    assert statuses == [200, 503], statuses
    refused = [(took, r) for status, took, r in results if status == 503]
    served = [took for status, took, _ in results if status == 200]
    for _, response in refused:
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "overloaded"
    # Refusals come back at once; they do not wait for the queue to drain.
    assert np.median([took for took, _ in refused]) < np.median(served)


def test_full_queue_answers_503_with_retry_after_and_the_sdk_gets_through(protected):
    url, _ = protected
    image = png(320, 240)
    assert_refused_at_once(asyncio.run(burst(url, "/v1/segment", files={"image": ("i", image)},
                                             data={"params": '{"prompt": "x"}'})))
    with Client(url, api_key=KEY, retry=RetryPolicy(max_retries=30, base_delay_s=0.2, max_delay_s=2)) as client:
        items = list(client.segment_many([image] * BURST, "x", concurrency=BURST, progress=False))
    assert [item.error for item in items if not item.ok] == []


def test_api_key_is_required_everywhere_but_healthz_and_the_docs(protected):
    """Under the route prefix too: the open paths are matched on the app's own path."""
    url, log = protected
    assert httpx.get(f"{url}/healthz").status_code == 200
    for path in ("/v1/info", "/v1/status"):
        assert_error(httpx.get(f"{url}{path}"), 401, "unauthorized", says="needs an API key")
    wrong = httpx.get(f"{url}/v1/info", headers={"Authorization": "Bearer sf_not-the-key"})
    assert_error(wrong, 401, "unauthorized", says="not valid")
    assert wrong.headers["www-authenticate"] == "Bearer"
    # Refused before the body is read: a body over the size limit gets 401, not 413.
    huge = httpx.post(f"{url}/v1/segment", content=b"x" * 40_000_000, headers={"content-type": "application/json"})
    assert_error(huge, 401, "unauthorized")
    with Client(url) as anonymous, pytest.raises(APIError) as refused:
        anonymous.segment(png(), "cat")
    assert refused.value.status == 401 and "API key" in refused.value.message
    with Client(url, api_key=KEY) as client:
        assert client.info().model == client.segment(png(), "cat").model
    assert KEY not in log.read_text(), "the key was logged"


def test_docs_open_without_a_key_and_declare_bearer_auth(protected):
    """A browser opening /docs sends no key; the document then tells Swagger's "Authorize" button
    that every route but the open ones needs one, so "Try it out" works on a keyed service."""
    url, _ = protected
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and f"{PREFIX}/openapi.json" in docs.text
    spec = httpx.get(f"{url}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["apiKey"]["description"]}
    assert spec["security"] == [{"apiKey": []}]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in spec["paths"]["/v1/segment"]["post"]  # the document-wide requirement holds
    # What "Authorize" then sends is accepted:
    info = httpx.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {KEY}"})
    assert info.status_code == 200


def test_videos_get_their_own_body_limit_under_the_prefix(protected):
    url, _ = protected
    clip = moving_squares_clip(100)[0]
    assert len(clip) > IMAGE_BODY_LIMIT
    headers = {"Authorization": f"Bearer {KEY}"}
    tracked = httpx.post(f"{url}/v1/video/track", files={"video": ("clip.mkv", clip)},
                         data={"params": '{"points": [{"x": 8, "y": 8}]}'}, headers=headers, timeout=120)
    assert tracked.status_code == 200, tracked.text
    assert isinstance(TrackLine.model_validate_json(tracked.text.splitlines()[-1]).root, VideoSummary)
    image = httpx.post(f"{url}/v1/segment", files={"image": ("i", b"x" * (IMAGE_BODY_LIMIT + 1))},
                       data={"params": '{"prompt": "x"}'}, headers=headers)
    assert_error(image, 413, "payload_too_large")


def track_request(frames: int) -> dict:
    """httpx's arguments for a /v1/video/track request: a clip of `frames` frames, one click."""
    return {"files": {"video": ("clip.mkv", moving_squares_clip(frames)[0])},
            "data": {"params": '{"points": [{"x": 8, "y": 8}]}'}}


def test_full_queue_refuses_video_tracking_with_503_not_a_failed_stream(protected):
    url, _ = protected
    results = asyncio.run(burst(url, "/v1/video/track", **track_request(4)))
    assert_refused_at_once(results)
    for status, _, response in results:
        if status == 200:  # every stream that started ran to its summary
            assert isinstance(TrackLine.model_validate_json(response.text.splitlines()[-1]).root, VideoSummary)


def test_info_with_the_replica_busy_and_its_queue_full_is_503_not_500(protected):
    """/v1/info asks the model replica too (`samfleet annotate` calls it first), so it answers a
    full queue as every other route does.  One video streaming on the replica and two queued
    behind it fill the replica (1 ongoing) and its queue (2); those two are short, as only their
    place in the queue counts."""
    url, _ = protected
    long, short = track_request(100), track_request(4)

    async def run() -> tuple[list[httpx.Response], list[int]]:
        async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as http:
            async with http.stream("POST", "/v1/video/track", **long) as first:
                lines = first.aiter_lines()
                await anext(lines)  # the first video is on the replica
                queued = [asyncio.create_task(http.post("/v1/video/track", **short)) for _ in range(2)]
                await asyncio.sleep(1)
                infos = [await http.get("/v1/info") for _ in range(3)]
                last = [line async for line in lines][-1]
            assert isinstance(TrackLine.model_validate_json(last).root, VideoSummary), "the first video was cut"
            return infos, [(await task).status_code for task in queued]

    infos, queued = asyncio.run(run())
    assert queued == [200, 200], "the two queued videos were refused: the queue was not what this test needs"
    for info in infos:
        assert_error(info, 503, "overloaded")
        assert info.headers["retry-after"] == "1"


def test_with_the_embedding_cache_off_every_click_is_encoded(protected):
    """The control for tests/test_embedding_cache.py: `embedding_cache_mb: 0` reaches the replica,
    and then every click on the same image runs the vision encoder again."""
    url, _ = protected
    image = png(120, 90)
    with Client(url, api_key=KEY) as client:
        cache = client.info().embedding_cache
        assert cache.capacity == 0
        before = cache.images_encoded
        for n, point in enumerate([[10, 10], [30, 20], [60, 45]], start=1):
            client.segment_points(image, [point])
            assert client.info().embedding_cache.images_encoded == before + n
