"""The project's own Prometheus metrics, recorded through `ray.util.metrics`.

Ray exports them next to Serve's metrics from every node's metrics endpoint (prefixed `ray_`),
so one Prometheus scrape config covers both; `/v1/status` reads them back the same way.
"""

from __future__ import annotations

import time

from ray.util.metrics import Counter, Histogram

from serving.http import route_path

REQUESTS = "samfleet_requests_total"
LATENCY = "samfleet_request_latency_s"
INSTANCES = "samfleet_instances_returned"
BATCH_SIZE = "samfleet_batch_size"
BATCHED_REQUESTS = "samfleet_batched_requests_total"
IMAGE_ENCODINGS = "samfleet_image_encodings_total"
TEXT_CACHE = "samfleet_text_cache_lookups_total"

LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
INSTANCE_BOUNDARIES: list[float] = [1, 2, 5, 10, 20, 50, 100, 200]  # Histogram takes float boundaries


class RequestMetrics:
    """Recorded by the ingress: one count and latency per request, instances per answer."""

    def __init__(self, endpoints: set[str]):
        # Unknown paths (scanners, typos) share one label so they cannot blow up cardinality.
        self.endpoints = endpoints
        self.requests = Counter(
            REQUESTS, "HTTP requests answered, by endpoint and status code", tag_keys=("endpoint", "status")
        )
        self.latency = Histogram(
            LATENCY,
            "Time from request received to answer sent, in seconds",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("endpoint",),
        )
        self.instances = Histogram(
            INSTANCES,
            "Instances returned per segmentation answer",
            boundaries=INSTANCE_BOUNDARIES,
            tag_keys=("endpoint",),
        )

    def endpoint(self, path: str) -> str:
        return path if path in self.endpoints else "other"

    def answered(self, path: str, status: int, seconds: float) -> None:
        endpoint = self.endpoint(path)
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.latency.observe(seconds, tags={"endpoint": endpoint})

    def returned(self, path: str, instances: int) -> None:
        self.instances.observe(instances, tags={"endpoint": self.endpoint(path)})


class BatchMetrics:
    """Recorded by the model deployment: how many requests shared each forward pass.

    Ray exports a histogram's `_sum` from bucket midpoints, so the exact number of requests
    is a counter of its own; the histogram's `_count` (exact) is the number of batches.
    """

    def __init__(self, max_batch_size: int):
        boundaries = sorted({1, 2, 4, 8, 16, 32, 64, max_batch_size})
        self.sizes = Histogram(
            BATCH_SIZE,
            "Requests per model forward pass, by method",
            boundaries=[b for b in boundaries if b <= max_batch_size],
            tag_keys=("method",),
        )
        self.requests = Counter(BATCHED_REQUESTS, "Requests run through the model, by method", tag_keys=("method",))

    def ran(self, method: str, batch_size: int) -> None:
        self.sizes.observe(batch_size, tags={"method": method})
        self.requests.inc(batch_size, tags={"method": method})


class TextCacheMetrics:
    """Recorded by the model deployment: prompt lookups in the text-feature cache, by result."""

    def __init__(self):
        self.lookups = Counter(
            TEXT_CACHE, "Text prompts looked up in the text-feature cache, by result (hit/miss)", tag_keys=("result",)
        )
        self._seen = (0, 0)

    def update(self, hits: int, misses: int) -> None:
        """Count what the cache's running totals `hits` and `misses` added since the last update."""
        seen_hits, seen_misses = self._seen
        if hits > seen_hits:
            self.lookups.inc(hits - seen_hits, tags={"result": "hit"})
        if misses > seen_misses:
            self.lookups.inc(misses - seen_misses, tags={"result": "miss"})
        self._seen = (hits, misses)


def image_encodings() -> Counter:
    """Recorded by the model deployment: with `segment_points` requests, the embedding cache's hit rate."""
    return Counter(IMAGE_ENCODINGS, "Images run through the vision encoder for point/box prompts (cache misses)")


class StageTimes:
    """Where one request's time went, for its `Server-Timing` response header (browsers' developer
    tools and benchmarks/realistic_load.py read it): the CPU time of each stage run through `run`
    (in the worker thread that runs it, so other requests' work is not counted) and the wall
    time of each stage recorded with `waited` (the model call: transfer, queue and forward pass)."""

    def __init__(self):
        self.ms: dict[str, float] = {}

    def run(self, stage: str, work, *args, **kwargs):
        started = time.thread_time()
        try:
            return work(*args, **kwargs)
        finally:
            self._add(stage, (time.thread_time() - started) * 1000)

    def waited(self, stage: str, seconds: float) -> None:
        self._add(stage, seconds * 1000)

    def _add(self, stage: str, ms: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + ms

    def header(self) -> str:
        return ", ".join(f"{stage};dur={ms:.2f}" for stage, ms in self.ms.items())


class RequestMetricsMiddleware:
    """ASGI middleware counting every answer, errors included (those never reach a route).

    The metrics object is read from `app.state.request_metrics`, set when the ingress replica
    starts, so the module-level FastAPI app needs no Ray at import time.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        metrics: RequestMetrics | None = getattr(scope["app"].state, "request_metrics", None)
        if scope["type"] != "http" or metrics is None:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_with_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            metrics.answered(route_path(scope), status, time.perf_counter() - started)
