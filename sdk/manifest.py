"""The record of a folder annotation run, so that a re-run resumes where the last one stopped.

`manifest.jsonl` in the output folder: a header line with the run's request (a re-run with other
parameters must not mix results), then one line per finished image, appended and flushed as each
finishes.  Append-only JSON lines survive a kill at any moment: at worst the last line is cut
short, and it is ignored (that image is simply done again).  Result files are written before
their line, so a line always points at a complete result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MANIFEST_NAME = "manifest.jsonl"


class ManifestMismatch(Exception):
    """The output folder holds a run made with a different request."""


@dataclass(frozen=True)
class Fingerprint:
    """Size and modification time: a file replaced or edited since it was annotated is done again."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Fingerprint:
        stat = path.stat()
        return cls(stat.st_size, stat.st_mtime_ns)


class Manifest:
    def __init__(self, out: Path, run: dict[str, Any]):
        """Open (or start) the manifest in `out` for a run of `run` (JSON-able request description)."""
        self.path = out / MANIFEST_NAME
        self.done: dict[str, Fingerprint] = {}
        self.failed: dict[str, tuple[Fingerprint, str]] = {}
        if self.path.exists():
            self._load(run)
        else:
            write_atomic(self.path, (json.dumps({"run": run}, sort_keys=True) + "\n").encode())
        self._file: IO[str] = self.path.open("a")

    def _load(self, run: dict[str, Any]) -> None:
        self._drop_cut_line()
        lines = self.path.read_text().splitlines()
        header = json.loads(lines[0]) if lines else {}
        if header.get("run") != run:
            raise ManifestMismatch(
                f"{self.path.parent} holds results of another run ({header.get('run')}); "
                f"this run is {run}. Use another --out folder, or delete it to start over."
            )
        for line in lines[1:]:
            record = json.loads(line)
            fingerprint = Fingerprint(record["size"], record["mtime_ns"])
            if record["status"] == "done":
                self.done[record["file"]] = fingerprint
                self.failed.pop(record["file"], None)
            else:
                self.failed[record["file"]] = (fingerprint, record["error"])
                self.done.pop(record["file"], None)

    def _drop_cut_line(self) -> None:
        """A kill mid-append leaves a last line without its newline: remove it (that image is
        simply done again), so appending starts on a fresh line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("rb+") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def is_done(self, file: str, fingerprint: Fingerprint) -> bool:
        return self.done.get(file) == fingerprint

    def failed_before(self, file: str, fingerprint: Fingerprint) -> bool:
        entry = self.failed.get(file)
        return entry is not None and entry[0] == fingerprint

    def record_done(self, file: str, fingerprint: Fingerprint, instances: int) -> None:
        self.done[file] = fingerprint
        self.failed.pop(file, None)
        self._append({"file": file, "status": "done", "instances": instances, **fingerprint.__dict__})

    def record_failed(self, file: str, fingerprint: Fingerprint, error: str) -> None:
        self.failed[file] = (fingerprint, error)
        self.done.pop(file, None)
        self._append({"file": file, "status": "failed", "error": error, **fingerprint.__dict__})

    def _append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers (and a re-run after a kill) see the old file or
    the whole new one, never a part: write a hidden sibling, then rename over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
