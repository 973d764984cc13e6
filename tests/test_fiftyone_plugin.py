"""The FiftyOne plugin against a real FiftyOne database and the real service (tiny model)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.plugins as fop
import numpy as np
import pytest
from PIL import Image

from compare import BATCH, assert_masks_close, assert_same_answer
from conftest import ray_processes, wait_for, wait_for_ray_exit
from flaky_proxy import CutStream, FlakyProxy
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import (ExecutionRunState, execute_or_delegate_operator, resolve_execution_options,
                                         resolve_type)
from fiftyone.operators.registry import OperatorRegistry
from fiftyone_plugin import curation, runs
from fiftyone_plugin.labels import TrackedInstanceResult, full_mask, pixel_box, to_detections
from fiftyone_plugin.prompts import parse_prompts, split_list
from fiftyone_plugin.segment import SegmentRun
from fiftyone_plugin.video import done_field
from sdk import AsyncClient, Client
from sdk.schema import VideoFrame
from sdk.transport import Settings
from service_process import service_process
from video_double import moving_squares_clip

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "@samfleet/sam3"
PROMPTS = ["thing", "stuff"]
PROMPT_TEXT = ", ".join(PROMPTS)  # as typed in the App
THRESHOLD = 0.1


def op(name: str) -> str:
    return f"{PLUGIN}/{name}"


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        Image.fromarray((rng.random((48 + i % 5 * 8, 64, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def dataset(plugin, tmp_path, request):
    ds = fo.Dataset(request.node.name[:60], overwrite=True)
    ds.add_samples([fo.Sample(filepath=str(p)) for p in write_images(tmp_path / "images", 6)])
    yield ds
    ds.delete()


def sdk_results(client, path: str, **params) -> dict:
    """What the SDK answers, uploading as the plugin does by default (reduced)."""
    return {p: client.segment(path, p, threshold=THRESHOLD, upload="reduced", **params) for p in PROMPTS}


def box_pixels(det: fo.Detection, width: int, height: int) -> np.ndarray:
    x, y, w, h = det.bounding_box
    return np.array([x * width, y * height, (x + w) * width, (y + h) * height])


def assert_labels_match_sdk(sample: fo.Sample, field: str, expected: dict) -> None:
    """The stored detections are the SDK's instances (within the last-bit noise of batched CPU
    inference, see tests/compare.py; a box may move by one pixel when rounded out)."""
    detections = sample[field].detections
    assert len(detections) == sum(len(r.instances) for r in expected.values())
    for prompt, result in expected.items():
        w, h = result.width, result.height
        mine = [d for d in detections if d.prompt == prompt]
        assert len(mine) == len(result.instances)
        for det in mine:
            # Pair by score and box together: the tiny model's near-duplicates tie on either alone.
            twin = min(result.instances, key=lambda inst: abs(inst.score - det.confidence)
                       + np.abs(np.array(pixel_box(inst.box, inst.array, w, h)) - box_pixels(det, w, h)).sum())
            assert det.label == prompt
            assert det.confidence == pytest.approx(twin.score, abs=BATCH.score)
            assert np.abs(box_pixels(det, w, h) - pixel_box(twin.box, twin.array, w, h)).max() <= 1 + 1e-6
            assert_masks_close(full_mask(det, w, h), twin.array)


def segment(dataset: fo.Dataset, params: dict, **ctx) -> dict:
    """Run "segment with SAM3" as a Python caller does and return its outcome, read from the run
    it recorded on the dataset: FiftyOne returns nothing from a generator operator."""
    foo.execute_operator(op("segment_with_sam3"), dataset=dataset, params=params, **ctx)
    config = runs.latest(dataset).config
    return {"done": config.done, "skipped": config.skipped, "failed": config.failed, "errors": config.errors}


def test_detections_hold_exactly_the_served_masks_and_boxes(client, plugin):
    """to_detections alone (no serving noise): masks round-trip exactly through FiftyOne's
    renderer, and the box is the SDK's box rounded out to whole pixels, covering the mask."""
    image = write_images(Path(tempfile.mkdtemp()), 1, seed=3)[0]
    results = sdk_results(client, str(image))
    detections = to_detections(results).detections
    instances = [inst for r in results.values() for inst in r.instances]
    assert instances, "the tiny model found nothing: test is vacuous"
    result = next(iter(results.values()))
    w, h = result.width, result.height
    for det, inst in zip(detections, instances):
        assert_same_answer(full_mask(det, w, h), inst.array, "one result, stored: FiftyOne's masks are lossless")
        # One result: only the relative coordinates FiftyOne stores (a float64 round trip) in between.
        assert np.allclose(box_pixels(det, w, h), pixel_box(inst.box, inst.array, w, h), atol=1e-6)
        x1, y1, x2, y2 = inst.box
        bx1, by1, bx2, by2 = box_pixels(det, w, h)
        assert bx1 <= x1 + 1e-6 and by1 <= y1 + 1e-6 and bx2 >= x2 - 1e-6 and by2 >= y2 - 1e-6


def test_plugin_is_found_with_its_operators(plugin):
    (definition,) = [p for p in fop.list_plugins() if p.name == PLUGIN]
    assert set(definition.operators) == {"segment_with_sam3", "refine_with_points", "tag_sam3_labels",
                                         "review_sam3_labels", "export_sam3_labels"}
    assert foo.get_operator(op("segment_with_sam3")).config.allow_delegated_execution


def test_the_secret_api_key_goes_to_the_secret_url_only(dataset, service, monkeypatch):
    """Any user of a shared App can type a URL in the form: the team's key must not follow it."""
    with FlakyProxy(service, []) as secret, FlakyProxy(service, []) as typed:
        monkeypatch.setenv("SAMFLEET_URL", secret.url)  # the plugin's secrets, read from the environment
        monkeypatch.setenv("SAMFLEET_API_KEY", "sf_the-teams-key")
        for params in ({"label_field": "by_secret"}, {"label_field": "typed", "url": typed.url},
                       {"label_field": "secret_typed", "url": secret.url + "/"}):
            result = segment(dataset, {"prompts": PROMPT_TEXT, "threshold": THRESHOLD, **params})
            assert result["done"] == 6, result
    assert len(secret.authorizations) > 12 and set(secret.authorizations) == {"Bearer sf_the-teams-key"}
    assert typed.authorizations and set(typed.authorizations) == {None}
    records = [str(dataset.get_run_info(key)) for key in dataset.list_runs(method=runs.RUN_METHOD)]
    assert len(records) == 3 and not any("sf_the-teams-key" in r for r in records)
    assert [runs.latest(dataset, f).config.service_url for f in ("by_secret", "typed")] == [secret.url, typed.url]


def test_segment_collection_runs_where_an_event_loop_already_runs(dataset, service):
    """As in a Jupyter notebook, whose kernel runs an event loop (asyncio.run refuses to start there)."""
    from fiftyone_plugin.segment import SegmentRun, Service, segment_collection

    async def notebook_cell():
        run = SegmentRun(prompts=["thing"], label_field="from_notebook", threshold=THRESHOLD)
        return segment_collection(dataset, run, Service(url=service))

    assert asyncio.run(notebook_cell()).done == len(dataset)
    assert dataset.count("from_notebook.detections") > 0


def test_several_prompts_cost_one_request_per_image(dataset, service):
    """The service encodes an image once for all the prompts of a request: counted at a proxy."""
    with FlakyProxy(service, []) as counting:
        result = segment(dataset, {"prompts": "thing, cat, dog", "threshold": THRESHOLD, "url": counting.url})
    assert result["done"] == len(dataset) == 6
    assert counting.paths.count("/v1/segment") == len(dataset)
    labels = {d.label for s in dataset for d in s["sam3"].detections}
    assert labels and labels <= {"thing", "cat", "dog"}


def test_segment_operator_stores_the_sdk_results(dataset, client, service):
    result = segment(dataset, {"prompts": PROMPT_TEXT, "threshold": THRESHOLD, "url": service})
    assert result == {"done": 6, "skipped": 0, "failed": 0, "errors": {}}
    assert sum(len(s["sam3"].detections) for s in dataset) > 0, "the tiny model found nothing: test is vacuous"
    for sample in dataset:
        assert_labels_match_sdk(sample, "sam3", sdk_results(client, sample.filepath))


def test_negative_prompts_remove_what_they_remove_in_the_sdk(dataset, client, service):
    params = {"prompts": PROMPT_TEXT, "negative_prompts": "cat, mannequin", "threshold": THRESHOLD, "url": service,
              "label_field": "without"}
    foo.execute_operator(op("segment_with_sam3"), dataset=dataset, params=params)
    foo.execute_operator(op("segment_with_sam3"), dataset=dataset, params={**params, "negative_prompts": "",
                                                                           "label_field": "with_all"})
    # The tiny model's instances of any two prompts overlap a lot, so most (here all) go: what
    # matters is that the operator removed what the SDK removes with the same negative prompts.
    assert sum(len(s["without"].detections) for s in dataset) < sum(len(s["with_all"].detections) for s in dataset)
    for sample in dataset:
        assert_labels_match_sdk(sample, "without",
                                sdk_results(client, sample.filepath, negative_prompts=["cat", "mannequin"]))


def test_selected_samples_then_skip_existing_then_overwrite(dataset, service):
    params = {"prompts": PROMPT_TEXT, "threshold": THRESHOLD, "url": service, "label_field": "picked"}
    chosen = dataset.take(2, seed=1).values("id")
    first = segment(dataset, {**params, "view_target": "SELECTED_SAMPLES"}, selected=chosen)
    assert first["done"] == 2
    assert set(dataset.exists("picked").values("id")) == set(chosen)
    rest = segment(dataset, params)
    assert (rest["done"], rest["skipped"]) == (4, 2)
    again = segment(dataset, {**params, "overwrite": True})
    assert (again["done"], again["skipped"]) == (6, 0)


def test_masks_on_disk_with_mask_path(dataset, client, service, tmp_path):
    foo.execute_operator(op("segment_with_sam3"), dataset=dataset,
                         params={"prompts": PROMPT_TEXT, "threshold": THRESHOLD, "url": service,
                                 "mask_dir": str(tmp_path / "masks")})
    sample = dataset.first()
    for det in sample["sam3"].detections:
        assert det.mask is None and Path(det.mask_path).is_file()
    assert_labels_match_sdk(sample, "sam3", sdk_results(client, sample.filepath))


def test_a_corrupt_image_is_reported_and_the_rest_labelled(dataset, service, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    (bad_id,) = dataset.add_samples([fo.Sample(filepath=str(broken))])
    result = segment(dataset, {"prompts": PROMPT_TEXT, "threshold": THRESHOLD, "url": service})
    assert (result["done"], result["failed"]) == (6, 1)
    assert "image" in result["errors"][bad_id]
    assert dataset[bad_id]["sam3"] is None


def test_bad_parameters_fail_before_any_request(dataset, service):
    with pytest.raises(Exception, match="at least one prompt"):
        foo.execute_operator(op("segment_with_sam3"), dataset=dataset, params={"prompts": " , ", "url": service})
    with pytest.raises(Exception, match="threshold"):
        foo.execute_operator(op("segment_with_sam3"), dataset=dataset,
                             params={"prompts": "cat", "threshold": 2.0, "url": service})
    assert not dataset.has_field("sam3")


def test_class_prompt_syntax_and_its_errors():
    parsed = parse_prompts("bus=red bus, bus = school bus, person")
    assert parsed.texts == ("red bus", "school bus", "person")
    assert parsed.class_of == {"red bus": "bus", "school bus": "bus", "person": "person"}
    assert parsed.classes == ["bus", "person"]
    for bad, why in (("=red bus", "both the class and the prompt"), ("bus=", "both the class and the prompt"),
                     ("a=b=c", "give one '='"), ("bus=red bus, car=red bus", "'red bus' is given twice"),
                     ("person, person", "'person' is given twice"), (" , ", "at least one prompt")):
        with pytest.raises(ValueError, match=why):
            SegmentRun(prompts=split_list(bad), label_field="unused")


def test_classes_numbered_alike_in_every_export_and_runs_recorded(dataset, client, service, tmp_path):
    """Two runs (the second adds a class) and two exports of different views: a class keeps its
    mask value and COCO category id throughout, and the dataset's mask targets say which is which."""
    base = {"threshold": THRESHOLD, "url": service, "overwrite": True}
    segment(dataset, {**base, "prompts": "thing"})
    assert (dataset.classes["sam3"], dataset.mask_targets["sam3"]) == (["thing"], {1: "thing"})
    segment(dataset, {**base, "prompts": "stuff, thing=big thing"})
    assert (dataset.classes["sam3"], dataset.mask_targets["sam3"]) == (["thing", "stuff"], {1: "thing", 2: "stuff"})

    found = dataset.values("sam3.detections", unwind=True)
    assert {(d.label, d.prompt) for d in found} == {("thing", "big thing"), ("stuff", "stuff")}, \
        "each prompt's instances carry its class as label (both found, else the test is vacuous)"

    only_stuff = dataset.filter_labels("sam3", fo.ViewField("label") == "stuff")
    exports = {name: curation.export_labels(view, "sam3", tmp_path / name, ["coco", "png"])
               for name, view in (("all", dataset), ("stuff", only_stuff))}
    for written in exports.values():
        coco = json.loads((Path(written["coco"]) / "labels.json").read_text())
        assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "thing"), (2, "stuff")]
    stuff_coco = json.loads((Path(exports["stuff"]["coco"]) / "labels.json").read_text())
    assert stuff_coco["annotations"] and {a["category_id"] for a in stuff_coco["annotations"]} == {2}
    stuff_pixels = {int(v) for png in Path(exports["stuff"]["png"]).glob("labels/*.png")
                    for v in np.unique(np.asarray(Image.open(png)))}
    assert stuff_pixels == {0, 2}, "'stuff' is value 2 in every export, even where it is the only class"

    # Each run recorded with FiftyOne's run API: what was asked, of which service, and how it went.
    keys = dataset.list_runs(method=runs.RUN_METHOD, label_field="sam3")
    assert len(keys) == 2
    first, second = (dataset.get_run_info(key).config for key in sorted(keys))
    assert first.prompts == ["thing"] and first.classes == {"thing": "thing"}
    info = client.info()
    assert (second.prompts, second.classes) == (["stuff", "thing=big thing"], {"stuff": "stuff", "big thing": "thing"})
    assert (second.threshold, second.negative_prompts, second.upload) == (THRESHOLD, [], "reduced")
    assert (second.model, second.api_version, second.service_url) == (info.model, info.api_version, service)
    assert (second.status, second.samples, second.done, second.skipped, second.failed) == ("completed", 6, 6, 0, 0)


def test_large_runs_go_to_the_delegated_executor(dataset):
    """Above `delegate_above` images the App offers only delegation and the form says why; no
    request is made here (the run is queued, then deleted)."""
    uri, registry = op("segment_with_sam3"), OperatorRegistry()
    for limit, delegated in ((len(dataset), False), (len(dataset) - 1, True)):
        request = {"dataset_name": dataset.name, "params": {"prompts": "thing", "delegate_above": limit}}
        options = asyncio.run(resolve_execution_options(registry, uri, request))
        form = asyncio.run(resolve_type(registry, uri, request)).type.properties
        assert options.allow_immediate_execution is not delegated and options.allow_delegated_execution
        assert ("delegated" in form) is delegated
    assert "queued for a delegated executor" in form["delegated"].view.label

    queued = foo.execute_operator(uri, dataset=dataset, params=request["params"])
    assert queued.delegated, "a view above the limit is delegated without asking"
    operations = DelegatedOperationService()
    (operation,) = operations.list_operations(dataset_name=dataset.name)
    operations.delete_operation(operation.id)
    assert not dataset.has_field("sam3")


def test_closing_an_immediate_run_stops_it_and_a_rerun_completes_the_rest(dataset, service):
    """The App streams an immediate run's progress and closes the generator when the stream ends
    (tab closed, operation cancelled): the run stops at once, keeping what it finished."""
    params = {"prompts": "thing", "threshold": THRESHOLD, "concurrency": 1, "chunk_size": 1}
    # The first image is answered at once, every later one slowly: the close comes with one in flight.
    with FlakyProxy(service, ["forward"] + ["slow"] * 5, scripted_path="/v1/segment") as proxy:
        # As the App's /operators/execute/generator route starts it, then iterates the stream.
        request = {"dataset_name": dataset.name, "params": {**params, "url": proxy.url}}
        stream = asyncio.run(execute_or_delegate_operator(op("segment_with_sam3"), request)).result
        update = next(m.body for m in stream if m.body.operator_uri == "set_progress")
        assert update.params["label"] == "1 of 6 samples labelled, 0 failed"
        stream.close()
        assert not any(t.name == "samfleet-run" for t in threading.enumerate()), "the close waits for the run"
        assert len(dataset.exists("sam3")) == 1
        assert proxy.paths.count("/v1/segment") <= 2  # the second may have been in flight; no third started
    stopped = runs.latest(dataset).config
    assert (stopped.status, stopped.done) == ("stopped", 1)

    rest = segment(dataset, {**params, "url": service, "concurrency": 4})
    assert (rest["done"], rest["skipped"], rest["failed"]) == (5, 1, 0)
    assert len(dataset.exists("sam3")) == len(dataset)


def test_refine_with_points_uses_keypoints_as_clicks(dataset, client, service):
    sample = dataset.first()
    sample.compute_metadata()
    w, h = sample.metadata.width, sample.metadata.height
    sample["clicks"] = fo.Keypoints(keypoints=[
        fo.Keypoint(label="cup", points=[(0.25, 0.25), (0.3, 0.35)]),
        fo.Keypoint(label="lid", points=[(0.7, 0.6), (0.5, 0.5)], point_labels=["positive", "negative"]),
    ])
    sample.save()
    params = {"keypoints_field": "clicks", "label_field": "refined", "url": service}
    for _ in range(2):  # a re-run replaces its detections instead of adding more
        result = foo.execute_operator(op("refine_with_points"), dataset=dataset, params=params)
        assert result.result == {"objects": 2}
    sample.reload()
    cup, lid = sample["refined"].detections
    expected_cup = client.segment_points(sample.filepath, [[0.25 * w, 0.25 * h], [0.3 * w, 0.35 * h]], upload="reduced")
    expected_lid = client.segment_points(sample.filepath, [[0.7 * w, 0.6 * h], [0.5 * w, 0.5 * h]], labels=[1, 0],
                                         upload="reduced")
    for det, expected, label in ((cup, expected_cup, "cup"), (lid, expected_lid, "lid")):
        assert det.label == label and det.prompt == "points"
        # Two requests for the same clicks: within batch noise (compare.BATCH).
        assert_masks_close(full_mask(det, w, h), expected.instances[0].array)


def test_refine_from_a_filtered_view_keeps_the_labels_the_view_hides(dataset, service):
    """Refining from a view that filters the label field (e.g. the low-score review view) must
    not save the sample as the view shows it: FiftyOne would delete the hidden labels."""
    from fiftyone import ViewField as F

    from fiftyone_plugin.segment import Service, refine_with_keypoints

    sample = dataset.first()
    hidden = fo.Detection(label="kept", bounding_box=[0.1, 0.1, 0.2, 0.2], confidence=0.9)
    shown = fo.Detection(label="shown", bounding_box=[0.5, 0.5, 0.2, 0.2], confidence=0.1)
    sample["refined"] = fo.Detections(detections=[hidden, shown])
    sample["clicks"] = fo.Keypoints(keypoints=[fo.Keypoint(label="cup", points=[(0.25, 0.25)])])
    sample.save()
    low_scores = dataset.filter_labels("refined", F("confidence") < 0.5)
    assert refine_with_keypoints(low_scores, "clicks", "refined", Service(url=service)) == 1
    sample.reload()
    assert [d.label for d in sample["refined"].detections] == ["kept", "shown", "cup"]


def test_review_patches_tags_counts_and_export_round_trip(dataset, service, tmp_path):
    segment(dataset, {"prompts": PROMPT_TEXT, "threshold": THRESHOLD, "url": service})
    labels = [{"sample_id": s.id, "field": "sam3", "label_id": d.id}
              for s in dataset for d in s["sam3"].detections]
    assert len(labels) >= 3, "the tiny model found too few instances for this test"

    # The reviewer's view: a patch per label, lowest score first; selecting a patch selects its label.
    patches = curation.review_view(dataset, "sam3", max_score=1.0, undecided_only=True)
    scores = patches.values("sam3.confidence")
    assert len(scores) == len(labels) and scores == sorted(scores)
    lowest = patches.first()
    foo.execute_operator(op("tag_sam3_labels"), view=patches, selected=[lowest.id], params={"decision": "reject"})
    accepted = [label for label in labels if label["label_id"] != lowest["sam3"].id][:2]
    foo.execute_operator(op("tag_sam3_labels"), dataset=dataset, selected_labels=accepted, params={"decision": "accept"})
    assert dataset.count_label_tags() == {curation.REJECTED: 1, curation.ACCEPTED: 2}
    assert dataset.select_labels(tags=curation.REJECTED).values("sam3.detections.id", unwind=True) == [lowest["sam3"].id]

    review = foo.execute_operator(op("review_sam3_labels"), dataset=dataset,
                                  params={"label_field": "sam3", "max_score": 1.0, "undecided_only": True}).result
    # Every score is at most 1.0: the labels neither accepted nor rejected are left to review.
    assert review["to_review"] == len(curation.review_view(dataset, "sam3", 1.0, True)) == len(labels) - 3
    per_prompt = review["per_prompt"]
    assert sum(c["instances"] for c in per_prompt.values()) == len(labels)
    assert sum(c[curation.REJECTED] for c in per_prompt.values()) == 1
    assert sum(c[curation.ACCEPTED] for c in per_prompt.values()) == 2

    out = tmp_path / "export"
    written = foo.execute_operator(op("export_sam3_labels"), dataset=dataset,
                                   params={"label_field": "sam3", "export_dir": str(out), "format": "both"}).result
    assert set(written) == {"coco", "png"}
    kept = {d.id: d for s in dataset for d in s["sam3"].detections if curation.REJECTED not in d.tags}
    dataset.compute_metadata()
    metadata = {s.filepath: s.metadata for s in dataset}

    coco = fo.Dataset.from_dir(dataset_dir=written["coco"], dataset_type=fo.types.COCODetectionDataset,
                               data_path=str(tmp_path / "images"), label_types="segmentations", label_field="gt")
    originals = {s.filepath: s["sam3"] for s in dataset.filter_labels("sam3", ~fo.ViewField("tags").contains("rejected"),
                                                                   only_matches=False)}
    assert coco.count("gt.detections") == len(kept)
    ious = []
    for sample in coco:
        m = metadata[sample.filepath]
        expected = originals[sample.filepath].detections if originals[sample.filepath] else []
        got = sample["gt"].detections if sample["gt"] else []
        assert [d.label for d in got] == [d.label for d in expected]
        for g, e in zip(got, expected):
            # FiftyOne writes non-crowd COCO masks as polygons (traced at pixel precision here):
            # outlines shift by a pixel, holes fill, slivers vanish.  The tiny model's ragged
            # masks on 64x48 images are the worst case for that; the PNG export below is exact.
            a, b = full_mask(g, m.width, m.height), full_mask(e, m.width, m.height)
            ious.append((a & b).sum() / max((a | b).sum(), 1))
    assert min(ious) > 0.5 and np.mean(ious) > 0.8
    coco.delete()

    png = fo.Dataset.from_dir(dataset_dir=written["png"], dataset_type=fo.types.ImageSegmentationDirectory,
                              data_path=str(tmp_path / "images"), label_field="gt")
    targets = {label: value for value, label in dataset.mask_targets["sam3"].items()}
    for sample in png:
        m = metadata[sample.filepath]
        expected = np.zeros((m.height, m.width), np.uint8)
        for det in (originals[sample.filepath].detections if originals[sample.filepath] else []):
            expected[full_mask(det, m.width, m.height)] = targets[det.label]
        assert np.array_equal(sample["gt"].get_mask(), expected)  # PNG export is lossless
    png.delete()


# Video datasets: frame labels from the service's tracking ----------------------------------------

VIDEO_PROMPTS = ["red square", "square"]
CLICK = [[8, 8]]  # on the right-moving square of moving_squares_clip
VIDEO_FRAMES = (4, 6)  # the clips' lengths


@pytest.fixture
def video_dataset(plugin, tmp_path, request):
    ds = fo.Dataset(request.node.name[:60], overwrite=True)
    paths = []
    for i, frames in enumerate(VIDEO_FRAMES):
        path = tmp_path / f"clip{i}.mkv"
        path.write_bytes(moving_squares_clip(frames)[0])
        paths.append(path)
    ds.add_samples([fo.Sample(filepath=str(p)) for p in paths])
    yield ds
    ds.delete()


@pytest.fixture
def clicked(monkeypatch):
    """Every video request of the SDK's async client (the operator's) also clicks CLICK.  The tiny
    model's text detector finds nothing in any clip (tests/test_video.py), so without the click
    every frame would be empty and the comparisons vacuous; with it, each prompt's tracking
    holds the clicked square, with the service's object id, on every frame."""
    track_video = AsyncClient.track_video
    monkeypatch.setattr(AsyncClient, "track_video",
                        lambda self, video, prompt=None, points=(), **params: track_video(self, video, prompt, CLICK, **params))


def sdk_tracks(client, path: str, **params) -> dict[str, list[VideoFrame]]:
    return {p: list(client.track_video(path, p, **params)) for p in VIDEO_PROMPTS}


def assert_frames_match_sdk(sample: fo.Sample, field: str, expected: dict[str, list[VideoFrame]],
                            counted: bool = True) -> None:
    """Frame n holds the instances of the SDK's frame n - 1, prompt by prompt: same object id
    (`index`), label, score, box and mask.  The SDK's tracking is a second run of the same video:
    within compare.BATCH (a box may move by one pixel when rounded out, as for images).
    `counted`: the plugin's count of labelled frames is there too (apply_model writes none)."""
    first = next(iter(expected.values()))
    assert list(sample.frames.keys()) == [f.frame_index + 1 for f in first]
    if counted:
        assert sample[done_field(field)] == len(first)
    for frames in zip(*expected.values()):
        w, h = frames[0].width, frames[0].height
        detections = sample.frames[frames[0].frame_index + 1][field].detections
        wanted = [(prompt, TrackedInstanceResult.model_validate(inst, from_attributes=True))
                  for prompt, frame in zip(expected, frames) for inst in frame.instances]
        assert len(detections) == len(wanted)
        for det, (prompt, inst) in zip(detections, wanted):
            assert (det.index, det.label, det.prompt) == (inst.object_id, inst.label, prompt)
            assert det.confidence == pytest.approx(inst.score, abs=BATCH.score)
            assert np.abs(box_pixels(det, w, h) - pixel_box(inst.box, inst.array, w, h)).max() <= 1 + 1e-6
            assert_masks_close(full_mask(det, w, h), inst.array)


def test_video_dataset_gets_the_sdk_tracks_on_every_frame(video_dataset, client, service, clicked):
    params = {"prompts": ", ".join(VIDEO_PROMPTS), "url": service}
    result = segment(video_dataset, params)
    assert result == {"done": 2, "skipped": 0, "failed": 0, "errors": {}}
    assert video_dataset.count("frames.sam3.detections") > 0, "nothing tracked: test is vacuous"
    for sample in video_dataset:
        assert_frames_match_sdk(sample, "sam3", sdk_tracks(client, sample.filepath, points=CLICK))

    # Review counts frame labels; export says plainly that it is for images.
    review = foo.execute_operator(op("review_sam3_labels"), dataset=video_dataset,
                                  params={"label_field": "frames.sam3", "max_score": 1.0}).result
    assert review["per_prompt"] == {p: {"instances": 10, curation.ACCEPTED: 0, curation.REJECTED: 0, "to_review": 10}
                                    for p in VIDEO_PROMPTS}
    assert video_dataset.classes["frames.sam3"] == VIDEO_PROMPTS
    assert video_dataset.mask_targets["frames.sam3"] == {1: VIDEO_PROMPTS[0], 2: VIDEO_PROMPTS[1]}
    assert runs.latest(video_dataset, "frames.sam3").config.done == 2  # the run, under where its labels are
    with pytest.raises(Exception, match="export of video frame labels is not supported"):
        foo.execute_operator(op("export_sam3_labels"), dataset=video_dataset,
                             params={"label_field": "frames.sam3", "export_dir": "unused"})


def test_video_skip_existing_resumes_and_overwrite_redoes(video_dataset, client, service, clicked, tmp_path):
    params = {"prompts": ", ".join(VIDEO_PROMPTS), "url": service}
    first = segment(video_dataset, params)
    assert (first["done"], first["skipped"]) == (2, 0)
    labelled = video_dataset.count("frames.sam3.detections")
    # A video whose frames were written but whose count was not (the run died in between) is redone.
    cut = video_dataset.first()
    cut[done_field("sam3")] = None
    cut.save()
    rerun = segment(video_dataset, params)
    assert (rerun["done"], rerun["skipped"]) == (1, 1)
    assert video_dataset.count("frames.sam3.detections") == labelled, "a re-run must replace, not add"
    again = segment(video_dataset, {**params, "overwrite": True, "mask_dir": str(tmp_path / "masks")})
    assert (again["done"], again["skipped"]) == (2, 0)
    assert all(Path(p).is_file() for p in video_dataset.values("frames.sam3.detections.mask_path", unwind=True))
    for sample in video_dataset:
        assert_frames_match_sdk(sample, "sam3", sdk_tracks(client, sample.filepath, points=CLICK))


def test_a_broken_video_stream_is_tracked_again_and_every_frame_labelled_once(video_dataset, service, clicked):
    # One prompt and one video at a time: the cut stream never meets two others at the replica's
    # concurrent_videos, whose 503 (retried by the client) would add a request to the count.
    with FlakyProxy(service, [CutStream(2)], scripted_path="/v1/video/track") as proxy:
        params = {"prompts": VIDEO_PROMPTS[0], "url": proxy.url, "concurrency": 1}
        result = segment(video_dataset, params)
    assert result == {"done": 2, "skipped": 0, "failed": 0, "errors": {}}
    tracked = [path for path in proxy.paths if path != "/v1/info"]  # the run record asks the service's model once
    assert tracked == ["/v1/video/track"] * 3, "each video once, the one whose stream broke twice"
    for sample, frames in zip(video_dataset, VIDEO_FRAMES, strict=True):
        assert list(sample.frames.keys()) == list(range(1, frames + 1))
        assert sample[done_field("sam3")] == frames
        for frame in sample.frames.values():  # the clicked square, once per frame
            assert [(d.prompt, d.index) for d in frame["sam3"].detections] == [(VIDEO_PROMPTS[0], 1)]


def test_video_refuses_what_the_tracking_api_cannot_do(video_dataset, service):
    with pytest.raises(Exception, match="negative prompts apply to images only"):
        foo.execute_operator(op("segment_with_sam3"), dataset=video_dataset,
                             params={"prompts": "car", "negative_prompts": "poster", "url": service})
    video_dataset.set_values("clicks", [fo.Keypoints(keypoints=[fo.Keypoint(points=[(0.2, 0.2)])])] * 2)
    with pytest.raises(Exception, match="refine with points works on image datasets"):
        foo.execute_operator(op("refine_with_points"), dataset=video_dataset,
                             params={"keypoints_field": "clicks", "url": service})
    assert not video_dataset.has_frame_field("sam3")


def labelled(ds: fo.Dataset) -> int:
    ds.reload()  # another process (the delegated executor) writes the labels
    return len(ds.exists("sam3")) if ds.has_field("sam3") else 0


@pytest.mark.fleet  # a whole service of its own, killed: `make test-fleet`
def test_delegated_run_fails_when_the_service_dies_and_a_rerun_completes(plugin, service, service_config, tmp_path):
    ds = fo.Dataset("delegated-run", overwrite=True)
    # 24 samples in chunks of 4: the kill comes once two chunks are saved, and a chunk or two more
    # may finish meanwhile, which still leaves most of the dataset for the re-run.
    ds.add_samples([fo.Sample(filepath=str(p)) for p in write_images(tmp_path / "images", 24, seed=5)])
    ray_before = ray_processes()
    with service_process(service_config, tmp_path / "service.log") as doomed:
        doomed_url = doomed.url
        params = {"prompts": PROMPT_TEXT, "threshold": THRESHOLD, "url": doomed_url, "concurrency": 2, "chunk_size": 4}
        queued = foo.execute_operator(op("segment_with_sam3"), dataset=ds, request_delegation=True, params=params)
        assert queued.delegated
        (operation,) = DelegatedOperationService().list_operations(dataset_name=ds.name)
        assert operation.run_state == ExecutionRunState.QUEUED

        log = tmp_path / "executor.log"
        executor = subprocess.Popen([str(Path(sys.executable).parent / "fiftyone"), "delegated", "launch"],
                                    stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_for(lambda: labelled(ds) >= 8, 300, "the first chunks", interval_s=0.1)
            except AssertionError as exc:
                state = DelegatedOperationService().get(operation.id)
                raise AssertionError(f"{exc}; operation {state.run_state}: {state.result}\n{log.read_text()[-3000:]}")
            doomed.kill()  # the whole service dies mid-run
            # The operator's client gives up once its retries are spent (the SDK's own bound on
            # that, connects timing out included); the executor then records the failure.
            budget_s = Settings().unreachable_after_s() + 30

            def ended():
                o = DelegatedOperationService().get(operation.id)
                return o if o.run_state in (ExecutionRunState.FAILED, ExecutionRunState.COMPLETED) else None

            try:
                ended_op = wait_for(ended, budget_s, "the delegated run to end", interval_s=0.5)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
            assert ended_op.run_state == ExecutionRunState.FAILED, (ended_op.result, log.read_text()[-3000:])
            assert "ConnectionError" in ended_op.result.error and doomed_url in ended_op.result.error
        finally:
            os.killpg(executor.pid, signal.SIGTERM)
            executor.wait(60)
    assert not wait_for_ray_exit(ray_before), "the killed service left Ray processes behind"
    kept = labelled(ds)
    assert 8 <= kept < len(ds), "the run must have stopped partway, keeping its saved chunks"

    rerun = segment(ds, {**params, "url": service})
    assert (rerun["done"], rerun["skipped"], rerun["failed"]) == (len(ds) - kept, kept, 0)
    with Client(service) as c:
        for sample in ds:  # every sample once, none duplicated: exactly the SDK's instances
            assert_labels_match_sdk(sample, "sam3", sdk_results(c, sample.filepath))
    ds.delete()
