"""`dataset.apply_model` with the samfleet FiftyOne model, and the remote zoo source, against a
real FiftyOne database and the real service (tiny model).  Datasets and comparisons are those
of tests/test_fiftyone_plugin.py: the model must write exactly what the plugin writes."""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fiftyone as fo
import fiftyone.zoo as foz
import pytest

from compare import assert_masks_close
from flaky_proxy import FlakyProxy
from fiftyone_plugin.labels import full_mask
from fiftyone_plugin.model import SamfleetModel
from test_fiftyone_plugin import (  # noqa: F401  (fixtures: dataset, video_dataset, clicked, plugin)
    CLICK,
    PROMPTS,
    THRESHOLD,
    VIDEO_PROMPTS,
    assert_frames_match_sdk,
    assert_labels_match_sdk,
    box_pixels,
    clicked,
    dataset,
    sdk_results,
    sdk_tracks,
    video_dataset,
)

REPO = Path(__file__).resolve().parents[1]


def test_apply_model_with_classes_stores_the_sdk_results_in_one_request_per_image(dataset, client, service):
    """The call a FiftyOne user knows: apply_model(classes=..., confidence_thresh=...)."""
    with FlakyProxy(service, []) as counting:
        model = SamfleetModel.of(url=counting.url)
        dataset.apply_model(model, "sam3", classes=PROMPTS, confidence_thresh=THRESHOLD, batch_size=4)
    assert counting.paths.count("/v1/segment") == len(dataset) == 6
    assert sum(len(s["sam3"].detections) for s in dataset) > 0, "the tiny model found nothing: test is vacuous"
    for sample in dataset:
        assert_labels_match_sdk(sample, "sam3", sdk_results(client, sample.filepath))


def test_prompt_field_boxes_are_exemplars_and_keypoints_are_objects(dataset, client, service):
    dataset.compute_metadata()
    boxed, clicked_sample = dataset.take(2, seed=0)
    boxed["prompts"] = fo.Detections(detections=[fo.Detection(label="thing", bounding_box=[0.1, 0.1, 0.4, 0.5]),
                                                 fo.Detection(label="cup", bounding_box=[0.5, 0.4, 0.3, 0.3])])
    boxed.save()
    clicked_sample["clicks"] = fo.Keypoints(keypoints=[
        fo.Keypoint(label="lid", points=[(0.7, 0.6), (0.5, 0.5)], point_labels=["positive", "negative"])])
    clicked_sample.save()
    model = SamfleetModel.of(url=service, classes=["thing"], confidence_thresh=THRESHOLD)

    dataset.select(boxed.id).apply_model(model, "with_boxes", prompt_field="prompts")
    boxed.reload()
    w, h = boxed.metadata.width, boxed.metadata.height
    thing, cup = (box_pixels(d, w, h).tolist() for d in boxed["prompts"].detections)
    expected = {"thing": client.segment(boxed.filepath, "thing", exemplars=[thing], threshold=THRESHOLD),
                "exemplar": client.segment(boxed.filepath, exemplars=[cup], threshold=THRESHOLD)}
    assert expected["exemplar"].instances, "the tiny model found nothing: test is vacuous"
    assert_labels_match_sdk(boxed, "with_boxes", expected)

    dataset.select(clicked_sample.id).apply_model(model, "with_clicks", prompt_field="clicks")
    clicked_sample.reload()
    w, h = clicked_sample.metadata.width, clicked_sample.metadata.height
    (lid,) = [d for d in clicked_sample["with_clicks"].detections if d.prompt == "points"]
    assert lid.label == "lid" and lid.keypoint_id == clicked_sample["clicks"].keypoints[0].id
    points = client.segment_points(clicked_sample.filepath, [[0.7 * w, 0.6 * h], [0.5 * w, 0.5 * h]], labels=[1, 0])
    assert_masks_close(full_mask(lid, w, h), points.instances[0].array)


def test_bad_input_fails_before_any_request(dataset, service):
    with pytest.raises(ValueError, match="give classes"):
        dataset.apply_model(SamfleetModel.of(url=service), "none")
    with pytest.raises(Exception, match="threshold"):
        dataset.apply_model(SamfleetModel.of(url=service, classes=["thing"]), "bad", confidence_thresh=2.0)
    assert not dataset.has_field("none") and not dataset.has_field("bad")


class ArchiveServer:
    """The zoo source as FiftyOne downloads a remote one: an archive at a URL (here on loopback)."""

    def __init__(self, folder: Path):
        archive = shutil.make_archive(str(folder / "samfleet-zoo"), "zip", root_dir=REPO, base_dir="zoo")
        handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/{Path(archive).name}"

    def __enter__(self) -> ArchiveServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_zoo_source_registers_loads_without_weights_and_labels(dataset, client, service, tmp_path, monkeypatch):
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(tmp_path / "zoo"))
    with ArchiveServer(tmp_path) as source:
        foz.register_zoo_model_source(source.url)
    assert source.url in foz.list_zoo_model_sources()
    form = foz.get_zoo_model("samfleet/sam3").resolve_input(ctx=None)  # the App's "Apply zoo model" form
    assert {"url", "classes"} <= set(form.type.properties)

    model = foz.load_zoo_model("samfleet/sam3", url=service, api_key="", classes=PROMPTS, confidence_thresh=THRESHOLD)
    assert isinstance(model, SamfleetModel) and model.media_type == "image"
    assert foz.find_zoo_model("samfleet/sam3").endswith("samfleet-sam3.json")  # the marker, no weights
    dataset.limit(2).apply_model(model, "from_zoo", batch_size=2)
    for sample in dataset.limit(2):
        assert_labels_match_sdk(sample, "from_zoo", sdk_results(client, sample.filepath))
    assert foz.load_zoo_model("samfleet/sam3-video", url=service, classes=["car"]).media_type == "video"


def test_video_dataset_gets_frame_labels(video_dataset, client, service, clicked):
    model = SamfleetModel.of(url=service, classes=VIDEO_PROMPTS, media_type="video")
    video_dataset.apply_model(model, "sam3")  # FiftyOne reads each video's metadata with ffprobe: make test installs ffmpeg
    assert video_dataset.count("frames.sam3.detections") > 0, "nothing tracked: test is vacuous"
    for sample in video_dataset:
        assert_frames_match_sdk(sample, "sam3", sdk_tracks(client, sample.filepath, points=CLICK), counted=False)
