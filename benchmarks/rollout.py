"""What a long graceful shutdown costs a rollout: the time from `serve deploy` of a changed setting
until the new version serves and the old replicas are gone, idle and with a video in flight, at the
shipped grace periods and at Ray's default (20 s).

    python benchmarks/rollout.py                  # a 60 s video (the SAM3 output double's tracking)
    python benchmarks/rollout.py --video-s 120

One embedded Ray with two declared GPUs (a new SAM3 replica starts beside the draining one),
the packaged config deployed as `serve deploy` deploys it, one replica per deployment
(benchmarks/fleet_events.py has the machinery; tests/test_fleet_lifecycle.py the assertions).
Each rollout changes `batching.batch_wait_timeout_s`, so both deployments are replaced.
"""

from __future__ import annotations

import argparse
import os
import time

from autoscaling import FAST_METRICS
from fleet_events import (
    APP,
    RAY_DEFAULT_GRACE_S,
    Clock,
    VideoRun,
    clip,
    deployment,
    double_model,
    fleet_config,
    old_replicas_gone,
    serving,
    wait,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video-s", type=float, default=60.0, help="the video's length in tracking time")
    p.add_argument("--video-frames", type=int, default=400)
    args = p.parse_args()
    os.environ.update(FAST_METRICS)
    raw = fleet_config(double_model(args), None)
    shipped = {d["name"]: d["graceful_shutdown_timeout_s"] for d in raw["applications"][0]["deployments"]}
    video = clip(args.video_frames)
    rows = []
    with serving(raw) as url:
        for label, grace in (("shipped", shipped), ("Ray default", dict.fromkeys(shipped, RAY_DEFAULT_GRACE_S))):
            for name, seconds in grace.items():
                deployment(raw, name)["graceful_shutdown_timeout_s"] = seconds
            rows.append((label, "idle", *timed_rollout(raw, url, None)))
            rows.append((label, "video in flight", *timed_rollout(raw, url, video)))
    print(
        f"rollout = `serve deploy` with batch_wait_timeout_s changed, until the new version serves and the old "
        f"replicas are gone; video: {args.video_frames} frames over {args.video_s:g} s, started 1 s before"
    )
    idle = {label: seconds for label, what, seconds, _ in rows if what == "idle"}
    for label, what, seconds, video_outcome in rows:
        print(f"  {label:12s} {what:16s} {seconds:6.1f} s = {seconds / idle[label]:4.1f} x idle   {video_outcome}")
    return 0


def timed_rollout(raw: dict, url: str, video: bytes | None) -> tuple[float, str]:
    """Seconds from the deploy to the old replicas' exit; what became of the video."""
    from ray import serve

    from serving import runner

    clock = Clock()
    run = VideoRun(url, video, clock) if video else None
    if run:
        wait(lambda: run.frames > 0, 120, "the video's first frame")
        time.sleep(1)
    raw["applications"][0]["args"]["batching"]["batch_wait_timeout_s"] *= 2
    started = time.monotonic()
    runner.deploy_config(raw)

    def status() -> tuple[str, dict]:
        app = serve.status().applications[APP]
        states = {name: {str(k): v for k, v in d.replica_states.items()} for name, d in app.deployments.items()}
        return str(app.status.value), states

    wait(lambda: status()[0] != "RUNNING", 60, "the controller to take the new config")
    wait(lambda: status()[0] == "RUNNING" and old_replicas_gone(status()[1]), 900, "the rollout")
    seconds = time.monotonic() - started
    if run is None:
        return seconds, ""
    result = run.join()
    return seconds, f"video: {result['frames']} frames, {'complete' if result['complete'] else result['error']}"


if __name__ == "__main__":
    raise SystemExit(main())
