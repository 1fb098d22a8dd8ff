"""Bounds over real gRPC: fair sharing, slow readers, session and text limits, timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import (
    Request,
    RunningServer,
    StartServer,
    audio_of,
    collect,
    config,
    lifecycle_of,
    read_one,
    read_rest,
    text,
    turn_done,
)
from voxrelay.v1 import speech_pb2
from voxrelay_server.dispatcher import SessionLimits
from voxrelay_server.observer import SessionObserver


async def first_audio_after(server: RunningServer, requests: list[Request]) -> float:
    """Seconds from sending `requests` to the first audio message."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        started = time.perf_counter()
        for request in requests:
            await call.write(request)
        while (await read_one(call)).WhichOneof("response") != "audio":
            pass
        elapsed = time.perf_counter() - started
        call.cancel()
    return elapsed


async def test_a_long_session_does_not_starve_short_ones(start_server: StartServer) -> None:
    latency_s, slots, novel_segments, novel_lookahead = 0.1, 2, 40, 32
    novel_released = asyncio.Event()

    class NovelReleased(SessionObserver):
        def segment_released(self, turn: int, segment: int, text: str) -> None:
            if segment == novel_segments:  # the short sessions have one segment each
                novel_released.set()

    server = await start_server(
        first_audio_ms=latency_s * 1000,
        ms_per_char=1,
        concurrency=slots,
        observer_factory=lambda _id, _settings: NovelReleased(),
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        novel = server.stub(channel).Stream()
        await novel.write(config(min_sentence_chars=1, max_inflight_segments=novel_lookahead))
        for index in range(novel_segments):
            await novel.write(text(f"Chapter sentence number {index}. "))
        # Set as the last segment is released; the segments started before it have
        # taken a slot or queued for one by the time this wakes.
        await asyncio.wait_for(novel_released.wait(), timeout=30)
        queued_ahead = server.service.schedulers["tone"].queued
        assert queued_ahead >= novel_lookahead // 2

        waits = await asyncio.gather(
            *(first_audio_after(server, [text(f"Short {i}."), turn_done()]) for i in range(10))
        )
        novel.cancel()
    # First come, first served would make each short session wait behind the novel's
    # queued segments: (about 30 / 2 slots) x 100 ms, 1.5 s.
    fifo_wait_s = (queued_ahead / slots + 1) * latency_s
    assert max(waits) < 0.6 * fifo_wait_s, f"short sessions waited {max(waits):.2f} s"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_slow_readers_do_not_make_the_server_buffer_without_bound(
    start_server: StartServer,
) -> None:
    sessions, sentences, ceiling = 100, 120, 64 * 1024
    sentence = "This sentence is exactly long enough to make one second of tone audio here."
    server = await start_server(
        ms_per_char=1000 / len(sentence), limits=SessionLimits(audio_buffer_bytes=ceiling)
    )
    unbounded_bytes = sessions * sentences * 16000 * 2  # every second of audio, 2 bytes a sample
    baseline = rss_bytes()
    # A slow reader's transport keeps its default 64 KiB window; with BDP probing on, the
    # client's grpc would keep accepting data into *its* memory, hiding the server's pause.
    slow_reader = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(server.target, options=slow_reader) as channel:
        calls = []
        for _ in range(sessions):
            call = server.stub(channel).Stream()
            await call.write(config(min_sentence_chars=1))
            for _ in range(sentences):
                await call.write(text(sentence + " "))
            calls.append(call)

        def all_paused() -> bool:
            active = list(server.service._sessions.values())
            return len(active) == sessions and all(
                s.buffered_audio_bytes >= ceiling for s in active
            )

        await wait_until(all_paused, timeout_s=30)
        # Nobody reads: synthesis stopped long before the texts were spoken.
        assert server.tone.stats.started < 0.2 * sessions * sentences
        per_session = max(s.buffered_audio_bytes for s in server.service._sessions.values())
        assert per_session <= ceiling + 4 * 16000 * 2  # the ceiling plus the in-flight segments
        growth = rss_bytes() - baseline
        assert growth < 0.3 * unbounded_bytes, f"RSS grew {growth / 2**20:.0f} MiB"

        # Reading resumes synthesis: one session read to its end gets all its audio.
        first = calls[0]
        await first.done_writing()
        responses = await read_rest(first)
        samples = sum(len(a.data) // 2 for a in audio_of(responses))
        assert samples == sentences * server.tone.samples_for(sentence)
        for call in calls[1:]:
            call.cancel()


async def wait_until(condition: object, timeout_s: float) -> None:
    """Poll a state that has no event of its own, with a deadline."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_the_session_after_the_limit_is_refused_at_once(start_server: StartServer) -> None:
    server = await start_server(max_sessions=2, ms_per_char=50, realtime_factor=1.0)
    async with grpc.aio.insecure_channel(server.target) as channel:
        open_calls = []
        for _ in range(2):
            call = server.stub(channel).Stream()
            await call.write(text("Keep this session busy for a while."))
            await read_one(call)  # TURN_STARTED: the session exists
            open_calls.append(call)
        started = time.perf_counter()
        refused_call = server.stub(channel).Stream()
        await refused_call.done_writing()  # else the server awaits its requests for DRAIN_S
        refused = await read_rest(refused_call)
        assert await refused_call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.perf_counter() - started < 1.0
        open_calls[0].cancel()
        await wait_until(lambda: server.service.active_sessions == 1, timeout_s=5)
        accepted = await collect(server.stub(channel), [text("Now there is room.")])
        open_calls[1].cancel()
    error = refused[0].error
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "limit of 2 concurrent sessions" in error.message
    assert lifecycle_of(refused) == [("session_ended", 0, False)]
    assert lifecycle_of(accepted)[-1] == ("session_ended", 0, False)


async def test_too_much_waiting_text_is_resource_exhausted(start_server: StartServer) -> None:
    server = await start_server(limits=SessionLimits(max_buffered_text_chars=100))
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        await call.write(text("sixty characters of text without a single sentence end in it"))
        await call.write(text(" and sixty more characters that push the session over limit"))
        responses = await read_rest(call)
        code = await call.code()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = next(r.error for r in responses if r.WhichOneof("response") == "error")
    assert "limit of 100 per session" in error.message


async def test_an_idle_session_is_closed(start_server: StartServer) -> None:
    server = await start_server(limits=SessionLimits(idle_timeout_s=0.3))
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        started = time.perf_counter()
        await call.write(text("Said once, then silence."))
        await call.write(turn_done())
        responses = await read_rest(call)
        elapsed = time.perf_counter() - started
        code = await call.code()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.3 <= elapsed < 2.0
    assert any(r.WhichOneof("response") == "audio" for r in responses)
    assert "idle for 0.3 s" in responses[-2].error.message
    assert lifecycle_of(responses[-1:]) == [("session_ended", 0, False)]


async def test_speaking_longer_than_the_idle_timeout_is_not_idle(
    start_server: StartServer,
) -> None:
    server = await start_server(
        ms_per_char=40, realtime_factor=1.0, limits=SessionLimits(idle_timeout_s=0.3)
    )
    sentence = "This takes about a second to say."
    async with grpc.aio.insecure_channel(server.target) as channel:
        responses = await collect(server.stub(channel), [text(sentence), turn_done()])
    samples = sum(len(a.data) // 2 for a in audio_of(responses))
    assert samples == server.tone.samples_for(sentence)
    assert lifecycle_of(responses)[-1] == ("session_ended", 0, False)


async def test_a_client_deadline_stops_synthesis(start_server: StartServer) -> None:
    server = await start_server(ms_per_char=50, realtime_factor=1.0)
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream(
            iter([config(), text("A long answer that will not finish in time."), turn_done()]),
            timeout=0.4,
        )
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for _ in call:
                pass
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(server.tone.idle.wait(), timeout=2.0)
    assert server.tone.stats.cancelled == 1


def test_status_names_are_the_documented_ones() -> None:
    # The proto documents these numbers; the domain's codes must match gRPC's.
    from voxrelay_server.errors import ErrorCode

    for code in ErrorCode:
        assert grpc.StatusCode[code.name].value[0] == code.value
    assert speech_pb2.Error(code=ErrorCode.RESOURCE_EXHAUSTED).code == 8
