"""The record of a folder annotation run, so that a re-run resumes where the last one stopped.

`manifest.jsonl` in the output folder: a header line with the run's request (a re-run with other
parameters must not mix results), then one line per finished or failed image, appended and
flushed as each finishes.  Append-only JSON lines survive a kill at any moment: at worst the last
line is cut short, and it is ignored (that image is simply done again).  Result files are written
before their line, so a line always points at a complete result.

One run at a time writes to an output folder: the manifest holds an exclusive lock on
`.samfleet.lock` there for as long as it is open.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MANIFEST_NAME = "manifest.jsonl"
LOCK_NAME = ".samfleet.lock"


class ManifestMismatch(Exception):
    """The output folder holds a run made with a different request."""


class OutputBusy(Exception):
    """Another run is writing to the output folder."""


@dataclass(frozen=True)
class Fingerprint:
    """Size and modification time: a file replaced or edited since it was annotated is done again."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Fingerprint:
        stat = path.stat()
        return cls(stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class Failure:
    """How an image last failed: `attempts` failures in a row of this version of the file, the
    last one `transient` (the service overloaded or unreachable: worth trying again later) or not
    (the service refused the request or the image)."""

    fingerprint: Fingerprint
    error: str
    transient: bool
    attempts: int


class Manifest:
    def __init__(
        self,
        out: Path,
        run: dict[str, Any],
        same_form: Callable[[dict[str, Any]], dict[str, Any]] = lambda run: run,
    ):
        """Open (or start) the manifest in `out` for a run of `run` (JSON-able request description).

        An existing manifest's run is compared with `run` after `same_form` (a header written by
        an earlier version, in this version's form).  Raises OutputBusy if another run has the
        folder open, ManifestMismatch if it holds another run's results.
        """
        self.path = out / MANIFEST_NAME
        self.done: dict[str, Fingerprint] = {}
        self.failed: dict[str, Failure] = {}
        self._lock = _lock_folder(out)
        try:
            if self.path.exists():
                self._load(run, same_form)
            else:
                write_atomic(self.path, (json.dumps({"run": run}, sort_keys=True) + "\n").encode())
            self._file: IO[str] = self.path.open("a")
        except BaseException:
            self._lock.close()
            raise

    def _load(self, run: dict[str, Any], same_form: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self._drop_cut_line()
        lines = self.path.read_text().splitlines()
        header = json.loads(lines[0]) if lines else {}
        stored = header.get("run")
        stored = same_form(stored) if isinstance(stored, dict) else stored
        if stored != run:
            raise ManifestMismatch(
                f"{self.path.parent} holds results of another run: {_differences(stored, run)}. "
                "Use another --out folder, or delete it to start over."
            )
        for line in lines[1:]:
            record = json.loads(line)
            fingerprint = Fingerprint(record["size"], record["mtime_ns"])
            if record["status"] == "done":
                self.done[record["file"]] = fingerprint
                self.failed.pop(record["file"], None)
            else:
                # Lines from before failures were told apart count as refusals: never retried by --watch.
                self._failed(record["file"], fingerprint, record["error"], record.get("transient", False))

    def _drop_cut_line(self) -> None:
        """A kill mid-append leaves a last line without its newline: remove it (that image is
        simply done again), so appending starts on a fresh line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("rb+") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def is_done(self, file: str, fingerprint: Fingerprint) -> bool:
        return self.done.get(file) == fingerprint

    def failure(self, file: str, fingerprint: Fingerprint) -> Failure | None:
        """How this version of `file` last failed, if it did."""
        entry = self.failed.get(file)
        return entry if entry is not None and entry.fingerprint == fingerprint else None

    def record_done(self, file: str, fingerprint: Fingerprint, instances: int) -> None:
        self.done[file] = fingerprint
        self.failed.pop(file, None)
        self._append({"file": file, "status": "done", "instances": instances, **fingerprint.__dict__})

    def record_failed(self, file: str, fingerprint: Fingerprint, error: str, transient: bool = False) -> None:
        self._failed(file, fingerprint, error, transient)
        self._append({"file": file, "status": "failed", "error": error, "transient": transient, **fingerprint.__dict__})

    def _failed(self, file: str, fingerprint: Fingerprint, error: str, transient: bool) -> None:
        before = self.failure(file, fingerprint)
        attempts = before.attempts + 1 if before is not None else 1
        self.failed[file] = Failure(fingerprint, error, transient, attempts)
        self.done.pop(file, None)

    def _append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        self._lock.close()  # closing the lock file's last descriptor releases the lock


def _lock_folder(out: Path) -> IO[bytes]:
    """An exclusive lock on `out` (created if missing), held while the returned file is open;
    OutputBusy at once if another process holds it.  The lock file is left in place: removing it
    would let a third run lock a new file while the second still holds the old one."""
    import fcntl  # POSIX; imported here so that `import sdk` does not need it

    out.mkdir(parents=True, exist_ok=True)
    lock = (out / LOCK_NAME).open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise OutputBusy(
            f"another samfleet annotate is writing to {out}; wait for it to end, or use another --out"
        ) from None
    return lock


def _differences(stored: Any, run: dict[str, Any]) -> str:
    """What differs between the run in a manifest and this one, key by key (nested in `params`)."""
    if not isinstance(stored, dict):
        return f"its header is {stored!r}"
    diffs = []
    for key in sorted(set(stored) | set(run)):
        before, now = stored.get(key), run.get(key)
        if key == "params" and isinstance(before, dict) and isinstance(now, dict):
            diffs += [
                f"{key}.{k} was {before.get(k)!r}, now {now.get(k)!r}"
                for k in sorted(set(before) | set(now))
                if before.get(k) != now.get(k)
            ]
        elif before != now:
            diffs.append(f"{key} was {before!r}, now {now!r}")
    return "; ".join(diffs)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers (and a re-run after a kill) see the old file or
    the whole new one, never a part: write a hidden sibling, then rename over.  The sibling's name
    is unique, so that two writers of one path never write into each other's half-written file
    (created with O_EXCL and the umask's permissions, unlike tempfile's private 0600 files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.partial")
    try:
        with partial.open("xb") as f:
            f.write(data)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
