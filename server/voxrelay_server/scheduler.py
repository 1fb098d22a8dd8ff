"""A server-wide pool of synthesis slots, granted to the segment whose audio is due first.

Each engine has a fixed number of segments it can synthesize at once (its cores,
or requests in flight). When a slot frees up it goes to the waiting segment with
the earliest deadline: when its audio must start playing, were the client playing
its session's audio at real-time pace from when it was sent (`PlaybackClock`).
That is when the audio sent so far runs out (or when the segment asked, if that
is later: a new turn), plus the audio of the session's earlier segments still
being synthesized or sent, estimated from their text. So a listener about to run
dry goes before one with seconds of audio in hand, new turns are served in the
order they came, and a session queueing a novel cannot starve ten sessions that
each want one sentence: its later segments are due far in the future.

One exception to that order: a listener who is playing and will run out of audio
within `protect_within_s` goes before new turns, even those that asked earlier.
A new turn's deadline is when it asked, so in a burst of new turns (hundreds of
sessions opening at once) they are all overdue, and by deadline alone they would
all go first while the listeners already playing run dry: a gap in the middle of
a turn is heard, where a new turn starting a little later is not a gap.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from voxrelay_server.playback import PlaybackClock

_Waiter = tuple[asyncio.Future[None], float, float]
"""A segment waiting for a slot: its grant, when it asked (monotonic), its estimated audio."""
_Entry = list[Any]
"""[deadline, sequence number, session]: a heap entry; live while `_entries` holds it."""

PROTECT_HOLDS = 3.0
PROTECT_MIN_S, PROTECT_MAX_S = 0.2, 2.0
"""A playing listener goes before new turns when its audio runs out within this many
times the engine's typical slot hold (grant to release: about what a protected segment
takes to its audio), kept within these bounds: time to make the segment with room to
spare (piper holds a slot a few hundred milliseconds a sentence, espeak-ng a few), and
no more, so a new turn waits only for segments that are needed soon anyway."""
_HOLD_WEIGHT = 0.05
"""Weight of each new slot hold in the running average."""


class DeadlineScheduler:
    """`slots` concurrent synthesis slots, granted earliest deadline first, except that
    a listener running out of audio within `protect_within_s` goes before new turns.

    `protect_within` fixes that horizon; by default it follows the engine's slot holds.
    """

    def __init__(self, slots: int, protect_within: float | None = None) -> None:
        if slots < 1:
            raise ValueError(f"a scheduler needs at least one slot, not {slots}")
        self.slots = slots
        self._protect_within = protect_within
        self._hold_s: float | None = None
        """Running average of how long a segment holds its slot."""
        self._free = slots
        # Each session's waiting segments in its own order, and its one live entry in
        # the heaps. A deadline moves later as audio is sent or a later segment comes
        # to the head, so an entry's key may be stale low: it is brought up to date
        # when it reaches the top. It moves earlier only when a segment finishes
        # shorter than estimated (`PlaybackClock.finished`): the session then gets a
        # fresh entry, as it does when its listener starts playing.
        self._waiting: dict[PlaybackClock, collections.deque[_Waiter]] = {}
        self._entries: dict[PlaybackClock, _Entry] = {}
        self._heap: list[_Entry] = []
        """Every waiting session's entry."""
        self._playing: list[_Entry] = []
        """The entries of sessions whose listener is playing, for `protect_within_s`."""
        self._sequence = itertools.count()  # ties go to whoever was queued first

    @property
    def protect_within_s(self) -> float:
        """How soon a playing listener must run out of audio to go before new turns."""
        if self._protect_within is not None:
            return self._protect_within
        if self._hold_s is None:
            return PROTECT_MAX_S
        return min(PROTECT_MAX_S, max(PROTECT_MIN_S, PROTECT_HOLDS * self._hold_s))

    def record_hold(self, hold_s: float) -> None:
        """A segment held its slot for `hold_s` (each slot reports this when released)."""
        if self._hold_s is None:
            self._hold_s = hold_s
        else:
            self._hold_s += (hold_s - self._hold_s) * _HOLD_WEIGHT

    def making_one(self) -> bool:
        """Whether at most one segment holds a slot and none waits for one."""
        return self.in_use <= 1 and not self._waiting

    @property
    def in_use(self) -> int:
        return self.slots - self._free

    @property
    def queued(self) -> int:
        """Segments waiting for a slot, over all sessions."""
        return sum(len(waiters) for waiters in self._waiting.values())

    def slot(
        self, session: PlaybackClock, estimate_s: float = 0.0
    ) -> AbstractAsyncContextManager[None]:
        """Hold one slot for a segment of `session`, whose audio should last about
        `estimate_s`, for the duration of the block."""
        return _Slot(self, session, estimate_s)

    async def _acquire(self, session: PlaybackClock, estimate_s: float) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asked = time.monotonic()
        waiters = self._waiting.get(session)
        if waiters is None:
            self._waiting[session] = collections.deque([(granted, asked, estimate_s)])
            self._push(session, asked)
            session.on_change = self._reconsider
        else:
            waiters.append((granted, asked, estimate_s))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                # Granted just as we were cancelled: pass it on, and its estimate off.
                session.finished(estimate_s)
                self._release()
            else:
                self._forget(session, granted)
            raise

    def _try_acquire(self, session: PlaybackClock, estimate_s: float) -> bool:
        """Take a free slot if nobody waits for one."""
        if self._free and not self._waiting:
            self._free -= 1
            session.granted(estimate_s)
            return True
        return False

    def _release(self) -> None:
        protected_until = time.monotonic() + self.protect_within_s
        if not (
            self._grant_first(self._playing, protected_until)
            or self._grant_first(self._heap, math.inf)
        ):
            self._free += 1

    def _grant_first(self, heap: list[_Entry], due_by: float) -> bool:
        """Grant the slot to the session of `heap`'s earliest live entry if it is due
        by `due_by`; False if none is (or nobody waits)."""
        while heap:
            entry = heap[0]
            session: PlaybackClock = entry[2]
            if self._entries.get(session) is not entry:  # replaced, or no longer waiting
                heapq.heappop(heap)
                continue
            waiters = self._waiting[session]
            granted, asked, estimate_s = waiters[0]
            if session.deadline(asked) > entry[0]:  # audio went out since: not so urgent
                self._push(session, asked)
                continue
            if entry[0] > due_by:
                return False
            waiters.popleft()
            live = not granted.done()
            if live:
                # Counted now, not when the segment's task next runs: the session's
                # next segment is due after this one's audio from this moment on.
                session.granted(estimate_s)
            if waiters:
                self._push(session, waiters[0][1])
            else:
                del self._waiting[session], self._entries[session]
            if live:
                granted.set_result(None)
                return True
        return False

    def _reconsider(self, session: PlaybackClock) -> None:
        """`session`'s deadline may be earlier than its entry says, or its listener has
        started playing: give it a fresh entry."""
        waiters = self._waiting.get(session)
        if waiters:
            self._push(session, waiters[0][1])

    def _push(self, session: PlaybackClock, asked: float) -> None:
        """A fresh entry for `session`'s first waiting segment, which asked at `asked`
        (the one before, if any, is dropped when it reaches the top of a heap)."""
        entry: _Entry = [session.deadline(asked), next(self._sequence), session]
        self._entries[session] = entry
        heapq.heappush(self._heap, entry)
        if session.playing_at(asked):
            heapq.heappush(self._playing, entry)

    def _forget(self, session: PlaybackClock, granted: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(session)
        if waiters is None:
            return
        for waiter in waiters:
            if waiter[0] is granted:
                waiters.remove(waiter)
                break
        if not waiters:
            del self._waiting[session], self._entries[session]  # its entry is dropped later


class _Slot(AbstractAsyncContextManager[None]):
    """One slot held for a block. A class, not a generator: a segment's start is on
    the path to its first audio, and a free slot is then taken without any await."""

    __slots__ = ("_estimate_s", "_granted_at", "_scheduler", "_session")

    def __init__(
        self, scheduler: DeadlineScheduler, session: PlaybackClock, estimate_s: float
    ) -> None:
        self._scheduler = scheduler
        self._session = session
        self._estimate_s = estimate_s
        self._granted_at = 0.0

    async def __aenter__(self) -> None:
        if not self._scheduler._try_acquire(self._session, self._estimate_s):
            await self._scheduler._acquire(self._session, self._estimate_s)
        self._granted_at = time.monotonic()

    async def __aexit__(self, *_: object) -> None:
        self._scheduler.record_hold(time.monotonic() - self._granted_at)
        self._scheduler._release()
