"""A server-wide pool of synthesis slots, shared fairly between sessions.

Each engine has a fixed number of segments it can synthesize at once (its cores,
or requests in flight). Sessions take turns for free slots: when a slot frees
up it goes to the next session in round-robin order, not to whichever asked
first, so one session queueing a novel cannot starve ten sessions that each
want one sentence.
"""

from __future__ import annotations

import asyncio
import collections
from contextlib import AbstractAsyncContextManager


class FairScheduler:
    """`slots` concurrent synthesis slots, granted round-robin across sessions."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a scheduler needs at least one slot, not {slots}")
        self.slots = slots
        self._free = slots
        # Sessions with waiters, in the order they will be served; dicts keep insertion order.
        self._waiting: dict[object, collections.deque[asyncio.Future[None]]] = {}

    @property
    def in_use(self) -> int:
        return self.slots - self._free

    @property
    def queued(self) -> int:
        """Segments waiting for a slot, over all sessions."""
        return sum(len(waiters) for waiters in self._waiting.values())

    def slot(self, session: object) -> AbstractAsyncContextManager[None]:
        """Hold one slot for `session` for the duration of the block."""
        return _Slot(self, session)

    async def _acquire(self, session: object) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(session, collections.deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # granted just as we were cancelled: pass it on
            else:
                self._forget(session, granted)
            raise

    def _try_acquire(self) -> bool:
        """Take a free slot if nobody waits for one."""
        if self._free and not self._waiting:
            self._free -= 1
            return True
        return False

    def _release(self) -> None:
        while self._waiting:
            session = next(iter(self._waiting))
            waiters = self._waiting.pop(session)
            granted = waiters.popleft()
            if waiters:
                self._waiting[session] = waiters  # to the back of the round
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1

    def _forget(self, session: object, granted: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(session)
        if waiters is None:
            return
        waiters.remove(granted)
        if not waiters:
            del self._waiting[session]


class _Slot(AbstractAsyncContextManager[None]):
    """One slot held for a block. A class, not a generator: a segment's start is on
    the path to its first audio, and a free slot is then taken without any await."""

    __slots__ = ("_scheduler", "_session")

    def __init__(self, scheduler: FairScheduler, session: object) -> None:
        self._scheduler = scheduler
        self._session = session

    async def __aenter__(self) -> None:
        if not self._scheduler._try_acquire():
            await self._scheduler._acquire(self._session)

    async def __aexit__(self, *_: object) -> None:
        self._scheduler._release()
