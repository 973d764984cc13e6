"""FiftyOne's database for the tests: a real mongod on loopback, started and stopped by them.

The environment variables must be set before anything imports fiftyone, so conftest calls
`configure()` at import time; `start_mongod` runs in a session fixture.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MONGOD = Path(os.environ.get("SAMFLEET_TEST_MONGOD", REPO / ".cache/mongodb/bin/mongod"))


def configure(state_dir: Path, port: int) -> bool:
    """Point FiftyOne at a private database and plugins folder; False when the caller already
    gave FIFTYONE_DATABASE_URI (then that database is used and nothing is started)."""
    # A URI this function set in a parent process (pytest-xdist's workers inherit the controller's
    # environment) is not the caller's: each worker starts a database of its own.
    given = os.environ.get("FIFTYONE_DATABASE_URI")
    own_db = given is None or given == os.environ.get("SAMFLEET_TEST_OWN_FIFTYONE_DB")
    if own_db:
        os.environ["FIFTYONE_DATABASE_URI"] = os.environ["SAMFLEET_TEST_OWN_FIFTYONE_DB"] = f"mongodb://127.0.0.1:{port}"
    os.environ.update(
        FIFTYONE_DATABASE_VALIDATION="false",  # MongoDB 6 is supported; skip the "oldest version" nag
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_PLUGINS_DIR=str(state_dir / "plugins"),
        FIFTYONE_DEFAULT_DATASET_DIR=str(state_dir / "datasets"),
        FIFTYONE_DELEGATED_OPERATION_LOG_PATH=str(state_dir / "delegated-logs"),
    )
    return own_db


def start_mongod(db_dir: Path, port: int, timeout_s: float = 60) -> subprocess.Popen:
    if not MONGOD.exists():
        raise RuntimeError(f"{MONGOD} is missing: run `bash .ci/fetch-mongod` (make test does)")
    db_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(MONGOD), "--dbpath", str(db_dir), "--bind_ip", "127.0.0.1", "--port", str(port), "--quiet",
         "--logpath", str(db_dir / "mongod.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"mongod did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
