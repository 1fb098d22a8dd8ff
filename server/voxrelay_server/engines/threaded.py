"""Runs a blocking synthesis function in a worker thread and streams its output.

Engines such as piper (onnxruntime) and espeak-ng block while they work; this
keeps them off the event loop and lets the consumer stop them: closing the
async iterator sets a stop flag the worker checks between chunks. The worker runs
at most `CHUNKS_AHEAD` chunks ahead of the consumer, so a consumer that stops taking
chunks stops the engine too, rather than let its audio pile up in the queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

Emit = Callable[[bytes], None]
BlockingSynthesis = Callable[[Emit, threading.Event], None]
"""Calls `emit` for each chunk it produces; returns early once the event is set."""

CHUNKS_AHEAD = 1
"""Chunks a worker may produce that the consumer has not taken yet."""

_DONE = object()


async def stream_from_thread(
    executor: Executor, synthesis: BlockingSynthesis, *, describe: str
) -> AsyncIterator[bytes]:
    """Run `synthesis` on `executor`, yielding its chunks on the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()
    room = threading.Semaphore(CHUNKS_AHEAD)
    """Taken by the worker for each chunk, given back as the consumer takes one."""

    def post(item: object) -> None:
        if isinstance(item, bytes):
            room.acquire()  # released by the consumer, or when it stops
        if stop.is_set():
            return
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop closed while the worker was finishing
            stop.set()

    def run() -> None:
        if stop.is_set():  # stopped while queued behind other work
            return
        try:
            synthesis(post, stop)
        except Exception as error:  # reported to the consumer, never lost
            post(error)
        else:
            post(_DONE)

    loop.run_in_executor(executor, run)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, Exception):
                # As raised in the worker, traceback and all: an EngineError is the
                # engine's report; anything else is a bug, which the session logs.
                raise item
            assert isinstance(item, bytes)
            room.release()
            yield item
    finally:
        stop.set()
        room.release()  # a worker waiting for room wakes, sees the stop and returns
