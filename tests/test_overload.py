"""A full queue answers 503 + Retry-After at once (not a hang, not a 500), and the SDK's
retries carry a batch through it: a real service in its own process with a tiny queue."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import yaml

from conftest import free_port
from sdk import Client, RetryPolicy
from serving import runner
from test_bad_input import png

BURST = 40


def overload_config(tmp_path, tiny_model) -> tuple[str, str]:
    from serving.runner import default_config_path

    raw = yaml.safe_load(default_config_path().read_text())
    app = raw["applications"][0]
    app["args"].update(model=tiny_model, batching={"max_batch_size": 1, "batch_wait_timeout_s": 0.0})
    model = next(d for d in app["deployments"] if d["name"] == "SAM3Model")
    model.update(max_ongoing_requests=1, max_queued_requests=2, backpressure_config={"retry_after_s": 1})
    model.pop("autoscaling_config")
    model["num_replicas"] = 1
    port = free_port()
    raw["http_options"]["port"] = port
    path = tmp_path / "overload.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path), f"http://127.0.0.1:{port}"


async def burst(url: str, image: bytes) -> list[tuple[int, float, httpx.Response]]:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=BURST)) as http:
        async def one():
            started = time.perf_counter()
            response = await http.post("/v1/segment", files={"image": ("i", image)}, data={"params": '{"prompt": "x"}'})
            return response.status_code, time.perf_counter() - started, response

        return await asyncio.gather(*(one() for _ in range(BURST)))


def test_full_queue_answers_503_with_retry_after_and_the_sdk_gets_through(tmp_path, tiny_model):
    config, url = overload_config(tmp_path, tiny_model)
    proc = subprocess.Popen([sys.executable, "-m", "sdk.cli", "serve", "--config", config],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        runner.wait_healthy(url, time.monotonic() + 240)
        image = png(320, 240)
        results = asyncio.run(burst(url, image))
        statuses = sorted({status for status, _, _ in results})
        assert statuses == [200, 503], statuses
        refused = [(took, r) for status, took, r in results if status == 503]
        served = [took for status, took, _ in results if status == 200]
        for _, response in refused:
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "overloaded"
        # Refusals come back at once; they do not wait for the queue to drain.
        assert np.median([took for took, _ in refused]) < np.median(served)
        with Client(url, retry=RetryPolicy(max_retries=30, base_delay_s=0.2, max_delay_s=2)) as client:
            items = list(client.segment_many([image] * BURST, "x", concurrency=BURST, progress=False))
        assert [item.error for item in items if not item.ok] == []
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
