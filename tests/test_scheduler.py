"""The synthesis-slot scheduler on its own: who gets a freed slot, and when."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import wait_for
from voxrelay_server.playback import PlaybackClock
from voxrelay_server.scheduler import (
    PROTECT_HOLDS,
    PROTECT_MAX_S,
    PROTECT_MIN_S,
    DeadlineScheduler,
)


class Holder:
    """A task that takes a slot for `session`, records when it got it, holds it until let go."""

    def __init__(
        self,
        scheduler: DeadlineScheduler,
        session: PlaybackClock,
        name: str,
        log: list[str],
        estimate_s: float = 0.0,
    ):
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._hold(scheduler, session, name, log, estimate_s))

    async def _hold(
        self,
        scheduler: DeadlineScheduler,
        session: PlaybackClock,
        name: str,
        log: list[str],
        estimate_s: float,
    ) -> None:
        async with scheduler.slot(session, estimate_s):
            log.append(name)
            await self.release.wait()

    async def done(self) -> None:
        self.release.set()
        await self.task


async def queued(scheduler: DeadlineScheduler, count: int) -> None:
    """Let the tasks just created run until `count` segments wait (no time passes)."""
    for _ in range(100):
        if scheduler.queued == count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{scheduler.queued} waiting, expected {count}")


async def line_up(
    scheduler: DeadlineScheduler,
    session: PlaybackClock,
    name: str,
    log: list[str],
    waiting: list[Holder],
) -> None:
    """Add to `waiting` a holder that asks for a slot, once it waits for one (`waiting`
    holds every segment waiting)."""
    waiting.append(Holder(scheduler, session, name, log))
    await queued(scheduler, len(waiting))


async def run_out(holder: Holder, waiting: list[Holder]) -> None:
    """Let every waiter go as soon as it gets the slot, then free the held one."""
    for waiter in waiting:
        waiter.release.set()
    await holder.done()
    await asyncio.wait_for(asyncio.gather(*(waiter.task for waiter in waiting)), timeout=5)


async def test_free_slots_are_taken_at_once_up_to_the_limit() -> None:
    scheduler = DeadlineScheduler(2)
    log: list[str] = []
    first = Holder(scheduler, PlaybackClock(), "a", log)
    second = Holder(scheduler, PlaybackClock(), "b", log)
    third = Holder(scheduler, PlaybackClock(), "c", log)
    await queued(scheduler, 1)

    assert log == ["a", "b"] and scheduler.in_use == 2
    await first.done()
    await queued(scheduler, 0)
    assert log == ["a", "b", "c"]
    await run_out(second, [third])
    assert scheduler.in_use == 0


async def test_the_session_whose_audio_runs_out_first_goes_first() -> None:
    scheduler = DeadlineScheduler(1)
    log: list[str] = []
    holder = Holder(scheduler, PlaybackClock(), "holder", log)
    ahead, behind, idle = PlaybackClock(), PlaybackClock(), PlaybackClock()
    ahead.sent(10.0)  # ten seconds of audio in hand
    behind.sent(2.0)
    waiting: list[Holder] = []
    await line_up(scheduler, ahead, "ahead", log, waiting)
    await line_up(scheduler, behind, "behind", log, waiting)
    await line_up(scheduler, idle, "new turn", log, waiting)  # nothing to play: due now

    await run_out(holder, waiting)

    assert log == ["holder", "new turn", "behind", "ahead"]


async def test_new_turns_are_served_in_the_order_they_asked() -> None:
    scheduler = DeadlineScheduler(1)
    log: list[str] = []
    holder = Holder(scheduler, PlaybackClock(), "holder", log)
    waiting: list[Holder] = []
    for index in range(4):
        await line_up(scheduler, PlaybackClock(), f"turn {index}", log, waiting)

    await run_out(holder, waiting)

    assert log == ["holder", "turn 0", "turn 1", "turn 2", "turn 3"]


async def test_audio_sent_while_waiting_makes_a_session_less_urgent() -> None:
    scheduler = DeadlineScheduler(1)
    log: list[str] = []
    holder = Holder(scheduler, PlaybackClock(), "holder", log)
    early, late = PlaybackClock(), PlaybackClock()
    waiting: list[Holder] = []
    await line_up(scheduler, early, "early", log, waiting)
    await line_up(scheduler, late, "late", log, waiting)

    early.sent(5.0)  # its other segment delivered 5 s of audio meanwhile
    await run_out(holder, waiting)

    assert log == ["holder", "late", "early"]


async def test_a_segment_waits_behind_new_turns_while_the_audio_before_it_is_made() -> None:
    scheduler = DeadlineScheduler(1)
    log: list[str] = []
    holder = Holder(scheduler, PlaybackClock(), "holder", log)
    speaking, newcomer = PlaybackClock(), PlaybackClock()
    speaking.granted(2.8)  # its first sentence, about 2.8 s of audio, is being synthesized
    waiting: list[Holder] = []
    await line_up(scheduler, speaking, "second sentence", log, waiting)
    await line_up(scheduler, newcomer, "new turn", log, waiting)

    await run_out(holder, waiting)

    assert log == ["holder", "new turn", "second sentence"]


async def test_a_segment_that_ends_short_brings_its_sessions_deadline_forward() -> None:
    scheduler = DeadlineScheduler(1)
    log: list[str] = []
    holder = Holder(scheduler, PlaybackClock(), "holder", log)
    estimated, playing = PlaybackClock(), PlaybackClock()
    estimated.granted(5.0)
    playing.sent(2.0)
    waiting: list[Holder] = []
    await line_up(scheduler, estimated, "after the estimate", log, waiting)
    await line_up(scheduler, playing, "two seconds in hand", log, waiting)

    estimated.finished(5.0)  # that segment was dropped: none of its estimate will play
    await run_out(holder, waiting)

    assert log == ["holder", "after the estimate", "two seconds in hand"]


async def test_a_listener_about_to_run_dry_goes_before_new_turns_that_asked_earlier() -> None:
    scheduler = DeadlineScheduler(1, protect_within=1.0)
    log: list[str] = []
    holder = Holder(scheduler, PlaybackClock(), "holder", log)
    waiting: list[Holder] = []
    for index in range(3):  # a burst of new turns, all due already
        await line_up(scheduler, PlaybackClock(), f"new turn {index}", log, waiting)
    comfortable, running_dry = PlaybackClock(), PlaybackClock()
    comfortable.sent(3.0)
    running_dry.sent(0.5)
    await line_up(scheduler, comfortable, "three seconds in hand", log, waiting)
    await line_up(scheduler, running_dry, "half a second in hand", log, waiting)

    await run_out(holder, waiting)

    assert log == [
        "holder",
        "half a second in hand",
        "new turn 0",
        "new turn 1",
        "new turn 2",
        "three seconds in hand",
    ]


async def test_a_listener_who_starts_playing_while_its_next_segment_waits_is_protected() -> None:
    scheduler = DeadlineScheduler(1, protect_within=1.0)
    log: list[str] = []
    holder = Holder(scheduler, PlaybackClock(), "holder", log)
    speaking = PlaybackClock()
    speaking.granted(0.6)  # its first sentence, 0.6 s of audio, is being synthesized
    waiting: list[Holder] = []
    await line_up(scheduler, speaking, "second sentence", log, waiting)
    for index in range(2):
        await line_up(scheduler, PlaybackClock(), f"new turn {index}", log, waiting)

    speaking.sent(0.6, estimated_s=0.6)  # the first sentence goes out: 0.6 s to play
    await run_out(holder, waiting)

    assert log == ["holder", "second sentence", "new turn 0", "new turn 1"]


def test_the_protection_follows_how_long_the_engine_holds_a_slot() -> None:
    scheduler = DeadlineScheduler(2)
    assert scheduler.protect_within_s == PROTECT_MAX_S  # nothing known yet: the most

    for _ in range(200):
        scheduler.record_hold(0.4)  # a few hundred ms a sentence, as piper takes
    assert scheduler.protect_within_s == pytest.approx(PROTECT_HOLDS * 0.4, rel=0.01)

    for _ in range(200):
        scheduler.record_hold(0.003)  # milliseconds, as espeak-ng takes
    assert scheduler.protect_within_s == PROTECT_MIN_S

    assert DeadlineScheduler(2, protect_within=0.7).protect_within_s == 0.7


async def test_a_granted_segment_counts_at_once_before_its_task_runs() -> None:
    scheduler = DeadlineScheduler(2)
    log: list[str] = []
    holders = [Holder(scheduler, PlaybackClock(), f"holder {i}", log) for i in (1, 2)]
    speaking, newcomer = PlaybackClock(), PlaybackClock()
    waiting = [
        Holder(scheduler, speaking, "first sentence", log, estimate_s=2.8),
        Holder(scheduler, speaking, "second sentence", log, estimate_s=2.8),
    ]
    await queued(scheduler, 2)
    waiting.append(Holder(scheduler, newcomer, "new turn", log, estimate_s=2.8))
    await queued(scheduler, 3)
    for waiter in waiting:
        waiter.release.set()

    # Both slots free up before the first sentence's task next runs: the second
    # slot must already see that sentence's audio ahead of the second.
    for holder in holders:
        holder.release.set()
    await asyncio.wait_for(asyncio.gather(*(h.task for h in holders + waiting)), timeout=5)

    assert log[2:] == ["first sentence", "new turn", "second sentence"]


async def test_a_sessions_own_segments_keep_their_order() -> None:
    scheduler = DeadlineScheduler(1)
    log: list[str] = []
    holder = Holder(scheduler, PlaybackClock(), "holder", log)
    session = PlaybackClock()
    waiting: list[Holder] = []
    for index in range(3):
        await line_up(scheduler, session, f"segment {index}", log, waiting)

    await run_out(holder, waiting)

    assert log == ["holder", "segment 0", "segment 1", "segment 2"]


async def test_a_waiter_that_gives_up_passes_its_turn_on() -> None:
    scheduler = DeadlineScheduler(1)
    log: list[str] = []
    holder = Holder(scheduler, PlaybackClock(), "holder", log)
    quitter = Holder(scheduler, PlaybackClock(), "quitter", log)
    await queued(scheduler, 1)
    stayer = Holder(scheduler, PlaybackClock(), "stayer", log)
    await queued(scheduler, 2)

    quitter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter.task
    assert scheduler.queued == 1
    await run_out(holder, [stayer])

    assert log == ["holder", "stayer"]
    assert scheduler.in_use == 0 and scheduler.queued == 0


def test_the_playback_clock_plays_audio_back_to_back_from_when_it_is_sent() -> None:
    clock = PlaybackClock()
    before = time.monotonic()
    clock.sent(1.5)
    clock.sent(0.5)  # queued behind the first: ends 2 s after the first was sent
    after = time.monotonic()

    assert before + 2.0 <= clock.runs_out_at <= after + 2.0


async def test_making_one_says_whether_a_segment_would_be_made_alone() -> None:
    scheduler = DeadlineScheduler(2)
    log: list[str] = []
    assert scheduler.making_one()
    first = Holder(scheduler, PlaybackClock(), "first", log)
    await wait_for(lambda: log == ["first"])
    assert scheduler.making_one()  # only the one segment
    second = Holder(scheduler, PlaybackClock(), "second", log)
    await wait_for(lambda: log == ["first", "second"])
    assert not scheduler.making_one()
    waiting: list[Holder] = []
    await line_up(scheduler, PlaybackClock(), "third", log, waiting)
    second.release.set()
    await second.done()
    assert not scheduler.making_one()  # one held, and the third holds the other
    await run_out(first, waiting)
    assert scheduler.making_one()
