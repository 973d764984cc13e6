"""Shared fixtures: the tiny random SAM3 checkpoint and one real samfleet service on loopback."""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import time

import tempfile
from pathlib import Path

import pytest
import yaml

import fiftyone_env

# Nothing in the tests may reach a model hub; Ray must not phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray's workers hand their metrics to the node's exporter every second instead of every 10 s, so
# the metrics tests (test_status) wait a second, not ten, for a count to show.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")

# Tests that start or use a Ray service; `make test-fast` runs the others (-m "not service").
SERVICE_FIXTURES = {"service", "client", "service_config"}


# `make test` runs the suite on two pytest-xdist workers (--dist loadscope): each module (or class)
# is one unit of work, so its module fixtures are set up once, and the units are handed out longest
# first (as measured on the 2-core CI machine), so that the tests that mostly wait (for replicas to
# scale, for a killed service's retries to run out, for an annotator's think time) overlap with
# the others instead of ending the run alone.
LONGEST_FIRST = [
    "test_autoscaling.py::TestClusterMode",
    "test_autoscaling.py::TestReplicaMode",
    "test_fleet_lifecycle.py::TestDownscale",
    "test_fleet_lifecycle.py::TestRollout",
    "test_fleet_lifecycle.py::TestNodeLoss",
    "test_annotate_cli.py",
    "test_fiftyone_plugin.py",
    "test_fiftyone_app.py",
    "test_embedding_cache.py",
    "test_protected_service.py",
    "test_fuzz.py",
    "test_tiling_reference.py",
    "test_cli.py",
    "test_video.py",
]


def pytest_addoption(parser):
    parser.addoption("--lower-bounds", default="", metavar="REQUIREMENTS",
                     help="`make test-lower-bounds`: the pins (name==version) the run must import, or fail")


def pytest_configure(config):
    """A lower-bounds run that imported the newest releases instead would pass for nothing."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    for pin in config.getoption("--lower-bounds").split():
        wanted = Requirement(pin)
        got = version(wanted.name)
        if not wanted.specifier.contains(got):
            raise pytest.UsageError(f"--lower-bounds: {wanted.name} {got} is imported, not {wanted.specifier}")


def pytest_report_header(config):
    from importlib.metadata import version

    return "samfleet's pinned libraries: " + ", ".join(
        f"{name} {version(name)}" for name in ("ray", "transformers", "huggingface-hub", "torch"))


def work_unit(item) -> str:
    """The unit pytest-xdist's loadscope hands to one worker: the test's class, else its module."""
    return item.nodeid.rsplit("::", 1)[0].rsplit("/", 1)[-1]


def give_unique_node_ids(items) -> None:
    """pytest-xdist schedules tests by node id, so two tests with one id would run only one of
    them.  Schemathesis' tests (one per API operation) all get their function's id under pytest 9,
    which ignores the `_nodeid` they set: give them their own, and refuse any other duplicate."""
    counts = collections.Counter(item.nodeid for item in items)
    for item in items:
        if counts[item.nodeid] > 1 and not item.nodeid.endswith(item.name):
            item._id = item.parent.id.child(item.name)
    duplicates = [nodeid for nodeid, n in collections.Counter(item.nodeid for item in items).items() if n > 1]
    if duplicates:
        raise pytest.UsageError(f"tests sharing a node id (pytest-xdist would run one of each): {duplicates}")


def pytest_collection_modifyitems(config, items):
    give_unique_node_ids(items)
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.service)
    rank = {unit: k for k, unit in enumerate(LONGEST_FIRST)}
    position = {id(item): k for k, item in enumerate(items)}
    # Stable: a module's tests stay together and in their order.
    items.sort(key=lambda item: (rank.get(work_unit(item), len(rank)), position[id(item)]))

# Small limits so the limit tests send small requests.
TEST_LIMITS = {
    "max_image_pixels": 1_000_000,
    "max_payload_bytes": 2_000_000,
    "max_prompt_chars": 50,
    "max_exemplars": 4,
    "max_points": 4,
    "max_video_bytes": 3_000_000,
    "max_video_frames": 30,
    "max_video_pixels": 100_000,
}
# Room for 3 of the tiny model's image embeddings (128 KiB each), so a test can overflow the cache.
TEST_EMBEDDING_CACHE_MB = 0.4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FIFTYONE_STATE = Path(tempfile.mkdtemp(prefix="samfleet-fiftyone-"))
FIFTYONE_DB_PORT = free_port()
OWN_FIFTYONE_DB = fiftyone_env.configure(FIFTYONE_STATE, FIFTYONE_DB_PORT)


@pytest.fixture(scope="session")
def fiftyone_db():
    """FiftyOne's database (a mongod of our own on loopback unless FIFTYONE_DATABASE_URI was given)."""
    proc = fiftyone_env.start_mongod(FIFTYONE_STATE / "db", FIFTYONE_DB_PORT) if OWN_FIFTYONE_DB else None
    try:
        yield os.environ["FIFTYONE_DATABASE_URI"]
    finally:
        if proc is not None:
            fiftyone_env.stop(proc)


@pytest.fixture(scope="session")
def plugin(fiftyone_db):
    """The FiftyOne plugin, installed the way the README says: `samfleet install-plugin`."""
    import sys

    done = subprocess.run([sys.executable, "-m", "sdk.cli", "install-plugin"], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return "@samfleet/sam3"


# Every process this test session starts inherits this marker, even once orphaned, so the leak
# checks below see our Ray daemons and never another session's on the same machine.
os.environ["SAMFLEET_TEST_SESSION"] = f"{os.getpid()}-{time.time_ns()}"
SESSION_MARKER = f"SAMFLEET_TEST_SESSION={os.environ['SAMFLEET_TEST_SESSION']}".encode()


def environ_holds(pid: int, entry: bytes) -> bool:
    """Whether process `pid` was started with `entry` (b"NAME=value") in its environment."""
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone already, or not ours to read
        return False


def started_by_this_session(pid: int) -> bool:
    return environ_holds(pid, SESSION_MARKER)


def ray_processes() -> set[int]:
    """PIDs of the Ray node daemons this test session started."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    daemons = (int(line.split()[0]) for line in out.splitlines() if "raylet" in line or "gcs_server" in line)
    return {pid for pid in daemons if started_by_this_session(pid)}


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.5):
    """Poll until `condition()` is truthy and return its value; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
    return value


def wait_for_ray_exit(before: set[int], timeout_s: float = 30) -> set[int]:
    """Ray processes started since `before` that are still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from serving.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-sam3")))


def one_model_replica(app: dict, **options) -> None:
    """The SAM3Model deployment of a Serve config's `app`: one replica (or `num_replicas` in
    `options`), no autoscaling, `options`."""
    model = next(d for d in app["deployments"] if d["name"] == "SAM3Model")
    model.pop("autoscaling_config")
    model.update({"num_replicas": 1, **options})


@pytest.fixture(scope="session")
def service_config(tmp_path_factory, tiny_model):
    from serving.runner import default_config_path

    raw = yaml.safe_load(default_config_path().read_text())
    app = raw["applications"][0]
    app["args"].update(model=tiny_model, limits=TEST_LIMITS, embedding_cache_mb=TEST_EMBEDDING_CACHE_MB)
    # A long batch window makes concurrent test requests land in one batch.
    app["args"]["batching"] = {"max_batch_size": 4, "batch_wait_timeout_s": 0.2}
    # One model replica whatever load earlier tests sent, so tests see the same service in any
    # order; scaling is tested on services of its own (test_autoscaling).
    one_model_replica(app)
    raw["http_options"]["port"] = free_port()
    path = tmp_path_factory.mktemp("config") / "serve_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def service(service_config):
    """URL of a real samfleet (embedded Ray + Serve, loopback), stopped after the session."""
    from serving import runner

    settings = runner.load_settings(service_config)
    before = ray_processes()
    runner.start(settings)
    try:
        yield settings.url
    finally:
        runner.stop()
    leaked = wait_for_ray_exit(before)
    assert not leaked, f"Ray processes left running after shutdown: {sorted(leaked)}"


@pytest.fixture(scope="session")
def client(service):
    from sdk import Client

    # Files as they are: most tests compare served answers with transformers run in-process on
    # the same pixels.  Reduced uploads (the SDK's default) are tested in test_reduced_upload.py.
    with Client(service, upload="original") as c:
        yield c


@pytest.fixture(scope="session")
def reference(tiny_model):
    """The tiny model called in-process through transformers only: what served results must equal."""
    from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor

    return {
        "model": Sam3Model.from_pretrained(tiny_model).eval(),
        "processor": Sam3Processor.from_pretrained(tiny_model),
        "tracker": Sam3TrackerModel.from_pretrained(tiny_model).eval(),
        "tracker_processor": Sam3TrackerProcessor.from_pretrained(tiny_model),
    }


@pytest.fixture(scope="session")
def images():
    """Deterministic test pictures of different sizes and aspect ratios."""
    import numpy as np

    rng = np.random.default_rng(7)
    shapes = [(120, 160), (200, 130), (96, 96), (150, 210)]
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in shapes]
