"""A samfleet service in a process of its own, started as a user starts it (`samfleet serve`), for
tests that kill it, or that need settings the shared in-process service must not have."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from conftest import environ_holds, free_port, wait_for
from serving.runner import load_settings

REPO = Path(__file__).resolve().parents[1]


MARKER = "SAMFLEET_TEST_SERVICE_PROCESS"


def processes_marked(value: str) -> list[int]:
    """PIDs of the live processes whose environment holds MARKER=value (inherited by every
    process the service starts, whatever its process group)."""
    wanted = f"{MARKER}={value}".encode()
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and environ_holds(int(p.name), wanted)]


@dataclass
class ServiceProcess:
    url: str
    proc: subprocess.Popen
    log: Path
    marker: str

    def kill(self, timeout_s: float = 30) -> None:
        """The whole service dies at once: `samfleet serve`, its raylet and GCS, and Ray's worker
        processes (the HTTP proxy, the replicas), which Ray starts in process groups of their own,
        so that killing the service's group alone left the proxy accepting connections for a while."""
        deadline = time.monotonic() + timeout_s
        while pids := processes_marked(self.marker):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise AssertionError(f"service processes still alive {timeout_s} s after SIGKILL: {pids}")
            self.proc.poll()  # reap `samfleet serve` (a zombie still shows its environment)
            time.sleep(0.05)
        self.proc.wait(60)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def service_process(config: Path, log: Path, startup_s: float = 300) -> Iterator[ServiceProcess]:
    """Serve `config` on a free loopback port; stopped with SIGTERM on exit (as a process manager
    stops it), killed if that hangs.  Not with Ctrl-C: a test run started in the background of a
    script (POSIX: SIGINT and SIGQUIT ignored there) hands that on to the service, and each stop
    then waited its full 90 s for nothing."""
    port = free_port()
    marker = uuid.uuid4().hex
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sdk.cli", "serve", "--config", str(config), "--port",
                                 str(port)], cwd=REPO, stdout=out, stderr=out, start_new_session=True,
                                env={**os.environ, MARKER: marker})
    prefix = load_settings(config).route_prefix.rstrip("/")  # the application's URL is under its prefix
    service = ServiceProcess(f"http://127.0.0.1:{port}{prefix}", proc, log, marker)
    try:
        wait_for(lambda: healthy(service.url) or proc.poll() is not None, startup_s, f"{service.url} to start")
        assert proc.poll() is None, f"the service exited at start:\n{log.read_text()[-3000:]}"
        yield service
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `samfleet serve` stops its own Ray
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=90)
        service.kill()  # whatever is left: a stuck shutdown must not leave its Ray behind
