"""What a session keeps of its turns' text for `TURN_ENDED.spoken_text`, and how much
of it one message carries: bounded for any turn, however long, and counted in the
server's memory bound."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voxrelay
from tests.conftest import StartServer
from tests.test_dispatcher import make_dispatcher
from voxrelay.v1 import speech_pb2
from voxrelay_server.dispatcher import SessionLimits, _Turn
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.errors import ErrorCode, SpeechError
from voxrelay_server.events import TurnEnded
from voxrelay_server.memory import kept_turn_text_chars
from voxrelay_server.settings import (
    DEFAULT_MAX_SEGMENT_CHARS,
    MAX_SEGMENT_ENDS,
    MAX_SPOKEN_TEXT_CHARS,
    MAX_WHOLE_TEXT_CHARS,
)

SENTENCE = "Words go by, one after another. "


async def test_a_stream_turn_longer_than_the_cap_keeps_only_its_start() -> None:
    """A turn has no length limit on `Stream`: past `MAX_SPOKEN_TEXT_CHARS` the session
    keeps nothing more of it, and TURN_ENDED says how much was heard in all."""
    session = make_dispatcher(ToneEngine(ms_per_char=0.05), max_inflight=8)
    chunk = SENTENCE * 300  # 9600 characters
    whole = chunk * (MAX_SPOKEN_TEXT_CHARS * 3 // 2 // len(chunk))
    kept: list[int] = []

    async def feed() -> None:
        for start in range(0, len(whole), len(chunk)):
            await session.send_text_when_room(whole[start : start + len(chunk)])
            kept.append(session.kept_text_chars)
        session.close()

    feeder = asyncio.create_task(feed())
    ended = [event async for event in session.events() if isinstance(event, TurnEnded)]
    await feeder
    await session.aclose()
    assert len(whole) > MAX_SPOKEN_TEXT_CHARS
    assert max(kept) <= MAX_SPOKEN_TEXT_CHARS
    assert ended[0].spoken_text == whole[:MAX_SPOKEN_TEXT_CHARS]
    assert ended[0].spoken_length == len(whole)


async def test_a_cancel_keeps_only_what_each_turn_heard() -> None:
    session = make_dispatcher(ToneEngine())
    session.send_text("First turn. ")
    session.turn_done()
    session.send_text("Second turn, queued. ")
    session.turn_done()
    assert session.kept_text_chars == len("First turn. Second turn, queued. ")
    session.cancel()  # nothing was sent: neither turn heard anything
    assert session.kept_text_chars == 0
    session.close()
    ended = [event async for event in session.events() if isinstance(event, TurnEnded)]
    await session.aclose()
    assert [(e.spoken_text, e.spoken_length) for e in ended] == [("", 0), ("", 0)]


async def test_whitespace_turns_queued_behind_an_unread_one_count_against_the_budget() -> None:
    """The splitter strips whitespace between segments, but a turn keeps it for its
    `spoken_text`: while the turn waits to go on the wire, it counts as waiting text, so
    a client that does not read cannot queue turns of whitespace without bound."""
    session = make_dispatcher(ToneEngine(), limits=SessionLimits(max_buffered_text_chars=1000))
    blank = " " * 100
    with pytest.raises(SpeechError) as refused:
        for _ in range(20):  # nothing reads: no turn goes on the wire
            session.send_text(blank)
            session.turn_done()
    assert refused.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert session.kept_text_chars <= 1000
    await session.aclose()


async def test_whitespace_is_free_again_once_its_turn_is_on_the_wire() -> None:
    session = make_dispatcher(ToneEngine(), limits=SessionLimits(max_buffered_text_chars=1000))
    session.send_text(" " * 900)
    assert session.buffered_text_chars == 900
    events = session.events()
    await anext(events)  # TURN_STARTED: the turn is the listener's now
    assert session.buffered_text_chars == 0
    session.send_text(" " * 900)  # the budget has room again
    session.close()
    ended = [event async for event in events if isinstance(event, TurnEnded)]
    await session.aclose()
    assert ended == [TurnEnded(1, spoken_text=" " * 1800)]


def test_the_memory_bound_counts_the_kept_text() -> None:
    chars = kept_turn_text_chars(65536, DEFAULT_MAX_SEGMENT_CHARS)
    assert chars == MAX_SPOKEN_TEXT_CHARS + 65536 + 64 * DEFAULT_MAX_SEGMENT_CHARS


@pytest.mark.timeout(300)
async def test_the_longest_synthesize_of_the_widest_characters_fits_a_default_client(
    start_server: StartServer,
) -> None:
    """The worst legal request: 1,000,000 characters of four UTF-8 bytes each. Its
    TURN_ENDED stays far under a default client's 4 MiB receive limit, and says how
    much was heard, so the caller can cut its own text."""
    server = await start_server(ms_per_char=0.05)
    word = "\U0001f600" * 9 + " "
    whole = word * (MAX_WHOLE_TEXT_CHARS // len(word))
    assert len(whole) == MAX_WHOLE_TEXT_CHARS
    async with grpc.aio.insecure_channel(server.target) as channel:  # default limits
        call = server.stub(channel).Synthesize(speech_pb2.SynthesizeRequest(text=whole))
        ended = None
        async for response in call:
            lifecycle = response.lifecycle
            if lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_ENDED:
                ended = response
        assert await call.code() == grpc.StatusCode.OK
    assert ended is not None
    assert ended.ByteSize() < 4 * MAX_SPOKEN_TEXT_CHARS + 64
    assert ended.lifecycle.spoken_length == MAX_WHOLE_TEXT_CHARS
    assert ended.lifecycle.spoken_text == whole[:MAX_SPOKEN_TEXT_CHARS]
    event = voxrelay.client.event_from_response(ended)
    assert isinstance(event, voxrelay.TurnEnded)
    assert event.heard(whole) == whole


@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=3 * MAX_SEGMENT_ENDS),
    played=st.integers(0, 200_000),
)
@settings(max_examples=30, deadline=None)
def test_a_turn_of_any_number_of_segments_keeps_a_bounded_number_of_ends(
    lengths: list[int], played: int
) -> None:
    """Ends of a long turn are thinned: a cut lands on a segment end at or before the
    exact one (never text not heard), and exactly on it within the latest half."""
    exact_ends = []
    turn = _Turn(1)
    sample = text_end = 0
    for length in lengths:
        sample += length * 10
        text_end += length + 1
        exact_ends.append((sample, text_end - 1))
        turn.add_segment_end(sample, text_end - 1)
    assert len(turn.segment_ends) <= MAX_SEGMENT_ENDS
    played = min(played, sample)
    truth = max((end for at, end in exact_ends if at <= played), default=0)
    kept = turn.segment_ends
    assert set(kept) <= set(exact_ends) and kept == sorted(kept)
    assert kept[-MAX_SEGMENT_ENDS // 2 :] == exact_ends[-MAX_SEGMENT_ENDS // 2 :]
    turn.fix_heard(played)
    assert turn.spoken is not None and turn.spoken <= truth
    recent = exact_ends[-MAX_SEGMENT_ENDS // 2 :]
    if len(exact_ends) <= MAX_SEGMENT_ENDS or played >= recent[0][0]:
        assert turn.spoken == truth
