"""Autoscaling, proven on this machine by running benchmarks/autoscaling.py and reading its
timeline: replicas on one node with declared (fake) GPUs, and Ray's own autoscaler adding and
removing fake GPU worker nodes.  Each scenario is a separate process with its own Ray, so it
cannot disturb (or join) the session's service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Bounds, generous for a loaded 2-core CI machine (measured there: up ~35-45 s, down ~10-16 s,
# most of the scale-up being new replicas loading the model while the CPU serves the load).
SCALE_UP_BOUND_S = 100
SCALE_DOWN_BOUND_S = 60


def run_scenario(tmp_path: Path, tiny_model: str, *extra: str) -> dict:
    out = tmp_path / "timeline"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/autoscaling.py"), "--model", tiny_model, "--out", str(out),
         "--max-images", "6000", "--max-load-s", "150", "--settle-s", "90", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=480,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "timeline.json").read_text())


def assert_scaled(timeline: dict, max_replicas: int) -> None:
    s = timeline["summary"]
    assert s["error_count"] == 0, s["errors"]
    assert s["images_done"] == s["images_sent"] > 0
    assert s["images_sent"] < 6000, "the load ended on its count bound before the replicas scaled"
    assert s["peak_running_replicas"] == max_replicas
    assert s["scale_up_s"] is not None and s["scale_up_s"] < SCALE_UP_BOUND_S
    assert s["scale_down_s"] is not None and s["scale_down_s"] < SCALE_DOWN_BOUND_S
    samples = timeline["samples"]
    load_start = timeline["events"]["load_start"]
    assert all(x["running"] == 1 for x in samples if x["t"] < load_start), "scaled before any load"
    assert samples[-1]["replica_states"] == {"RUNNING": 1}


@pytest.mark.timeout(500)
def test_replicas_scale_up_with_load_and_back_down(tmp_path, tiny_model):
    timeline = run_scenario(tmp_path, tiny_model, "--max-replicas", "3")
    assert timeline["policy"]["target_ongoing_requests"] == 8  # the shipped policy, faster timings only
    assert_scaled(timeline, max_replicas=3)


@pytest.mark.timeout(500)
def test_cluster_autoscaler_adds_gpu_nodes_and_removes_them(tmp_path, tiny_model):
    timeline = run_scenario(tmp_path, tiny_model, "--cluster", "--max-replicas", "2")
    assert_scaled(timeline, max_replicas=2)
    s = timeline["summary"]
    samples = timeline["samples"]
    assert samples[0]["gpu_nodes"] == 1, "min_replicas 1 needs exactly one GPU node before any load"
    assert s["peak_gpu_nodes"] == 2, "the autoscaler did not add a GPU node for the second replica"
    assert s["final_gpu_nodes"] == 1, "the idle GPU node was not removed after the load"
    # The node came before its replica could run: the replica waited for the autoscaler.
    first_two_nodes = next(x["t"] for x in samples if x["gpu_nodes"] == 2)
    first_two_replicas = next(x["t"] for x in samples if x["running"] == 2)
    assert first_two_nodes <= first_two_replicas
