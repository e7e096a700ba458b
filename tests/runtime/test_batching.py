"""The coalescer: lone items go at once, concurrent ones share batch calls, each gets its own result."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cosmos.runtime.batching import Coalescer

pytestmark = pytest.mark.unit


class Recorder:
    """A batch sender that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def send(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.release.wait()
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_a_lone_item_is_sent_at_once() -> None:
    sender = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(sender.send)
    assert await asyncio.wait_for(coalescer.submit(2), 1.0) == 20
    assert sender.batches == [[2]]


async def test_items_arriving_during_a_call_share_the_next_one() -> None:
    sender = Recorder()
    sender.release.clear()
    coalescer: Coalescer[int, int] = Coalescer(sender.send, max_batch=3, max_in_flight=1)
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = [asyncio.create_task(coalescer.submit(i)) for i in (2, 4, 6, 8)]
    await asyncio.sleep(0.01)
    assert sender.batches == [[0]]  # one call in flight; the others wait for it
    sender.release.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [20, 40, 60, 80]
    assert sender.batches == [[0], [2, 4, 6], [8]]  # at most max_batch per call


async def test_each_item_gets_its_own_result_or_error() -> None:
    sender = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(sender.send)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(4)), return_exceptions=True)
    assert results[0] == 0 and results[2] == 20
    assert isinstance(results[1], ValueError) and str(results[1]) == "odd 1"
    assert isinstance(results[3], ValueError) and str(results[3]) == "odd 3"


async def test_a_failed_call_fails_every_item_of_its_batch_only() -> None:
    calls = 0

    async def flaky(items: Sequence[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(flaky, max_in_flight=1)
    with pytest.raises(ConnectionError):
        await coalescer.submit(1)
    assert await coalescer.submit(2) == 2


async def test_a_wrong_number_of_results_is_an_error_not_a_mixup() -> None:
    async def short(items: Sequence[int]) -> list[int | BaseException]:
        answered: list[int | BaseException] = [*items]
        return answered[:-1]

    coalescer: Coalescer[int, int] = Coalescer(short)
    results = await asyncio.gather(coalescer.submit(1), coalescer.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results), results


async def test_a_cancelled_caller_leaves_the_others_their_results() -> None:
    sender = Recorder()
    sender.release.clear()
    coalescer: Coalescer[int, int] = Coalescer(sender.send, max_in_flight=1)
    held = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(coalescer.submit(2))
    kept = asyncio.create_task(coalescer.submit(4))
    await asyncio.sleep(0)
    gone.cancel()
    sender.release.set()
    assert await held == 0 and await kept == 40
    assert sender.batches == [[0], [4]]  # the cancelled item was not sent
    await coalescer.aclose()
