"""Many images through one call with bounded concurrency, a progress bar and per-item errors.

The async generator `run_batch` is the engine; `BackgroundBatch` runs it on an event loop in a
worker thread so that the sync `Client` gets the same concurrency without the caller needing
asyncio (and it works inside Jupyter, whose own loop is already running).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

from sdk.errors import ConnectionError

# What a batch is over: the images given to `Client.segment_many` (`sdk.images.ImageInput`), or
# whatever `call` takes in `run_batch`.
T = TypeVar("T")

# How far the workers may run ahead of the next item to deliver, per unit of concurrency.
AHEAD_PER_WORKER = 4


@dataclass
class BatchItem(Generic[T]):
    """One image of a batch: its position in the input, and either its result or its error."""

    index: int
    image: T
    result: Any = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def run_batch(
    images: Iterable[T],
    call: Callable[[T], Awaitable[Any]],
    *,
    concurrency: int = 8,
    progress: bool = True,
    ordered: bool = True,
) -> AsyncIterator[BatchItem[T]]:
    """Yield a BatchItem per image, in input order (`ordered`) or as each finishes.

    At most `concurrency` calls are in flight, and `images` is consumed lazily, so a generator
    over millions of paths is fine.  No image is started more than `AHEAD_PER_WORKER *
    concurrency` places after the next item to deliver, so the items held back (behind one slow
    image when `ordered`, or not consumed yet) stay bounded.  An error from one image (bad file,
    4xx, timeout) is recorded on its item and the batch goes on; `ConnectionError` (the service
    is unreachable even after the client's retries) ends the batch, since every later image
    would fail too.  An error raised by `images` itself ends the batch too: the items taken
    before it are delivered, then it is raised.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    total = len(images) if isinstance(images, Sized) else None
    source = enumerate(images)
    source_error: list[Exception] = []  # what iterating `images` raised: it ends the batch
    # A slot per item started and not yet delivered: taken before an image is, given back as its
    # item is yielded.
    window = asyncio.Semaphore(AHEAD_PER_WORKER * concurrency)
    done: asyncio.Queue[BatchItem[T] | BaseException | None] = asyncio.Queue()

    def take() -> tuple[int, T] | None:
        """The next image, or None once there is none: `images` ran out or raised."""
        if source_error:
            return None
        try:
            return next(source)  # workers share one iterator: each image is taken once
        except StopIteration:
            return None
        except Exception as exc:  # noqa: BLE001 - the caller's error: raised to the caller once delivered
            source_error.append(exc)
            return None

    async def worker() -> None:
        try:
            while True:
                await window.acquire()
                taken = take()
                if taken is None:
                    window.release()
                    return
                item = BatchItem(*taken)
                try:
                    item.result = await call(item.image)
                except ConnectionError as exc:
                    done.put_nowait(exc)
                    return
                except Exception as exc:  # noqa: BLE001 - a per-item failure is data, not a crash
                    item.error = exc
                done.put_nowait(item)
        finally:
            done.put_nowait(None)  # this worker has stopped

    def deliver(item: BatchItem[T]) -> BatchItem[T]:
        window.release()
        return item

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    bar = tqdm(total=total, disable=not progress, unit="img", desc="samfleet")
    waiting: dict[int, BatchItem[T]] = {}
    next_index, failed, live = 0, 0, len(workers)
    try:
        while live:
            item = await done.get()
            if item is None:
                live -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            failed += not item.ok
            bar.update(1)
            bar.set_postfix(failed=failed, refresh=False)
            if not ordered:
                yield deliver(item)
                continue
            waiting[item.index] = item
            while next_index in waiting:
                yield deliver(waiting.pop(next_index))
                next_index += 1
        if source_error:  # every worker has stopped, so every item taken before it was delivered
            raise source_error[0]
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        bar.close()


class BackgroundBatch(Iterator[BatchItem[T]]):
    """Runs an async batch on its own event loop in a daemon thread, starting at once; iterate
    to receive the items.  `close()` (or leaving a `with` block) cancels what is left; a batch
    that is simply dropped runs to its end (the running thread keeps it alive)."""

    _END = object()

    def __init__(self, batch: Callable[[], AsyncIterator[BatchItem[T]]]):
        self._items: queue.Queue[Any] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(self._pump(batch))
        self._thread = threading.Thread(target=self._run, name="samfleet-batch", daemon=True)
        self._thread.start()

    async def _pump(self, batch: Callable[[], AsyncIterator[BatchItem[T]]]) -> None:
        try:
            async for item in batch():
                self._items.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread to re-raise
            self._items.put(exc)
        else:
            self._items.put(self._END)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._task)
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    def __next__(self) -> BatchItem[T]:
        item = self._items.get()
        if item is self._END:
            self._items.put(item)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            self._items.put(self._END)
            raise item
        return item

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime: nothing left to cancel
                self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join()

    def __enter__(self) -> BackgroundBatch[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
