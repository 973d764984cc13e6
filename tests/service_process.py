"""A samfleet service in a process of its own, started as a user starts it (`samfleet serve`), for
tests that kill it, or that need settings the shared in-process service must not have."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from conftest import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ServiceProcess:
    url: str
    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """The whole service dies at once (its process group holds the embedded Ray: raylet, workers)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def service_process(config: Path, log: Path, startup_s: float = 300) -> Iterator[ServiceProcess]:
    """Serve `config` on a free loopback port; stopped with Ctrl-C on exit, killed if that hangs."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sdk.cli", "serve", "--config", str(config), "--port",
                                 str(port)], cwd=REPO, stdout=out, stderr=out, start_new_session=True)
    service = ServiceProcess(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_for(lambda: healthy(service.url) or proc.poll() is not None, startup_s, f"{service.url} to start")
        assert proc.poll() is None, f"the service exited at start:\n{log.read_text()[-3000:]}"
        yield service
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:  # a stuck shutdown must not leave its Ray behind
                service.kill()
