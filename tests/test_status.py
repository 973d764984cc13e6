"""`/v1/status`, `samfleet status` and the project's Prometheus metrics, read back from Ray's
metrics endpoints the way Prometheus would scrape them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx

from conftest import wait_for
from serving import cluster_metrics

SEGMENT = "/v1/segment"


def scraped() -> list[cluster_metrics.Sample]:
    return asyncio.run(cluster_metrics.scrape(cluster_metrics.node_metric_urls()))


def total(samples, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


# Ray's workers hand their metrics to the node's exporter every `metrics_report_interval_ms`
# (10 s by default); a scrape can miss whatever was counted during the last interval.
REPORT_INTERVAL_S = int(os.environ.get("RAY_metrics_report_interval_ms", "10000")) / 1000


def settled_scrape(*counters: str) -> list[cluster_metrics.Sample]:
    """A scrape that includes every request already answered: two scrapes more than one report
    interval apart that agree on `counters` (no request is in flight when this is called)."""
    first = scraped()
    while True:
        time.sleep(REPORT_INTERVAL_S + 1)
        second = scraped()
        if all(total(first, name) == total(second, name) for name in counters):
            return second
        first = second


def test_metrics_count_requests_errors_and_batches(service, client, images):
    ok = "ray_samfleet_requests_total"
    before = settled_scrape(ok, "ray_samfleet_batched_requests_total", "ray_samfleet_batch_size_count")
    answered = total(before, ok, endpoint=SEGMENT, status="200")
    refused = total(before, ok, endpoint=SEGMENT, status="422")
    batches = total(before, "ray_samfleet_batch_size_count", method="segment")
    batched_images = total(before, "ray_samfleet_batched_requests_total", method="segment")
    for item in client.segment_many(images, "cat", concurrency=4, progress=False):
        assert item.ok
    bad = httpx.post(f"{service}{SEGMENT}", json={"image": "not base64!"})
    assert bad.status_code == 422

    def updated():
        now = scraped()
        # Each replica exports on its own schedule: wait for the ingress and the model replica.
        seen = (total(now, ok, endpoint=SEGMENT, status="200") >= answered + len(images)
                and total(now, ok, endpoint=SEGMENT, status="422") >= refused + 1
                and total(now, "ray_samfleet_batched_requests_total", method="segment") >= batched_images + len(images))
        return now if seen else None

    now = wait_for(updated, 45, "the metrics to show the requests", interval_s=1)
    assert total(now, ok, endpoint=SEGMENT, status="200") == answered + len(images)
    assert total(now, ok, endpoint=SEGMENT, status="422") == refused + 1
    assert total(now, "ray_samfleet_request_latency_s_count", endpoint=SEGMENT) >= answered + refused + len(images) + 1
    assert total(now, "ray_samfleet_instances_returned_count", endpoint=SEGMENT) >= len(images)
    # Every image went through some forward pass; concurrent ones may have shared one.
    assert total(now, "ray_samfleet_batched_requests_total", method="segment") == batched_images + len(images)
    assert batches < total(now, "ray_samfleet_batch_size_count", method="segment") <= batches + len(images)
    # Serve's own metrics come from the same endpoints.
    assert any(s.name.startswith("ray_serve_") for s in now)


def test_two_first_status_calls_at_once_start_one_sampling_loop(service):
    """Against the shared service's real metrics (its Ray runs in this process)."""
    from serving.runner import APP_NAME

    sampler = cluster_metrics.ClusterSampler(APP_NAME, {SEGMENT}, interval_s=3600, window_s=60)

    async def two_at_once() -> int:
        await asyncio.gather(sampler.current(), sampler.current())
        loops = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "ClusterSampler._keep_sampling"]
        for loop in loops:
            loop.cancel()
        return len(loops)

    assert asyncio.run(two_at_once()) == 1


def test_status_reports_replicas_load_and_throughput(client, images):
    status = client.status()
    deployments = {d.name: d for d in status.deployments}
    assert set(deployments) == {"SAM3Model", "Ingress"}
    assert deployments["SAM3Model"].replicas.get("RUNNING") == 1
    assert status.application == "samfleet"

    def measured():
        for item in client.segment_many(images * 3, "cat", concurrency=4, progress=False):
            assert item.ok
        rate = client.status().throughput
        return rate if rate and rate.images_per_s > 0 else None

    rate = wait_for(measured, 90, "a measured throughput", interval_s=1)
    assert rate.window_s > 0
    assert rate.mean_batch_size is not None and 1 <= rate.mean_batch_size <= 4  # the tests' max_batch_size


def test_status_cli_prints_the_table(service):
    done = subprocess.run([sys.executable, "-m", "sdk.cli", "status", "--url", service], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"samfleet at {service}")
    assert lines[1].split()[:3] == ["deployment", "status", "running"]
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert rows["SAM3Model"][1:3] == ["HEALTHY", "1"]
    assert lines[-1].startswith("throughput: ")


def test_status_cli_reports_an_unreachable_service():
    done = subprocess.run([sys.executable, "-m", "sdk.cli", "status", "--url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "error:" in done.stderr and "127.0.0.1:9" in done.stderr
