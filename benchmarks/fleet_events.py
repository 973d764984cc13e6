"""Change the fleet while work is in flight, and record what happened to the work.

    python benchmarks/fleet_events.py rollout   --out DIR   # redeploy with one batching setting changed
    python benchmarks/fleet_events.py downscale --out DIR   # the autoscaler removes a replica holding a video
    python benchmarks/fleet_events.py node-loss --out DIR   # the GPU node holding the SAM3 replica dies
    ... --grace-s 20                                        # both deployments at Ray's default grace

Each scenario serves the packaged Serve config, deployed as `serve deploy` deploys it
(`serving.runner.deploy_config`), with the SAM3 output double (serving/output_double.py) so that
a video lasts `--video-s` seconds at almost no CPU.  One video (two in `downscale`, one per
replica) streams through /v1/video/track and images are sent with the SDK, one at a time, until
the videos end; `node-loss` also runs `samfleet annotate` on a folder of images.  The outcome of
every request goes to DIR/outcome.json; tests/test_fleet_lifecycle.py asserts on it.

Replica mode (rollout, downscale) declares two GPUs this machine does not have, so a new SAM3
replica can start while the old one drains.  `node-loss` runs on benchmarks/autoscaling.py's fake
cluster, whose autoscaler brings a GPU node up for the replica Serve starts in place of the lost one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from autoscaling import FAST_METRICS, MODEL, FakeCluster
from common import Sampler, free_port

from sdk.video import DEFAULT_VIDEO_ATTEMPTS

INGRESS = "Ingress"
APP = "samfleet"
RAY_DEFAULT_GRACE_S = 20.0  # ray.serve's DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S
FORWARD_MS = 200  # per image batch: images stay in flight, not answered in a blink
PROMPT = "3 cars"  # the double answers 3 instances
FAKE_GPUS = 2  # one replica's GPU and one for its successor during a rollout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["rollout", "downscale", "node-loss"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--video-s",
        type=float,
        help="each video's length in tracking time (default: rollout 150 s, since the old replicas only begin "
        "to stop once the new ones run, which a loaded 2-core machine has taken 84 s to start; else 60 s)",
    )
    p.add_argument("--video-frames", type=int, default=400)
    p.add_argument("--grace-s", type=float, help="both deployments' graceful_shutdown_timeout_s (default: shipped)")
    p.add_argument("--images", type=int, default=40, help="node-loss: images in the annotated folder")
    args = p.parse_args()
    if args.video_s is None:
        args.video_s = 150.0 if args.scenario == "rollout" else 60.0
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.update(FAST_METRICS)
    run = {"rollout": rollout, "downscale": downscale, "node-loss": node_loss}[args.scenario]
    outcome = run(args)
    outcome.update(scenario=args.scenario, grace_s=grace_of(outcome.pop("config")))
    (args.out / "outcome.json").write_text(json.dumps(outcome, indent=1))
    print(json.dumps({k: v for k, v in outcome.items() if k != "replica_samples"}, indent=1))
    return 0


def fleet_config(model: str, grace_s: float | None, *, model_replicas: int = 1, head_only: bool = False) -> dict:
    """The packaged Serve config on a free loopback port: fixed replica counts (one ingress), the
    output double as the model, and optionally another grace for both deployments."""
    from serving import runner

    raw = runner.load_config(model=model, port=free_port())
    if head_only:  # every fake node shares this machine's loopback: one HTTP proxy, on the head
        raw["proxy_location"] = "HeadOnly"
    for deployment in raw["applications"][0]["deployments"]:
        deployment.pop("autoscaling_config")
        deployment["num_replicas"] = model_replicas if deployment["name"] == MODEL else 1
        if grace_s is not None:
            deployment["graceful_shutdown_timeout_s"] = grace_s
    return raw


def deployment(raw: dict, name: str) -> dict:
    return next(d for d in raw["applications"][0]["deployments"] if d["name"] == name)


def grace_of(raw: dict) -> dict[str, float]:
    return {
        name: deployment(raw, name).get("graceful_shutdown_timeout_s", RAY_DEFAULT_GRACE_S) for name in (MODEL, INGRESS)
    }


def url_of(raw: dict) -> str:
    return f"http://127.0.0.1:{raw['http_options']['port']}"


@contextlib.contextmanager
def serving(raw: dict, *, address: str | None = None) -> Iterator[str]:
    """`raw` deployed on an embedded Ray with FAKE_GPUS (or on the cluster at `address`); its URL."""
    from ray import serve

    from serving import runner

    runner.init_ray(address=address, num_gpus=None if address else FAKE_GPUS)
    try:
        runner.deploy_config(raw)
        wait(lambda: deploy_failed() or healthy(url_of(raw)), 300, "the application to start")
        if failed := deploy_failed():
            raise RuntimeError(f"the application failed to deploy: {failed}")
        yield url_of(raw)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()


def deploy_failed() -> str:
    from ray import serve

    app = serve.status().applications.get(APP)
    return app.message if app is not None and str(app.status.value) == "DEPLOY_FAILED" else ""


def healthy(url: str) -> bool:
    import httpx

    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    return False


class Clock:
    def __init__(self):
        self.started = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)


class ReplicaWatch(Sampler):
    """Serve's replica states per deployment every 0.25 s, in a background thread."""

    def __init__(self, clock: Clock):
        super().__init__(interval_s=0.25)
        self.clock = clock
        self.samples: list[dict] = []

    def sample(self) -> None:
        from ray import serve

        with contextlib.suppress(Exception):  # the controller is busy or restarting: next sample
            app = serve.status().applications[APP]
            self.samples.append(
                {
                    "t": self.clock.now(),
                    "app": str(app.status.value),
                    **{name: {str(k): v for k, v in d.replica_states.items()} for name, d in app.deployments.items()},
                }
            )

    def first(self, condition, after: float = 0.0) -> float | None:
        return next((s["t"] for s in self.samples if s["t"] >= after and condition(s)), None)


def clip(frames: int, size: tuple[int, int] = (48, 64)) -> bytes:
    """A lossless clip of `frames` frames, each a shade of grey (what is in it does not matter:
    the double's tracker draws its own object)."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.height, stream.width = size
        stream.pix_fmt = "bgr0"
        for index in range(frames):
            picture = np.full((*size, 3), index % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


class VideoRun:
    """One video through the SDK (`sdk.video.track_with_retries`: at most `attempts` streams, the
    whole video again after one breaks), in a background thread: the frames of the last stream,
    the retries said, and how it ended (complete = the summary line; else the SDK's exception)."""

    def __init__(self, url: str, video: bytes, clock: Clock, attempts: int = 1):
        self.url, self.video, self.clock, self.attempts = url, video, clock, attempts
        self.frames = 0
        self.first_frame_at: float | None = None
        self.retries: list[str] = []
        self.result: dict = {}
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _receive(self, frames) -> None:
        self.frames = 0  # a retry starts the video over
        async for frame in frames:
            assert frame.frame_index == self.frames, "frames out of order"
            self.frames += 1
            self.first_frame_at = self.first_frame_at or self.clock.now()

    async def _run(self) -> None:
        from sdk import AsyncClient
        from sdk.video import track_with_retries

        try:
            async with AsyncClient(self.url) as client:
                await track_with_retries(
                    client, self._receive, self.video, PROMPT, attempts=self.attempts, on_retry=self.retries.append
                )
            ended = {"complete": True}
        except Exception as exc:  # noqa: BLE001 - whatever the SDK raises is part of the outcome
            ended = {"complete": False, "error": f"{type(exc).__name__}: {exc}"}
        self.result = {
            "frames": self.frames,
            "first_frame_at": self.first_frame_at,
            "ended_at": self.clock.now(),
            "retries": self.retries,
            **ended,
        }

    def started(self) -> bool:
        return self.frames > 0 or not self._thread.is_alive()

    def join(self) -> dict:
        self._thread.join()
        return self.result


class ImageStream:
    """Images sent one at a time with the SDK's batch (each its own PNG, index in order) until
    `stop()`: in flight through whatever happens meanwhile.  Each answer is counted by index."""

    def __init__(self, url: str):
        self.url = url
        self.answers: dict[int, int] = {}
        self.errors: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _images(self) -> Iterator[bytes]:
        while not self._stop.is_set():
            yield png(self.sent)
            self.sent += 1

    def _run(self) -> None:
        from sdk import Client

        with Client(self.url) as client:
            for item in client.segment_many(self._images(), PROMPT, concurrency=2, ordered=False, progress=False):
                self.answers[item.index] = self.answers.get(item.index, 0) + 1
                if not item.ok:
                    self.errors.append(f"{item.index}: {item.error}")

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {
            "sent": self.sent,
            "answered": len(self.answers),
            "answered_twice": sorted(i for i, n in self.answers.items() if n > 1),
            "errors": self.errors,
        }


def png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((48, 64, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def double_model(args) -> str:
    from serving.output_double import build_output_double

    frame_ms = 1000 * args.video_s / args.video_frames
    return str(build_output_double(tempfile.mkdtemp(prefix="sf-double-"), FORWARD_MS, frame_ms))


def wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s} s for {what}")
        time.sleep(0.25)


def old_replicas_gone(sample: dict) -> bool:
    """Back to one running replica of each deployment, none starting or stopping."""
    return sample.get(MODEL) == {"RUNNING": 1} and sample.get(INGRESS) == {"RUNNING": 1}


def rollout(args) -> dict:
    """Redeploy with `batching.batch_wait_timeout_s` changed: new `args`, so Serve rolls out new
    replicas of both deployments and stops the old ones, which hold the video's stream."""
    raw = fleet_config(double_model(args), args.grace_s)
    clock = Clock()
    with serving(raw) as url, ReplicaWatch(clock) as watch:
        video = VideoRun(url, clip(args.video_frames), clock)
        wait(video.started, 120, "the video's first frame")
        images = ImageStream(url)
        time.sleep(1)
        raw["applications"][0]["args"]["batching"]["batch_wait_timeout_s"] *= 2
        from serving import runner

        redeployed_at = clock.now()
        runner.deploy_config(raw)
        video_result = video.join()
        image_result = images.stop()
        # Not an error here if it does not: outcome.json says where the replicas stood.
        with contextlib.suppress(TimeoutError):
            wait(lambda: watch.samples and old_replicas_gone(watch.samples[-1]), 60, "the rollout to end")
    outcome = drained_outcome(raw, args, watch, redeployed_at, [video_result], image_result)
    outcome["rollout_done_at"] = watch.first(
        old_replicas_gone, after=outcome["old_replica_stopping_at"] or redeployed_at
    )
    return outcome


def drained_outcome(raw: dict, args, watch: ReplicaWatch, event_at: float, videos: list, images: dict) -> dict:
    """What became of the work when a SAM3 replica was stopped at `event_at` or after (rollout, downscale)."""
    return {
        "config": raw,
        "frames_sent": args.video_frames,
        "event_at": event_at,
        "old_replica_stopping_at": watch.first(lambda s: "STOPPING" in s.get(MODEL, {}), after=event_at),
        "videos": videos,
        "images": images,
        "replica_samples": watch.samples,
    }


def downscale(args) -> dict:
    """Two SAM3 replicas, one video each (concurrent_videos 1 keeps them apart); then min_replicas
    drops to 1 and the autoscaler, seeing 2 videos against a target of 8 per replica, removes one
    of them: a replica holding a video.  Only the policy changes, so no rollout: the replicas are
    reconfigured in place."""
    from autoscaling import TEST_TIMINGS

    from serving import runner

    raw = fleet_config(double_model(args), args.grace_s, model_replicas=2)
    model = deployment(raw, MODEL)
    del model["num_replicas"]
    model["autoscaling_config"] = {
        **TEST_TIMINGS,
        "min_replicas": 2,
        "max_replicas": 2,
        "initial_replicas": 2,
        "target_ongoing_requests": 8,
        "downscale_delay_s": 2,
    }
    raw["applications"][0]["args"]["concurrent_videos"] = 1
    clock = Clock()
    with serving(raw) as url, ReplicaWatch(clock) as watch:
        wait(lambda: watch.samples and watch.samples[-1].get(MODEL) == {"RUNNING": 2}, 120, "two SAM3 replicas")
        videos = [VideoRun(url, clip(args.video_frames), clock) for _ in range(2)]
        # The second video may be refused (503, Retry-After 5 s) by the replica holding the first,
        # and retried by the SDK until it reaches the other one.
        wait(lambda: all(v.frames > 0 for v in videos), 120, "both videos' first frames")
        images = ImageStream(url)
        model["autoscaling_config"]["min_replicas"] = 1
        lowered_at = clock.now()
        runner.deploy_config(raw)
        results = [v.join() for v in videos]
        image_result = images.stop()
        with contextlib.suppress(TimeoutError):  # outcome.json says where the replicas stood
            wait(lambda: watch.samples[-1].get(MODEL) == {"RUNNING": 1}, 60, "the stopped replica to exit")
    outcome = drained_outcome(raw, args, watch, lowered_at, results, image_result)
    outcome["downscaled_at"] = watch.first(lambda s: s.get(MODEL) == {"RUNNING": 1}, after=lowered_at)
    return outcome


def node_loss(args) -> dict:
    """The GPU node holding the only SAM3 replica dies (every process of it killed at once) while a
    video streams and `samfleet annotate` works through a folder.  Serve starts another replica,
    the fake cluster's autoscaler a node for it."""
    head = FakeCluster(max_gpu_nodes=2)  # first: it sets Ray's auth token before ray is imported
    import ray

    try:
        raw = fleet_config(double_model(args), args.grace_s, head_only=True)
        folder = args.out / "images"
        folder.mkdir(exist_ok=True)
        for index in range(args.images):
            (folder / f"img{index:03d}.png").write_bytes(png(index))
        clock = Clock()
        with serving(raw, address=head.address) as url, ReplicaWatch(clock) as watch:
            # The SDK's default attempts, as `samfleet track` and the plugin use them: the stream
            # breaks with the node, and the whole video is sent again once a replica is back.
            video = VideoRun(url, clip(args.video_frames), clock, attempts=DEFAULT_VIDEO_ATTEMPTS)
            wait(video.started, 120, "the video's first frame")
            annotate = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sdk.cli",
                    "annotate",
                    str(folder),
                    "--out",
                    str(args.out / "labels"),
                    "--prompt",
                    PROMPT,
                    "--url",
                    url,
                    "--concurrency",
                    "2",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            manifest = args.out / "labels/manifest.jsonl"  # a header line, then one per finished image
            wait(
                lambda: manifest.exists() and len(manifest.read_text().splitlines()) > 1, 120, "annotate's first answer"
            )
            (node,) = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
            killed_at = clock.now()
            killed = kill_node(node["NodeID"])
            video_result = video.join()
            stdout, stderr = annotate.communicate(timeout=600)
            noticed_at = watch.first(lambda s: s.get(MODEL) != {"RUNNING": 1}, after=killed_at)
            recovered_at = noticed_at and watch.first(lambda s: s.get(MODEL) == {"RUNNING": 1}, after=noticed_at)
    finally:
        head.stop()
    return {
        "config": raw,
        "frames_sent": args.video_frames,
        "event_at": killed_at,
        "killed_processes": killed,
        "videos": [video_result],
        "annotate": {"returncode": annotate.returncode, "stdout": stdout[-3000:], "stderr": stderr[-3000:]},
        "images": args.images,
        "replica_back_at": recovered_at,
        "replica_samples": watch.samples,
    }


def kill_node(node_id: str) -> int:
    """SIGKILL every process of a fake node (raylet, its agents and workers): the processes whose
    environment holds the node id the fake provider gave it (RAY_OVERRIDE_NODE_ID_FOR_TESTING)."""
    entry = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and entry in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
    if not pids:
        raise RuntimeError(f"no process of node {node_id} found")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


if __name__ == "__main__":
    raise SystemExit(main())
