"""Running a batch in a thread that can be stopped, and streaming its progress.

An immediate operator lives inside the App's request: FiftyOne iterates a generator operator's
updates while the browser listens, and closes the generator when that ends (the tab closed or
reloaded, the operation cancelled, the App server stopping).  `Background` is what the
generator iterates: the batch's progress as it comes, and on close the batch stopped and waited
for, so that nothing is sent or written after the close returns.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Report = tuple[int, int, int]  # (done, failed, total), as segment.Progress reports it


class Stop:
    """Ends a running `guard`ed coroutine from any thread by cancelling its task: no request
    starts after, those in flight are dropped, and the coroutine's own `finally` saves what
    had finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested = False
        self._task: asyncio.Task[Any] | None = None

    def __call__(self) -> None:
        with self._lock:
            self._requested = True
            if self._task is not None:
                self._task.get_loop().call_soon_threadsafe(self._task.cancel)

    @property
    def requested(self) -> bool:
        return self._requested

    async def guard(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work`; False when it was stopped, True when it ran to its end."""
        task = asyncio.ensure_future(work)
        with self._lock:
            if self._requested:  # stopped before it started
                task.cancel()
            self._task = task
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled() or not self._requested:
                raise  # cancelled by someone else: not ours to swallow
            return False
        finally:
            with self._lock:
                self._task = None
        return True


class Background(Generic[T]):
    """`work(progress, stop)` in a thread of its own; iterate `reports()` for its progress, then
    read `result()`.  Leaving the `with` block stops the work and waits for its thread."""

    _END = object()

    def __init__(self, work: Callable[[Callable[[int, int, int], None], Stop], T], name: str):
        self._reports: queue.Queue[Any] = queue.Queue()
        self._stop = Stop()
        self._outcome: list[Any] = []  # [result] or [None, error]
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)

    def _run(self, work: Callable[[Callable[[int, int, int], None], Stop], T]) -> None:
        try:
            self._outcome[:] = [work(lambda *report: self._reports.put(report), self._stop)]
        except BaseException as exc:  # noqa: BLE001 - handed to the iterating thread to re-raise
            self._outcome[:] = [None, exc]
        finally:
            self._reports.put(self._END)

    def __enter__(self) -> Background[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
        self._thread.join()

    def reports(self) -> Iterator[Report]:
        while (report := self._reports.get()) is not self._END:
            yield report

    def result(self) -> T:
        """The work's result once `reports()` is exhausted; raises what the work raised."""
        if len(self._outcome) == 2:
            raise self._outcome[1]
        return self._outcome[0]
