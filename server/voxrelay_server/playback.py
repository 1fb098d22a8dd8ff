"""When a listener runs out of audio, were it playing what it was sent at real-time pace.

The scheduler keys each session's next segment by it; the observability
timeline measures the silences a listener would hear with it; and a session with
paced delivery (`Pacer`) sends its audio by it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class PlaybackClock:
    """A listener's playback of one stream of audio (times are `time.monotonic()`).

    Each piece of audio plays from when it is sent or when the audio before it
    ends, whichever is later. For the scheduler, one per session: it counts a
    segment's estimated audio in when it grants the segment a slot, the
    dispatcher reports the audio it sends and the segments it finishes, and the
    scheduler reads `deadline()`.
    """

    __slots__ = ("ahead_s", "on_change", "runs_out_at")

    def __init__(self) -> None:
        self.runs_out_at = 0.0
        """When the audio sent so far has played."""
        self.ahead_s = 0.0
        """Estimated audio, not yet sent, of the segments that got a synthesis slot."""
        self.on_change: Callable[[PlaybackClock], None] | None = None
        """Told when the deadline may have moved earlier, or the listener, out of audio
        until now, starts playing (set by the scheduler)."""

    def deadline(self, asked: float) -> float:
        """When the audio of the session's next segment, asked for at `asked`, is due."""
        return max(self.runs_out_at, asked) + self.ahead_s

    def playing_at(self, asked: float) -> bool:
        """Whether the listener was still playing audio sent before `asked`: a segment
        asked for then continues what it hears, rather than starting anew."""
        return self.runs_out_at > asked

    def granted(self, estimate_s: float) -> None:
        """A segment whose audio should last about `estimate_s` got a synthesis slot."""
        self.ahead_s += estimate_s

    def sent(self, duration_s: float, estimated_s: float = 0.0) -> None:
        """Audio lasting `duration_s` went to the client just now; `estimated_s` of it
        was counted in `ahead_s`."""
        now = time.monotonic()
        was_dry = self.runs_out_at < now
        self.runs_out_at = max(self.runs_out_at, now) + duration_s
        self.ahead_s -= estimated_s
        if was_dry and self.on_change is not None:
            self.on_change(self)

    def finished(self, unsent_estimate_s: float) -> None:
        """A started segment was delivered or dropped; `unsent_estimate_s` of its
        estimate was never sent (its audio came out shorter, or was dropped)."""
        self.ahead_s -= unsent_estimate_s
        if self.on_change is not None:
            self.on_change(self)


PACE_LEAD_S = 0.2
"""With paced delivery, how far ahead of a real-time listener the server may be when it
sends the next audio message: a bridge that forwards messages as they come needs a
little in hand against network and scheduling jitter, and holds no more than this (and
one message) for a cancel to cut short."""


class Pacer:
    """Sends a session's audio at real-time pace, a bounded lead ahead of its listener.

    The listener is modelled as in `PlaybackClock`: it plays each message from when it
    is sent or when the audio before it ends, whichever is later. The next message goes
    out once the audio sent and not yet played is at most `lead_s`. One per session, so
    the pace runs on across segments and turns; the dispatcher waits on it before each
    audio message and `interrupt()`s it when the audio it holds is cancelled.
    """

    __slots__ = ("_runs_out_at", "_waiter", "lead_s")

    def __init__(self, lead_s: float = PACE_LEAD_S) -> None:
        self.lead_s = lead_s
        self._runs_out_at = 0.0
        """When the audio sent so far has played (`time.monotonic()`)."""
        self._waiter: asyncio.Future[None] | None = None

    def ahead_s(self) -> float:
        """Audio sent and not yet played, in seconds."""
        return max(0.0, self._runs_out_at - time.monotonic())

    async def wait(self) -> None:
        """Return once the next message may go out, or at once on `interrupt()`."""
        delay = self.ahead_s() - self.lead_s
        if delay <= 0:
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(delay, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def interrupt(self) -> None:
        """Wake a `wait()` in progress now: what it holds back was cancelled."""
        if self._waiter is not None:
            _resolve(self._waiter)

    def sent(self, duration_s: float) -> None:
        """Audio lasting `duration_s` is being sent now."""
        self._runs_out_at = max(self._runs_out_at, time.monotonic()) + duration_s


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
