"""Coalescing: concurrent requests share runs, and every caller gets a run that started after it asked."""

from __future__ import annotations

import asyncio

from mqtt_operator.controllers.coalesce import Coalescer


def test_a_burst_shares_runs_and_each_caller_sees_a_run_started_after_its_request() -> None:
    async def scenario() -> tuple[int, list[int], list[int]]:
        coalescer: Coalescer[int] = Coalescer()
        runs = 0
        state = 0  # what a run "sees"

        async def work() -> int:
            nonlocal runs
            runs += 1
            seen = state
            await asyncio.sleep(0.01)
            return seen

        async def caller(i: int) -> int:
            nonlocal state
            state = i  # the caller's own change, made before it asks
            return await coalescer.run("k", work)

        wanted = list(range(1, 101))
        results = await asyncio.gather(*(caller(i) for i in wanted))
        return runs, wanted, list(results)

    runs, wanted, results = asyncio.run(scenario())
    assert runs <= 3
    assert all(seen >= mine for mine, seen in zip(wanted, results, strict=True))


def test_keys_are_independent() -> None:
    async def scenario() -> list[str]:
        coalescer: Coalescer[str] = Coalescer()

        async def work_for(key: str) -> str:
            return key

        return list(
            await asyncio.gather(
                coalescer.run("a", lambda: work_for("a")), coalescer.run("b", lambda: work_for("b"))
            )
        )

    assert asyncio.run(scenario()) == ["a", "b"]
