"""The database gate (llmserver/db.py): under a burst, steps wait their turn in the event loop and
a step that waits too long is 503 server_busy, never a 500; a lost database is 503
database_unavailable. (The same against PostgreSQL with a real burst and a real cut:
tests/e2e/test_restarts.py.)"""

import asyncio
import threading
import time
from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext
from django.db import InterfaceError, OperationalError

from llmserver.db import in_thread, run_in_thread, unavailable
from llmserver.http.errors import DatabaseUnavailable, ServerBusy


def held_for(seconds: float, running: list[int], peak: list[int], lock: threading.Lock) -> str:
    with lock:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
    time.sleep(seconds)
    with lock:
        running[0] -= 1
    return "done"


def burst(count: int, seconds: float) -> tuple[list[Any], int]:
    """`count` steps of `seconds` each at once, in a fresh event loop (the gate is per loop):
    what each gave, and how many ran at once at most."""
    running, peak, lock = [0], [0], threading.Lock()

    async def request() -> str:
        # As Django's ASGI handler runs each request: its sync code in a thread of its own.
        async with ThreadSensitiveContext():
            return await run_in_thread(held_for, seconds, running, peak, lock)

    async def main() -> list[Any]:
        return await asyncio.gather(*(request() for _ in range(count)), return_exceptions=True)

    return asyncio.run(main()), peak[0]


def test_steps_beyond_the_gate_wait_their_turn(settings: Any) -> None:
    settings.DATABASE_CONCURRENT_STEPS = 2
    settings.DATABASE_QUEUE_TIMEOUT_SECONDS = 5

    results, peak = burst(6, 0.05)

    assert results == ["done"] * 6
    assert peak == 2


def test_a_step_that_waits_too_long_is_server_busy_with_retry_after(settings: Any) -> None:
    settings.DATABASE_CONCURRENT_STEPS = 1
    settings.DATABASE_QUEUE_TIMEOUT_SECONDS = 0.1

    results, peak = burst(3, 0.5)

    assert results[0] == "done" and peak == 1
    assert [type(result) for result in results[1:]] == [ServerBusy, ServerBusy]
    assert (results[1].status_code, results[1].error_code, results[1].retry_after) == (503, "server_busy", 1)


@pytest.mark.parametrize(("error", "expected"), [
    (OperationalError("database is locked"), ServerBusy),
    (OperationalError("connection refused"), DatabaseUnavailable),
    (InterfaceError("connection already closed"), DatabaseUnavailable),
    (ValueError("not the database"), type(None)),
])
def test_a_database_failure_is_a_503_not_a_500(error: Exception, expected: type) -> None:
    answer = unavailable(error)

    assert type(answer) is expected
    if answer is not None:
        assert answer.status_code == 503 and answer.retry_after == 1


def test_the_steps_of_turns_under_way_go_first_and_are_never_refused(settings: Any) -> None:
    """Under a burst, a turn whose upstream answered must write its answer (and a live turn renew
    its lease) ahead of the new requests queued for the database, however long they wait."""
    settings.DATABASE_CONCURRENT_STEPS = 1
    settings.DATABASE_QUEUE_TIMEOUT_SECONDS = 0.3
    order: list[str] = []

    def step(name: str, seconds: float) -> str:
        time.sleep(seconds)
        order.append(name)
        return name

    async def request(call: Any) -> Any:
        async with ThreadSensitiveContext():
            return await call

    async def main() -> list[Any]:
        first = asyncio.ensure_future(request(run_in_thread(step, "holding", 0.5)))
        await asyncio.sleep(0.05)
        new = [asyncio.ensure_future(request(run_in_thread(step, f"new {n}", 0))) for n in range(3)]
        await asyncio.sleep(0.05)
        end = asyncio.ensure_future(request(in_thread(step, urgent=True)(name="end of a turn", seconds=0)))
        return await asyncio.gather(first, *new, end, return_exceptions=True)

    results = asyncio.run(main())

    assert order == ["holding", "end of a turn"]
    assert results[-1] == "end of a turn"
    assert [type(result) for result in results[1:4]] == [ServerBusy] * 3
