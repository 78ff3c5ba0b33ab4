"""A stop step that does not end in time is logged with where it waits and left, and the stop
goes on; one that ends is awaited, its error raised (controller/aio.py `within`)."""

import asyncio
import logging

import pytest

from controller.aio import within


async def _stuck(release: asyncio.Event) -> None:
    # A stop that swallows its first cancel, as a stuck library call may.
    try:
        await release.wait()
    except asyncio.CancelledError:
        await release.wait()


async def _deep_wait(release: asyncio.Event) -> None:
    await _stuck(release)


async def test_a_step_that_does_not_end_is_left_after_its_timeout_and_logged_with_where_it_waits(caplog):
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="p4nsm.controller"):
        ended = await within(_deep_wait(release), 0.2, "nsm")
    assert ended is False
    assert loop.time() - started < 5.0
    (line,) = [r.getMessage() for r in caplog.records if "stop_step_timed_out" in r.getMessage()]
    assert "part=nsm" in line and "_deep_wait@" in line and "_stuck@" in line
    release.set()


async def test_a_step_that_ends_is_awaited_and_its_error_raised():
    done = []

    async def ok() -> None:
        await asyncio.sleep(0)
        done.append(True)

    async def broken() -> None:
        raise RuntimeError("boom")

    assert await within(ok(), 5.0, "ok") is True and done == [True]
    with pytest.raises(RuntimeError, match="boom"):
        await within(broken(), 5.0, "broken")
