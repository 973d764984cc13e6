"""Cluster-wide load figures for `/v1/status`, read from the Prometheus endpoint Ray runs on
every node (the same numbers a Prometheus server would scrape).

Ray pushes metrics to those endpoints every few seconds, so the figures lag by about that
much; rates are taken over a window of samples kept by `MetricsHistory`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving import metrics

# Ray prefixes every exported metric with "ray_".
SERVE_TOTAL_REQUESTS = "ray_serve_autoscaling_total_requests"
SERVE_QUEUED = "ray_serve_deployment_queued_queries"
REQUESTS = f"ray_{metrics.REQUESTS}"
log = logging.getLogger("samfleet")
BATCHES = f"ray_{metrics.BATCH_SIZE}_count"
BATCHED_REQUESTS = f"ray_{metrics.BATCHED_REQUESTS}"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Snapshot:
    """The figures `/v1/status` reports, summed over every node at one moment."""

    time: float
    in_system: dict[str, float]  # per deployment: requests queued or running (the autoscaler's input)
    waiting: dict[str, float]  # per deployment: requests not yet assigned to a replica
    images_answered: float  # 2xx answers of the image endpoints
    batched_requests: float
    batches: float


def node_metric_urls() -> list[str]:
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes() if n["Alive"]]


async def scrape(urls: list[str], timeout_s: float = 2.0) -> list[Sample]:
    """Samples of every reachable node; a node that does not answer in time is left out."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        answers = await asyncio.gather(*(client.get(url) for url in urls), return_exceptions=True)
    samples: list[Sample] = []
    for answer in answers:
        if isinstance(answer, httpx.Response) and answer.status_code == 200:
            for family in text_string_to_metric_families(answer.text):
                samples.extend(Sample(s.name, s.labels, s.value) for s in family.samples)
    return samples


def _sum(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _per_deployment(samples: list[Sample], name: str, application: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for s in samples:
        if s.name == name and s.labels.get("application") == application:
            totals[s.labels["deployment"]] = totals.get(s.labels["deployment"], 0.0) + s.value
    return totals


def summarise(samples: list[Sample], application: str, image_endpoints: set[str], now: float) -> Snapshot:
    answered = sum(
        s.value
        for s in samples
        if s.name == REQUESTS
        and s.labels.get("endpoint") in image_endpoints
        and s.labels.get("status", "").startswith("2")
    )
    return Snapshot(
        time=now,
        in_system=_per_deployment(samples, SERVE_TOTAL_REQUESTS, application),
        waiting=_per_deployment(samples, SERVE_QUEUED, application),
        images_answered=answered,
        batched_requests=_sum(samples, BATCHED_REQUESTS),
        batches=_sum(samples, BATCHES),
    )


@dataclass(frozen=True)
class Rates:
    window_s: float
    images_per_s: float
    mean_batch_size: float | None


class MetricsHistory:
    """Snapshots of the last `window_s` seconds; rates compare the newest with the oldest."""

    def __init__(self, window_s: float = 60.0):
        self.window_s = window_s
        self.snapshots: deque[Snapshot] = deque()

    def add(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        while self.snapshots[-1].time - self.snapshots[0].time > self.window_s:
            self.snapshots.popleft()

    @property
    def latest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def rates(self) -> Rates | None:
        if len(self.snapshots) < 2:
            return None
        first, last = self.snapshots[0], self.snapshots[-1]
        elapsed = last.time - first.time
        batches = last.batches - first.batches
        return Rates(
            window_s=elapsed,
            # max(0, ...): a restarted replica starts its counters from zero again.
            images_per_s=max(0.0, last.images_answered - first.images_answered) / elapsed,
            mean_batch_size=(last.batched_requests - first.batched_requests) / batches if batches > 0 else None,
        )


class ClusterSampler:
    """Keeps a `MetricsHistory` filled by sampling every `interval_s` once someone asks for it,
    so a service whose status nobody reads never scrapes."""

    def __init__(self, application: str, image_endpoints: set[str], interval_s: float, window_s: float):
        self.application = application
        self.image_endpoints = image_endpoints
        self.interval_s = interval_s
        self.history = MetricsHistory(window_s)
        self._task: asyncio.Task | None = None
        # Two first calls at once would otherwise each start a sampling loop that never ends.
        self._starting = asyncio.Lock()

    async def sample(self) -> Snapshot:
        urls = await asyncio.to_thread(node_metric_urls)
        snapshot = summarise(await scrape(urls), self.application, self.image_endpoints, time.time())
        self.history.add(snapshot)
        return snapshot

    async def current(self) -> tuple[Snapshot, Rates | None]:
        async with self._starting:
            if self._task is None:
                await self.sample()
                self._task = asyncio.create_task(self._keep_sampling())
        latest = self.history.latest
        if latest is None:  # not reached: sample() added one and the history keeps its newest
            raise RuntimeError("no metrics sampled yet")
        return latest, self.history.rates()

    async def _keep_sampling(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sample()
            except Exception:  # a failed scrape must not end the sampling for good
                log.exception("could not sample the cluster's metrics")
