"""The batch engine (sdk.batch) with an in-process `call`: no service needed."""

from __future__ import annotations

import asyncio

import pytest

from sdk.batch import AHEAD_PER_WORKER, BackgroundBatch, run_batch


class CallerBug(Exception):
    """What the caller's own image iterator raises."""


def three_then_raise():
    yield from ("a", "b", "c")
    raise CallerBug("the caller's iterator broke after 3 images")


async def echo(image: str) -> str:
    await asyncio.sleep(0.01)
    return image.upper()


@pytest.mark.parametrize("ordered", [True, False])
def test_an_error_from_the_callers_iterator_ends_the_batch_async(ordered):
    """The three images taken before the error are delivered, then the error itself: the batch
    does not end as if the iterator had run out."""
    delivered = []

    async def consume():
        async for item in run_batch(three_then_raise(), echo, concurrency=4, progress=False, ordered=ordered):
            delivered.append(item)

    with pytest.raises(CallerBug, match="broke after 3"):
        asyncio.run(consume())
    assert sorted(item.index for item in delivered) == [0, 1, 2]
    assert all(item.ok for item in delivered)


def test_an_error_from_the_callers_iterator_ends_the_batch_sync():
    """The same through BackgroundBatch, the machinery of `Client.segment_many`."""
    batch = BackgroundBatch(lambda: run_batch(three_then_raise(), echo, concurrency=2, progress=False))
    delivered = []
    with pytest.raises(CallerBug):
        for item in batch:
            delivered.append(item.result)
    assert delivered == ["A", "B", "C"]
    with pytest.raises(StopIteration):  # and the batch stays finished
        next(batch)


@pytest.mark.parametrize("ordered", [True, False])
def test_workers_stay_within_a_window_of_the_next_item_to_deliver(ordered):
    """Item 0 is slow: the others finish long before it, yet no image is started more than
    AHEAD_PER_WORKER * concurrency places after the next one to deliver (ordered: held back
    behind item 0; as completed: not consumed yet), so memory stays bounded."""
    concurrency, count = 3, 200
    window = AHEAD_PER_WORKER * concurrency
    delivered = 0
    ahead: list[int] = []  # at each start: how far past the next item to deliver

    async def call(index: int) -> int:
        ahead.append(index - delivered)
        await asyncio.sleep(0.3 if index == 0 else 0.001)
        return index

    async def consume():
        nonlocal delivered
        indices = []
        async for item in run_batch(range(count), call, concurrency=concurrency, progress=False, ordered=ordered):
            indices.append(item.index)
            delivered += 1
            await asyncio.sleep(0.002 if not ordered else 0)  # a consumer slower than the calls
        return indices

    indices = asyncio.run(consume())
    assert sorted(indices) == list(range(count))
    if ordered:
        assert indices == list(range(count))
    assert max(ahead) < window, f"started {max(ahead)} places ahead; the window is {window}"
    assert max(ahead) >= window - concurrency, "the workers did run ahead (the test tests something)"
