"""Metrics labels under a Serve `route_prefix`.  Ray's proxy mounts such an application by
putting the prefix in the ASGI scope's `root_path` and leaving it in `path`
(ray/serve/_private/proxy.py); httpx's ASGI transport builds the same scope.  Auth, the docs and
the body limits under a prefix are tested against a real service in test_protected_service.py."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from serving.http import route_path
from serving.metrics import RequestMetrics, RequestMetricsMiddleware

PREFIX = "/sam3"


class LabelsSeen(RequestMetrics):
    """The real endpoint labelling; the labels are kept here instead of going to Ray's exporter,
    which needs a Ray worker."""

    def __init__(self, endpoints: set[str]):
        self.endpoints = endpoints
        self.labels: list[tuple[str, int]] = []

    def answered(self, path: str, status: int, seconds: float) -> None:
        self.labels.append((self.endpoint(path), status))


def test_requests_under_a_route_prefix_are_counted_by_their_endpoint():
    app = FastAPI()
    app.add_middleware(RequestMetricsMiddleware)
    app.state.request_metrics = metrics = LabelsSeen({"/v1/segment", "/healthz"})

    @app.get("/v1/segment")
    def segment() -> dict:
        return {}

    async def get(path: str) -> int:
        transport = httpx.ASGITransport(app, root_path=PREFIX)
        async with httpx.AsyncClient(transport=transport, base_url="http://samfleet") as http:
            return (await http.get(path)).status_code

    assert asyncio.run(get(f"{PREFIX}/v1/segment")) == 200
    assert asyncio.run(get(f"{PREFIX}/nothing")) == 404
    assert metrics.labels == [("/v1/segment", 200), ("other", 404)]


def test_route_path_strips_the_prefix_only():
    assert route_path({"path": "/sam3/v1/segment", "root_path": "/sam3"}) == "/v1/segment"
    assert route_path({"path": "/sam3", "root_path": "/sam3"}) == "/"
    assert route_path({"path": "/v1/segment", "root_path": ""}) == "/v1/segment"
    assert route_path({"path": "/v1/segment"}) == "/v1/segment"
