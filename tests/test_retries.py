"""Retries with backoff: a real loopback server fails on cue in front of the real service.

The clients send files as they are (upload="original"), so each image is one request the proxy's
script sees; reduced uploads ask /v1/info first (tests/test_reduced_upload.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from compare import assert_results_match
from flaky_proxy import FlakyProxy
from sdk import APIError, AsyncClient, Client, RetryPolicy, TimeoutError

SAMPLE = Path(__file__).resolve().parents[1] / "examples/images/coffee.jpg"
FAST = RetryPolicy(max_retries=4, base_delay_s=0.05, max_delay_s=2.0)


def gaps(proxy: FlakyProxy) -> list[float]:
    times = [t for t, _ in proxy.calls]
    return [b - a for a, b in zip(times, times[1:])]


@pytest.mark.parametrize("failure", [503, 429, 502, "reset"])
def test_transient_failures_are_retried_until_success(service, client, failure):
    with FlakyProxy(service, [failure, failure]) as proxy, Client(proxy.url, retry=FAST, upload="original") as flaky:
        result = flaky.segment(SAMPLE, prompt="cup", threshold=0.1)
    assert [step for _, step in proxy.calls] == [str(failure), str(failure), "forward"]
    assert_results_match(result, client.segment(SAMPLE, prompt="cup", threshold=0.1))


def slept(monkeypatch) -> list[float]:
    """The delays the sync client waits between attempts, recorded (and still waited)."""
    import time

    import sdk.client

    delays: list[float] = []

    class RecordingTime:  # sdk.client's `time` only: other threads of this process sleep as usual
        def __getattr__(self, name: str):
            return getattr(time, name)

        def sleep(self, seconds: float) -> None:
            delays.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(sdk.client, "time", RecordingTime())
    return delays


def test_retry_after_is_honoured(service, monkeypatch):
    # A cap far above Retry-After: a client that ignored the header would wait about 0.05 s (its
    # backoff), one that ignored the value would wait the cap; this one waits exactly 0.6 s.
    policy = RetryPolicy(max_retries=4, base_delay_s=0.05, max_delay_s=30)
    delays = slept(monkeypatch)
    with FlakyProxy(service, [503, 503], retry_after="0.6") as proxy, Client(proxy.url, retry=policy, upload="original") as flaky:
        assert flaky.health().status == "ok"
    assert len(proxy.calls) == 3
    assert delays == [0.6, 0.6]
    # The server saw the retries no sooner than that (a loaded machine may add any delay on top).
    assert all(gap >= 0.6 - 0.01 for gap in gaps(proxy)), gaps(proxy)


def test_backoff_grows_exponentially_within_its_cap(service, monkeypatch):
    policy = RetryPolicy(max_retries=5, base_delay_s=0.2, max_delay_s=0.5)
    assert all(0 <= policy.delay(a) <= min(0.5, 0.2 * 2**a) for a in range(8) for _ in range(50))
    assert policy.delay(0, retry_after=100) == 0.5  # a server cannot park the client forever
    delays = slept(monkeypatch)
    with FlakyProxy(service, ["reset"] * 3) as proxy, Client(proxy.url, retry=policy, upload="original") as flaky:
        flaky.health()
    assert len(proxy.calls) == 4 and len(delays) == 3
    assert all(0 <= d <= min(0.5, 0.2 * 2**a) for a, d in enumerate(delays)), delays
    assert all(gap >= d - 0.01 for gap, d in zip(gaps(proxy), delays)), (gaps(proxy), delays)


def test_client_errors_are_not_retried(service):
    with FlakyProxy(service, [422, 404]) as proxy, Client(proxy.url, retry=FAST, upload="original") as flaky:
        with pytest.raises(APIError) as raised:
            flaky.health()
    assert raised.value.status == 422 and raised.value.message == "scripted failure"
    assert len(proxy.calls) == 1


def test_real_server_4xx_passes_through_once(service):
    with FlakyProxy(service, []) as proxy, Client(proxy.url, retry=FAST, upload="original") as flaky:
        with pytest.raises(APIError) as raised:
            flaky.segment(b"garbage", prompt="cup")
    assert raised.value.code == "invalid_image" and len(proxy.calls) == 1


def test_gives_up_after_max_retries_with_the_last_error(service):
    with FlakyProxy(service, [503] * 10) as proxy, Client(proxy.url, retry=FAST, upload="original") as flaky:
        with pytest.raises(APIError) as raised:
            flaky.health()
    assert raised.value.status == 503 and len(proxy.calls) == FAST.max_retries + 1


def test_read_timeout_is_not_retried(service):
    with FlakyProxy(service, ["slow"]) as proxy, Client(proxy.url, timeout=0.5, retry=FAST, upload="original") as flaky:
        with pytest.raises(TimeoutError, match="timed out"):
            flaky.health()
    assert len(proxy.calls) == 1


def test_async_client_retries_the_same_way(service):
    async def run(url):
        async with AsyncClient(url, retry=FAST, upload="original") as aclient:
            return await aclient.segment(SAMPLE, prompt="cup", threshold=0.1)

    with FlakyProxy(service, ["reset", 503, 429]) as proxy:
        result = asyncio.run(run(proxy.url))
    assert len(proxy.calls) == 4 and result.instances


def test_batch_survives_overload(service, images):
    from PIL import Image

    with FlakyProxy(service, [503] * 6) as proxy, Client(proxy.url, retry=FAST, upload="original") as flaky:
        items = list(flaky.segment_many([Image.fromarray(i) for i in images], prompt="cup", concurrency=4,
                                        progress=False))
    assert all(item.ok for item in items)
    assert len(proxy.calls) == len(images) + 6
