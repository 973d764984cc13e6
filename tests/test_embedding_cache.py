"""Embedding cache for point/box prompts: the image is encoded once, later clicks reuse it (on
the replica that holds it), results equal uncached ones, the cache stays within its bound."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import reference as ref_impl
from compare import assert_matches_reference
from conftest import TEST_EMBEDDING_CACHE_MB
from sdk import Result
from sdk.images import load_rgb

REPO = Path(__file__).resolve().parents[1]


def encoded(client) -> int:
    info = client.info()
    # The session's service runs one SAM3 replica (test_status checks it too): its count is the total.
    assert info.replicas["SAM3Model"] == 1
    return info.embedding_cache.images_encoded


def fresh_image(seed: int, shape=(110, 140)) -> np.ndarray:
    """An image no other test sends, so it cannot be in the cache already."""
    return (np.random.default_rng(1000 + seed).random((*shape, 3)) * 255).astype(np.uint8)


def test_the_cache_size_comes_from_one_embedding_of_the_loaded_model(client):
    cache = client.info().embedding_cache
    assert cache.embedding_bytes > 0
    assert cache.capacity == int(TEST_EMBEDDING_CACHE_MB * 2**20 // cache.embedding_bytes) == 3


def test_later_clicks_reuse_the_embedding_and_equal_uncached_results(client, reference):
    image = fresh_image(0)
    clicks = [
        {"points": [[30, 40]], "labels": [1]},
        {"points": [[30, 40], [100, 90]], "labels": [1, 0], "multimask": True},
        {"box": [20, 20, 120, 100]},
        {"points": [[60, 50]], "labels": [1], "box": [20, 20, 120, 100]},
    ]
    before = encoded(client)
    for n, kwargs in enumerate(clicks, start=1):
        # What transformers gives encoding the image for this prompt alone (no cache anywhere).
        expected = ref_impl.segment_points(reference, image, **kwargs)
        points = kwargs.pop("points", [])
        served = client.segment_points(image, points, **kwargs)
        assert encoded(client) == before + 1, f"click {n} ran the vision encoder again"
        assert_matches_reference(served, expected, pair_by_box=False)


def test_a_different_image_is_encoded_and_the_same_pixels_in_another_format_are_not(client):
    image, other = fresh_image(1), fresh_image(2)
    before = encoded(client)
    client.segment_points(image, [[10, 10]])
    client.segment_points(other, [[10, 10]])
    assert encoded(client) == before + 2
    # The key is the decoded pixels: the same picture as a BMP file is a hit.
    bmp = io.BytesIO()
    Image.fromarray(image).save(bmp, format="BMP")
    client.segment_points(bmp.getvalue(), [[20, 20]])
    assert encoded(client) == before + 2


def test_the_cache_keeps_its_bound_and_drops_the_least_recently_used_image(client):
    capacity = client.info().embedding_cache.capacity
    images = [fresh_image(10 + k) for k in range(capacity + 1)]
    before = encoded(client)
    for image in images:  # one more than fits: the first one is dropped
        client.segment_points(image, [[5, 5]])
    assert encoded(client) == before + capacity + 1
    client.segment_points(images[-1], [[6, 6]])
    assert encoded(client) == before + capacity + 1, "the newest image was dropped"
    client.segment_points(images[0], [[6, 6]])
    assert encoded(client) == before + capacity + 2, "the oldest image was kept beyond the bound"


@pytest.mark.service
@pytest.mark.fleet  # a service of its own with two replicas: `make test-fleet`
@pytest.mark.timeout(300)
def test_clicks_go_to_the_replica_holding_the_embedding_and_concurrent_clicks_get_their_own_image(
    tmp_path, tiny_model, reference
):
    """Two SAM3 replicas (a process of its own, like the autoscaling tests): every image is encoded
    once however many clicks it gets, summed over both replicas.  The clicks are 1.5 s apart, as an
    annotator's are: well past the moment Serve's router needs to learn which replica holds a new
    image, even on a loaded machine (README: Routing window).  Without the cache every click is
    encoded: tests/test_protected_service.py (a service with the cache off).

    Then the benchmark clicks every image twice at once, twice: Serve may put several images in
    one batch, and each answer must still be its own image's (transformers encoding that image for
    that click alone).  An embedding looked up by the wrong key answers with another image's masks."""
    out, answers = tmp_path / "clicks.json", tmp_path / "answers.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/click_latency.py"), "--model", tiny_model, "--replicas", "2",
         "--cache", "on", "--images", "3", "--clicks", "3", "--think-s", "1.5", "--rounds", "2",
         "--json", str(out), "--answers", str(answers)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    on = json.loads(out.read_text())["cache_on"]
    assert on["clicks"] == 3 * on["images"] == 9
    assert on["images_encoded"] == on["images"], done.stdout
    clicks = json.loads(answers.read_text())["cache_on"]
    assert sorted(c["image"] for c in clicks) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    pictures = [np.asarray(load_rgb(path)) for path in sorted((REPO / "examples/images").glob("*.jpg"))]
    for click in clicks:
        expected = ref_impl.segment_points(reference, pictures[click["image"]], points=[click["point"]], labels=[1])
        assert_matches_reference(Result.model_validate(click["answer"]), expected, pair_by_box=False)
