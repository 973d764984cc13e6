"""A video stream that breaks after its 200: the SDK says how far it got, and the whole video is
sent again a bounded number of times (sdk.video), by `samfleet track` as by the FiftyOne plugin
(tests/test_fiftyone_plugin.py).  A loopback proxy (tests/flaky_proxy.py) breaks the real
service's streams."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from flaky_proxy import CutStream, FlakyProxy
from sdk import APIError, AsyncClient, Client, ConnectionError, RetryPolicy
from sdk.cli import main
from sdk.errors import BrokenStreamError, StreamProgress, VideoStreamError
from sdk.schema import VideoFrame
from sdk.video import object_id_image, track_whole_video, worth_sending_again
from video_double import moving_squares_clip

FRAMES = 6
POINT = [[8, 8]]
TRACK = "/v1/video/track"
FAST = RetryPolicy(base_delay_s=0.05, max_delay_s=0.2)  # the backoff between whole-video attempts


@pytest.fixture(scope="module")
def clip() -> bytes:
    return moving_squares_clip(FRAMES)[0]


@pytest.fixture(scope="module")
def clean_run(client, clip) -> list[VideoFrame]:
    return list(client.track_video(clip, points=POINT))


def tracks(proxy: FlakyProxy) -> int:
    return proxy.paths.count(TRACK)


# The SDK: a broken stream raises, saying how far it got -----------------------------------------

@pytest.mark.parametrize("end, reason", [("close", "RemoteProtocolError: peer closed connection"),
                                         ("reset", "ReadError"),
                                         ("finish", "the body ended before its summary line")])
def test_a_cut_stream_raises_naming_the_frame_it_reached(service, clip, clean_run, end, reason):
    received = []
    with FlakyProxy(service, [CutStream(3, end)]) as proxy, Client(proxy.url) as flaky:
        with pytest.raises(BrokenStreamError) as broken:
            for frame in flaky.track_video(clip, points=POINT):
                received.append(frame)
    # A reset may drop lines the kernel had not handed over yet; the error counts what arrived.
    assert received == (clean_run[:len(received)] if end == "reset" else clean_run[:3])
    got = len(received)
    progress = StreamProgress(proxy.url, got, got - 1, FRAMES) if got else StreamProgress(proxy.url)
    assert broken.value.progress == progress
    assert str(broken.value).startswith(f"the video stream from {proxy.url} broke {progress}: {reason}")
    assert isinstance(broken.value, ConnectionError)


def test_the_async_client_raises_the_same(service, clip):
    async def track() -> list[VideoFrame]:
        async with AsyncClient(proxy.url) as flaky:
            return [frame async for frame in flaky.track_video(clip, points=POINT)]

    with FlakyProxy(service, [CutStream(3)]) as proxy, pytest.raises(BrokenStreamError) as broken:
        asyncio.run(track())
    assert broken.value.progress == StreamProgress(proxy.url, 3, 2, FRAMES)
    assert str(broken.value).startswith(f"the video stream from {proxy.url} broke after frame 2 of {FRAMES} "
                                        "(3 frames received): RemoteProtocolError: peer closed connection")


@pytest.mark.parametrize("status, code", [(503, "replica_lost"), (413, "too_many_frames")])
def test_an_error_line_raises_naming_the_frame_and_whether_to_send_again(service, clip, status, code):
    with FlakyProxy(service, [CutStream(2, "finish", (status, code))]) as proxy, Client(proxy.url) as flaky:
        with pytest.raises(VideoStreamError) as failed:
            list(flaky.track_video(clip, points=POINT))
    assert (failed.value.status, failed.value.code) == (status, code)
    assert failed.value.progress == StreamProgress(proxy.url, 2, 1, FRAMES)
    assert str(failed.value) == (f"the video stream from {proxy.url} failed after frame 1 of {FRAMES} "
                                 f"(2 frames received): {code} ({status}): scripted {code}")
    assert worth_sending_again(failed.value, RetryPolicy()) is (status == 503)


# The whole video sent again -------------------------------------------------------------------------

def test_a_lost_replica_has_the_whole_video_sent_again(service, clip, clean_run):
    told: list[str] = []

    async def track() -> list[VideoFrame]:
        async with AsyncClient(proxy.url, retry=FAST) as flaky:
            return await track_whole_video(flaky, clip, points=POINT, on_retry=told.append)

    with FlakyProxy(service, [CutStream(4, "finish", (503, "replica_lost"))]) as proxy:
        frames = asyncio.run(track())
    assert frames == clean_run, "each frame once, none of the broken stream's"
    assert tracks(proxy) == 2
    assert len(told) == 1 and "failed after frame 3 of 6 (4 frames received): replica_lost" in told[0]
    assert told[0].endswith("(attempt 2 of 3)")


@pytest.mark.parametrize("script, params, error, status", [
    ([CutStream(2, "finish", (413, "too_many_frames"))], {}, VideoStreamError, 413),
    ([], {"frame": FRAMES}, APIError, 422),  # refused before the stream: out_of_range
], ids=["permanent-error-line", "4xx"])
def test_a_permanent_failure_is_not_sent_again(service, clip, script, params, error, status):
    async def track() -> list[VideoFrame]:
        async with AsyncClient(proxy.url, retry=FAST) as flaky:
            return await track_whole_video(flaky, clip, points=POINT, **params)

    with FlakyProxy(service, script) as proxy, pytest.raises(error) as failed:
        asyncio.run(track())
    assert failed.value.status == status
    assert tracks(proxy) == 1


def run_track(video, out, url: str, *extra: str) -> int:
    return main(["track", str(video), "--point", "8,8", "--out", str(out), "--url", url, "--no-progress", *extra])


def test_cli_output_after_a_retry_is_a_clean_runs(service, clip, clean_run, tmp_path, capsys):
    video = tmp_path / "clip.mkv"
    video.write_bytes(clip)
    with FlakyProxy(service, [CutStream(3)]) as proxy:
        assert run_track(video, tmp_path / "out", proxy.url) == 0
    err = capsys.readouterr().err
    assert f"broke after frame 2 of {FRAMES} (3 frames received)" in err and err.rstrip().endswith("(attempt 2 of 3)")
    assert tracks(proxy) == 2
    out = tmp_path / "out"
    assert (out / "frames.ndjson").read_text() == "".join(f.model_dump_json() + "\n" for f in clean_run)
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i:06d}.png" for i in range(FRAMES)]
    for frame in clean_run:
        assert np.array_equal(np.asarray(Image.open(out / "masks" / f"{frame.frame_index:06d}.png")),
                              object_id_image(frame))


def test_cli_gives_up_after_its_attempts(service, clip, tmp_path, capsys):
    video = tmp_path / "clip.mkv"
    video.write_bytes(clip)
    with FlakyProxy(service, [CutStream(1)] * 3) as proxy:
        assert run_track(video, tmp_path / "out", proxy.url, "--attempts", "2") == 1
    assert tracks(proxy) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("(attempt 2 of 2)")
    assert err[1].startswith(f"error: the video stream from {proxy.url} broke after frame 0 of {FRAMES} "
                             "(1 frames received): RemoteProtocolError")
    assert len(err) == 2
