"""Drive samfleet with a bounded SDK batch and record how it scales: replicas (and, with
--cluster, Ray worker nodes) over time, requests in flight and throughput.

    python benchmarks/autoscaling.py                 # replicas on one node with fake GPUs
    python benchmarks/autoscaling.py --cluster       # Ray's autoscaler adds/removes GPU nodes
    ... --out DIR                                    # timeline.json (+ timeline.png with --plot)

Replica mode starts an embedded Ray that declares GPUs this machine does not have, so the
`num_gpus: 1` replicas schedule exactly as on a GPU node (the model runs on the CPU).
Cluster mode starts a head node with Ray's fake multi-node provider: worker "GPU nodes" are
real raylets on this machine that the autoscaler launches and terminates.

Only the timings of the packaged autoscaling policy are shortened (so a run takes a minute,
not ten); target_ongoing_requests, batch size and replica limits are the shipped ones unless
given.  The tests in tests/test_autoscaling.py run this script and assert on its timeline.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Sampler, free_port, model_or_tiny

# Autoscaling metrics are pushed every 10 s by default; a short run needs them sooner.  Set
# before Ray starts so the controller and replicas inherit them.
FAST_METRICS = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}
# Long enough to ride out a dip in the signal: on 2 busy cores a starting replica slows the
# ingress, fewer requests reach the model for a few seconds, and a 5 s downscale delay with a
# 2 s look-back stopped the replica it had just started (seen in CI).
# Replicas push their autoscaling metrics every `metrics_interval_s` (Ray 2.60 reads it from the
# deployment's config, not from the push-interval variables above; 10 s by default): the
# controller saw a burst 10-13 s late and its end as late again.
TEST_TIMINGS = {"upscale_delay_s": 2.0, "downscale_delay_s": 20.0, "look_back_period_s": 10.0,
                "metrics_interval_s": 0.5}
MODEL = "SAM3Model"
GPU_NODE_TYPE = "gpu_worker"
RAY = str(Path(sys.executable).parent / "ray")  # the `ray` CLI of this environment


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", action="store_true", help="scale Ray nodes with the fake multi-node autoscaler")
    p.add_argument("--model", help="model folder (default: a fresh tiny random SAM3)")
    p.add_argument("--max-replicas", type=int, default=None, help="default: 3 (replica mode), 2 (cluster mode)")
    p.add_argument("--concurrency", type=int, default=32, help="SDK batch concurrency")
    p.add_argument("--max-images", type=int, default=4000, help="the batch never sends more than this")
    p.add_argument("--max-load-s", type=float, default=120, help="... nor runs longer than this")
    p.add_argument("--hold-s", type=float, default=5, help="keep the load on this long after the peak is reached")
    p.add_argument("--settle-s", type=float, default=120, help="wait at most this long for the scale-down")
    p.add_argument("--downscale-delay-s", type=float, default=TEST_TIMINGS["downscale_delay_s"],
                   help="the policy's downscale delay for this run")
    p.add_argument("--out", type=Path, default=Path("out/autoscaling"))
    p.add_argument("--plot", action="store_true", help="also draw timeline.png")
    args = p.parse_args()
    max_replicas = args.max_replicas or (2 if args.cluster else 3)
    os.environ.update(FAST_METRICS)
    args.out.mkdir(parents=True, exist_ok=True)

    from serving import runner

    settings = runner.load_settings(model=model_or_tiny(args.model), port=free_port())
    model_opts = settings.deployment_options[MODEL]
    model_opts["autoscaling_config"].update(TEST_TIMINGS, min_replicas=1, max_replicas=max_replicas,
                                            downscale_delay_s=args.downscale_delay_s)
    policy = model_opts["autoscaling_config"]
    head = FakeCluster(max_gpu_nodes=max_replicas) if args.cluster else None
    try:
        if head:
            # Every fake node shares this machine's loopback: one HTTP proxy, on the head.
            settings.proxy_location = "HeadOnly"
            runner.start(settings, address=head.address)
        else:
            runner.start(settings, num_gpus=max_replicas)
        recorder = Recorder(settings.url, watch_nodes=bool(head))
        timeline = run_load(settings.url, recorder, args, max_replicas)
    finally:
        try:
            runner.stop()
        finally:
            if head:
                head.stop()
    timeline.update(mode="cluster" if args.cluster else "replicas", policy=policy, concurrency=args.concurrency)
    (args.out / "timeline.json").write_text(json.dumps(timeline, indent=1))
    print_summary(timeline)
    if args.plot:
        plot(timeline, args.out / "timeline.png")
    return 0


class Recorder(Sampler):
    """Samples replica counts (Serve's controller), GPU worker nodes (Ray) and the client's
    progress every 0.5 s in a background thread."""

    def __init__(self, url: str, watch_nodes: bool):
        super().__init__(interval_s=0.5)
        self.url = url
        self.watch_nodes = watch_nodes
        self.samples: list[dict] = []
        self.done = 0
        self.sent = 0
        self.started = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def sample(self) -> None:
        import ray
        from ray import serve

        deployment = serve.status().applications["samfleet"].deployments[MODEL]
        states = {str(k): v for k, v in deployment.replica_states.items()}
        sample = {"t": self.now(), "running": states.get("RUNNING", 0), "starting": states.get("STARTING", 0),
                  "replica_states": states,
                  "sent": self.sent, "done": self.done}
        if self.watch_nodes:
            sample["gpu_nodes"] = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)
        self.samples.append(sample)

    @property
    def latest(self) -> dict:
        return self.samples[-1] if self.samples else {}


def run_load(url: str, recorder: Recorder, args, max_replicas: int) -> dict:
    import numpy as np
    from PIL import Image

    from sdk import Client

    # One pre-encoded picture: the client's CPU goes to sending, not to PNG encoding.
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    image = buffer.getvalue()
    events: dict[str, float] = {}

    def images():
        """The batch: bounded in count and time, ended early once the peak has been held."""
        deadline = time.monotonic() + args.max_load_s
        for _ in range(args.max_images):
            if time.monotonic() > deadline:
                return
            if "peak" in events and recorder.now() > events["peak"] + args.hold_s:
                return
            recorder.sent += 1
            yield image

    errors = []
    with recorder, Client(url) as client:
        time.sleep(2)  # a few idle samples before the load
        events["load_start"] = recorder.now()
        batch = client.segment_many(images(), "cat", concurrency=args.concurrency, ordered=False, progress=False)
        for item in batch:
            recorder.done += 1
            if not item.ok:
                errors.append(str(item.error))
            if "peak" not in events and recorder.latest.get("running", 0) >= max_replicas:
                events["peak"] = recorder.now()
        events["load_end"] = recorder.now()
        deadline = time.monotonic() + args.settle_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            last = recorder.latest
            settled = last["replica_states"] == {"RUNNING": 1} and last.get("gpu_nodes", 1) == 1
            if settled:
                events["settled"] = recorder.now()
                time.sleep(2)
                break
    peak_running = max(s["running"] for s in recorder.samples)
    summary = {
        "images_sent": recorder.sent,
        "images_done": recorder.done,
        "errors": errors[:10],
        "error_count": len(errors),
        "max_replicas": max_replicas,
        "peak_running_replicas": peak_running,
        "scale_up_s": round(events["peak"] - events["load_start"], 2) if "peak" in events else None,
        "scale_down_s": round(events["settled"] - events["load_end"], 2) if "settled" in events else None,
    }
    if recorder.watch_nodes:
        summary["peak_gpu_nodes"] = max(s["gpu_nodes"] for s in recorder.samples)
        summary["final_gpu_nodes"] = recorder.latest["gpu_nodes"]
    return {"events": events, "summary": summary, "samples": recorder.samples}


class FakeCluster:
    """A Ray head whose autoscaler launches worker nodes on this machine (Ray's
    `fake_multinode` provider): CPU-only head, a GPU worker type with min 0 workers."""

    def __init__(self, max_gpu_nodes: int, idle_timeout_minutes: float = 0.1):
        # Ray's token authentication: one token for the head, its nodes and this driver, set
        # before this process first imports ray (Ray reads it once).
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="sf-ray-", dir="/tmp")
        config = {
            "cluster_name": "samfleet-fake",
            "max_workers": max_gpu_nodes,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"{node_ip()}:{port}"},
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 4, "GPU": 0}, "node_config": {}, "max_workers": 0},
                GPU_NODE_TYPE: {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0,
                                "max_workers": max_gpu_nodes},
            },
            "head_node_type": "ray.head.default",
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_timeout_minutes,
            "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        }
        config_path = Path(self.temp_dir) / "autoscaling.json"
        config_path.write_text(json.dumps(config))
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        # --block keeps every process of this cluster in one session we can end on its own,
        # unlike `ray stop`, which would also stop any other Ray on the machine.
        self.process = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=4", "--num-gpus=0",
             f"--autoscaling-config={config_path}", f"--temp-dir={self.temp_dir}", "--include-dashboard=false",
             "--disable-usage-stats"],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.address = f"{node_ip()}:{port}"
        try:
            self._wait_up()
        except BaseException:
            self.stop()
            raise

    def _wait_up(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while subprocess.run([RAY, "status", f"--address={self.address}"], capture_output=True).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake cluster's head did not start (rc {self.process.poll()})")
            time.sleep(1)

    def session_pids(self) -> list[int]:
        """The cluster's live processes.  Zombies are left out: a killed node's processes lose
        their parent, and a container's init may be slow to reap them (or never do)."""
        out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
        return [
            int(pid)
            for pid, sid, stat in (line.split() for line in out.splitlines())
            if int(sid) == self.process.pid and not stat.startswith("Z")
        ]

    def stop(self, timeout_s: float = 30) -> None:
        import signal

        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout_s
        while (pids := self.session_pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM if time.monotonic() < deadline - timeout_s / 2 else signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        if self.session_pids():
            raise RuntimeError(f"fake cluster processes still running: {self.session_pids()}")
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # the session's logs, sockets and config


def node_ip() -> str:
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def print_summary(timeline: dict) -> None:
    s = timeline["summary"]
    print(f"mode={timeline['mode']} images sent={s['images_sent']} done={s['images_done']} errors={s['error_count']}")
    print(f"replicas: peak {s['peak_running_replicas']}/{s['max_replicas']}, "
          f"reached {s['scale_up_s']} s after the load started, back to 1 {s['scale_down_s']} s after it ended")
    if "peak_gpu_nodes" in s:
        print(f"GPU worker nodes: peak {s['peak_gpu_nodes']}, after the load {s['final_gpu_nodes']}")


def plot(timeline: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = timeline["samples"]
    t = [s["t"] for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    top.step(t, [s["running"] for s in samples], where="post", label="SAM3Model replicas running")
    top.step(t, [s["starting"] for s in samples], where="post", linestyle=":", label="replicas starting")
    if "gpu_nodes" in samples[0]:
        top.step(t, [s["gpu_nodes"] for s in samples], where="post", linestyle="--", label="GPU worker nodes")
    top.set_ylabel("count")
    top.yaxis.get_major_locator().set_params(integer=True)
    top.legend(loc="upper right")
    rate = [0.0] + [(b["done"] - a["done"]) / (b["t"] - a["t"]) for a, b in zip(samples, samples[1:])]
    in_flight = [s["sent"] - s["done"] for s in samples]
    bottom.plot(t, rate, label="images/s answered")
    bottom.plot(t, in_flight, label="requests in flight (client)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right")
    for ax in (top, bottom):
        for name, at in timeline["events"].items():
            ax.axvline(at, color="grey", linewidth=0.8, linestyle=":")
    for name, at in timeline["events"].items():
        top.annotate(name.replace("_", " "), (at, top.get_ylim()[1]), fontsize=7, rotation=90, va="top")
    policy = timeline["policy"]
    fig.suptitle(f"samfleet autoscaling ({timeline['mode']} mode): target {policy['target_ongoing_requests']} "
                 f"ongoing/replica, concurrency {timeline['concurrency']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
