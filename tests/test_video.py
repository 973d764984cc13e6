"""Video tracking: id stability on synthetic clips with a test double, the tiny SAM3 end to end
through HTTP (streamed NDJSON equals the tracking code called in-process), streaming, SDK, CLI,
bad input."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from sdk import AsyncClient
from sdk.errors import APIError, ValidationError
from sdk.masks import decode_mask
from sdk.schema import Limits, TrackLine, VideoFrame, VideoSummary
from serving.errors import ServiceError
from serving.video_decode import iter_frames, probe_video
from serving.video_lines import frame_line
from serving.video_tracking import TrackRequest, track_video
from video_double import MovingBlobTrackerDouble, encode_clip, moving_squares_clip, moving_squares_pictures

TRACK = "/v1/video/track"


def post(url: str, video: bytes, params: dict, **kwargs) -> httpx.Response:
    return httpx.post(url + TRACK, files={"video": ("clip.mkv", video)}, data={"params": json.dumps(params)},
                      timeout=120, **kwargs)


def lines_of(response: httpx.Response) -> list:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [TrackLine.model_validate_json(line).root for line in response.text.splitlines()]


@pytest.fixture(scope="module")
def clip():
    return moving_squares_clip(8)


@pytest.fixture(scope="module")
def sam3_video_tracker(tiny_model):
    """The service's tracking code in-process, on the same tiny checkpoint."""
    from serving.config import ServiceConfig
    from serving.model_loader import load_sam3
    from serving.video_loader import load_sam3_video
    from serving.video_tracking import Sam3VideoTracker

    config = ServiceConfig.model_validate({"model": tiny_model})
    return Sam3VideoTracker(load_sam3_video(load_sam3(config), tiny_model))


# (1) logic: ids stay stable on a clip whose ground truth is known --------------------------------

@pytest.mark.parametrize("request_", [TrackRequest(prompt="red square"),
                                      TrackRequest(points=[[6, 8]], point_labels=[1], frame=2)],
                         ids=["text", "points"])
def test_double_keeps_each_object_id_across_frames(clip, request_):
    data, truth = clip
    tracked = list(track_video(data, request_, MovingBlobTrackerDouble(), max_frames=100))
    assert [t.frame_index for t in tracked] == list(range(request_.frame, len(truth)))
    for t in tracked:
        line = frame_line(t, len(truth), "rle")  # through the wire format as well
        wanted = truth[t.frame_index] if request_.prompt else truth[t.frame_index][:1]
        assert [i.object_id for i in line.instances] == list(range(1, len(wanted) + 1))
        for instance, mask in zip(line.instances, wanted):
            decoded = decode_mask(instance.mask)
            assert (decoded & mask).sum() / (decoded | mask).sum() == 1.0  # lossless clip: exact


def test_text_and_points_together_track_the_clicked_object_besides_every_instance(clip):
    data, truth = clip
    both = TrackRequest(prompt="red square", points=[[6, 8]], point_labels=[1])
    for t in track_video(data, both, MovingBlobTrackerDouble(), max_frames=100):
        line = frame_line(t, len(truth), "rle")
        assert [(i.object_id, i.label) for i in line.instances] == [(1, "red square"), (2, "red square"), (3, "object")]
        masks = [decode_mask(i.mask) for i in line.instances]
        assert np.array_equal(masks[0], truth[t.frame_index][0]) and np.array_equal(masks[1], truth[t.frame_index][1])
        assert np.array_equal(masks[2], truth[t.frame_index][0]), "the clicked square, tracked on its own"


def test_frames_are_counted_as_decoded_and_refused_past_max_frames(clip):
    """The ingress's probe counts packets; decoding counts again, so a container whose packets
    undercount its frames is stopped at the limit with the limit's error, never silently cut."""
    data, truth = clip
    tracked = track_video(data, TrackRequest(prompt="red"), MovingBlobTrackerDouble(), max_frames=3)
    assert [next(tracked).frame_index for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ServiceError) as refused:
        next(tracked)
    assert (refused.value.status, refused.value.code) == (413, "too_many_frames")
    assert len(list(track_video(data, TrackRequest(prompt="red"), MovingBlobTrackerDouble(), len(truth)))) == len(truth)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_is_tracked_as_displayed(rotation):
    """Phones store portrait video as landscape frames plus a display rotation; like EXIF on
    photos, the service works on the picture as displayed: size, points and masks."""
    pictures, truth = moving_squares_pictures(8)
    data = encode_clip(pictures, rotation=rotation)
    turns = rotation // 90
    shown = [np.rot90(p, turns) for p in pictures]
    info = probe_video(data, Limits())
    assert (info.height, info.width) == shown[0].shape[:2]
    assert all(np.array_equal(a, b) for a, b in zip(iter_frames(data, 0, 100), shown, strict=True))
    frames = list(track_video(data, TrackRequest(prompt="red"), MovingBlobTrackerDouble(), 100))
    for frame, masks in zip(frames, truth, strict=True):
        got = sorted((m.crop().sum(), m.y, m.x) for m in frame.masks)
        want = sorted((t.sum(), *[int(v.min()) for v in np.nonzero(np.rot90(t, turns))]) for t in masks)
        assert got == want


def test_tracking_keeps_no_frame_pixels(tiny_model, sam3_video_tracker, clip):
    """transformers' streaming session would keep every processed frame (6 MB each at SAM3's size
    in bfloat16) on the inference device; the service's session keeps none, and tracks the same."""
    from serving.video_tracking import Sam3VideoTracker

    class KeepsSessions(Sam3VideoTracker):
        sessions: list = []

        def session(self, processor):
            self.sessions.append(super().session(processor))
            return self.sessions[-1]

    class KeepsFrames(Sam3VideoTracker):
        _frame_done = staticmethod(lambda session: None)

    data, truth = clip
    tracker = KeepsSessions(sam3_video_tracker.m)
    for request in (TrackRequest(prompt="red square"), TrackRequest(points=[[8, 8]], point_labels=[1])):
        ours = [frame_line(t, len(truth), "rle") for t in track_video(data, request, tracker, 100)]
        kept = [frame_line(t, len(truth), "rle") for t in track_video(data, request, KeepsFrames(tracker.m), 100)]
        assert ours == kept
        session = tracker.sessions[-1]
        assert str(session.video_storage_device) == "cpu"
        assert len(session.processed_frames) == len(truth)  # the count transformers relies on is kept
        assert sum(f.numel() for f in session.processed_frames.values()) == 0


# (2) end to end through HTTP with the tiny SAM3 --------------------------------------------------

@pytest.mark.parametrize("params", [{"points": [{"x": 8, "y": 8}], "frame": 1}, {"prompt": "red square"},
                                    {"prompt": "red square", "points": [{"x": 8, "y": 8}]}],
                         ids=["points", "text", "both"])
def test_served_stream_equals_inprocess_tracking(service, clip, sam3_video_tracker, params):
    data, truth = clip
    lines = lines_of(post(service, data, params))
    frames, summary = lines[:-1], lines[-1]
    start = params.get("frame", 0)
    assert all(isinstance(f, VideoFrame) for f in frames) and isinstance(summary, VideoSummary)
    assert [f.frame_index for f in frames] == list(range(start, len(truth)))
    assert summary.frames == len(frames)
    request = TrackRequest(prompt=params.get("prompt"), points=[[8, 8]] if "points" in params else [],
                           point_labels=[1] if "points" in params else [], frame=start)
    expected = [frame_line(t, len(truth), "rle") for t in track_video(data, request, sam3_video_tracker, 100)]
    assert frames == expected
    if "points" in params:  # a point prompt always yields its object (the tiny text detector finds nothing)
        assert all([i.object_id for i in f.instances] == [1] for f in frames) and summary.object_ids == [1]


# (3) streaming: the first frame arrives before the last one is computed ---------------------------

def test_first_frame_arrives_before_the_last_is_computed(service):
    data, truth = moving_squares_clip(30)  # = the test service's max_video_frames
    arrivals = []
    started = time.monotonic()
    with httpx.stream("POST", service + TRACK, files={"video": ("clip.mkv", data)},
                      data={"params": json.dumps({"points": [{"x": 8, "y": 8}]})}, timeout=120) as response:
        for line in response.iter_lines():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == len(truth) + 1
    # Tracking takes many frame-times; a buffered response would deliver every line at the end.
    per_frame = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    assert per_frame > 0.005, arrivals
    assert arrivals[0] < arrivals[-1] - 10 * per_frame, arrivals


def test_a_replica_tracks_at_most_concurrent_videos_and_refuses_more_at_once(service, client):
    """Two videos run (the default `concurrent_videos`); a third is answered 503 at once, not
    queued behind them on the GPU; the SDK's retry then gets it through."""
    data, truth = moving_squares_clip(30)
    files, params = {"video": ("clip.mkv", data)}, {"params": json.dumps({"points": [{"x": 8, "y": 8}]})}

    async def run():
        async with httpx.AsyncClient(base_url=service, timeout=120) as http:
            async with http.stream("POST", TRACK, files=files, data=params) as one, \
                    http.stream("POST", TRACK, files=files, data=params) as two:
                streams = [one.aiter_lines(), two.aiter_lines()]
                for lines in streams:
                    await anext(lines)  # both are tracking now
                third = await http.post(TRACK, files=files, data=params)
                lasts = [[line async for line in lines][-1] for lines in streams]
            return third, lasts

    third, lasts = asyncio.run(run())
    assert third.status_code == 503 and third.json()["error"]["code"] == "overloaded", third.text
    assert "concurrent_videos" in third.json()["error"]["message"] and third.headers["retry-after"] == "5"
    for last in lasts:
        assert isinstance(TrackLine.model_validate_json(last).root, VideoSummary)
    assert len(list(client.track_video(data, points=[[8, 8]]))) == len(truth)


def test_rotated_video_is_served_as_displayed(service):
    pictures, _ = moving_squares_pictures(4)  # 64x48 stored, 48x64 shown
    data = encode_clip(pictures, rotation=90)
    frames = lines_of(post(service, data, {"points": [{"x": 8, "y": 60}]}))[:-1]  # y=60: only inside as shown
    assert {(f.width, f.height) for f in frames} == {(48, 64)}
    outside = post(service, data, {"points": [{"x": 60, "y": 8}]})  # inside the stored frame only
    assert (outside.status_code, outside.json()["error"]["code"]) == (422, "out_of_bounds")


# (4) SDK and CLI ------------------------------------------------------------------------------------

def test_sdk_iterators_equal_the_stream(service, client, clip):
    data, _ = clip
    served = [f for f in lines_of(post(service, data, {"points": [{"x": 8, "y": 8}]})) if isinstance(f, VideoFrame)]
    assert list(client.track_video(data, points=[[8, 8]])) == served

    async def collect():
        async with AsyncClient(service) as aclient:
            return [f async for f in aclient.track_video(data, points=[[8, 8]])]

    assert asyncio.run(collect()) == served
    with pytest.raises(ValidationError):
        list(client.track_video(data))
    with pytest.raises(APIError) as err:
        list(client.track_video(data, points=[[8, 8]], frame=99))
    assert err.value.status == 422 and err.value.code == "out_of_range"


def test_cli_writes_ndjson_and_object_id_pngs(service, clip, tmp_path):
    data, truth = clip
    video = tmp_path / "clip.mkv"
    video.write_bytes(data)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "sdk.cli", "track", str(video), "--point", "8,8", "--out", str(out),
                           "--url", service], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    frames = [VideoFrame.model_validate_json(line) for line in (out / "frames.ndjson").read_text().splitlines()]
    assert [f.frame_index for f in frames] == list(range(len(truth)))
    for frame in frames:
        ids = np.asarray(Image.open(out / "masks" / f"{frame.frame_index:06d}.png"))
        expected = np.zeros_like(ids)
        for instance in frame.instances:
            expected[decode_mask(instance.mask)] = instance.object_id
        assert np.array_equal(ids, expected)


# (5) bad input ---------------------------------------------------------------------------------------

def _bad_cases(clip):
    data, truth = clip
    too_long, _ = moving_squares_clip(31)
    too_big = encode_clip([np.zeros((320, 320, 3), np.uint8)])
    point = {"points": [{"x": 8, "y": 8}]}
    return [
        (b"this is not a video" * 50, point, 422, "invalid_video"),
        (b"", point, 422, "invalid_video"),
        (too_long, point, 413, "too_many_frames"),
        (too_big, point, 413, "video_too_large"),
        (data, {**point, "frame": len(truth)}, 422, "out_of_range"),
        (data, {"points": [{"x": 64.5, "y": 8}]}, 422, "out_of_bounds"),
        (data, {}, 422, "invalid_request"),
        (data, {"prompt": "x" * 51}, 422, "prompt_too_long"),
        (data, {**point, "frame": -1}, 422, "invalid_request"),
        (b"\0" * 3_000_001, point, 413, "payload_too_large"),
    ]


def test_bad_input_is_a_4xx_json_error_and_the_service_keeps_serving(service, clip):
    for video, params, status, code in _bad_cases(clip):
        response = post(service, video, params)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    wrong_type = httpx.post(service + TRACK, json={"video": "AAAA"}, timeout=30)
    assert wrong_type.status_code == 415
    assert len(lines_of(post(service, clip[0], {"points": [{"x": 8, "y": 8}]}))) == len(clip[1]) + 1
