"""Callers that misbehave, over real gRPC: silent calls, clients that stop reading, bad
bytes, a bug in the server, an engine raising mid-segment. Each ends as the contract
says, the server frees what the call held, and other sessions go on."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable

import grpc
import pytest
from piper import SynthesisConfig

from tests.conftest import (
    Request,
    Response,
    StartServer,
    audio_of,
    collect,
    config,
    lifecycle_of,
    read_one,
    read_rest,
    text,
    turn_done,
    wait_for,
)
from voxrelay.v1 import speech_pb2
from voxrelay_server.dispatcher import SessionDispatcher, SessionLimits
from voxrelay_server.engines.piper_engine import PiperEngine

NO_BDP = [("grpc.http2.bdp_probe", 0)]
"""A client transport that keeps gRPC's 64 KiB window: one that stops reading stops
taking audio (with BDP probing its transport would take megabytes into its memory)."""
STREAM = "/voxrelay.v1.Speech/Stream"
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def ending(responses: list[Response]) -> tuple[int, str, int]:
    """The error's code, message and turn of a failed call's last messages."""
    *_, error, ended = responses
    assert error.WhichOneof("response") == "error", responses[-3:]
    assert lifecycle_of([ended]) == [("session_ended", 0, False)]
    return error.error.code, error.error.message, error.error.turn


async def test_a_silent_call_holds_a_place_until_the_start_timeout_ends_it(
    start_server: StartServer,
) -> None:
    server = await start_server(max_sessions=2, start_timeout_s=0.5)
    async with grpc.aio.insecure_channel(server.target) as channel:
        silent = [server.stub(channel).Stream() for _ in range(2)]
        for call in silent:
            await call.wait_for_connection()
        await wait_for(lambda: server.service.active_sessions == 2)
        refused = server.stub(channel).Stream()
        await refused.done_writing()
        assert ending(await read_rest(refused))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]

        for call in silent:
            code, message, turn = ending(await read_rest(call))
            assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert (code, turn) == (DEADLINE_EXCEEDED, 0)
            assert "no request arrived within 0.5 s" in message
        assert server.service.active_sessions == 0
        responses = await collect(server.stub(channel), [text("There is room again.")])
    assert lifecycle_of(responses)[-1] == ("session_ended", 0, False)


async def test_many_silent_calls_take_no_more_than_the_places_there_are(
    start_server: StartServer,
) -> None:
    server = await start_server(max_sessions=20, start_timeout_s=1.0)
    async with grpc.aio.insecure_channel(server.target) as channel:
        calls = [server.stub(channel).Stream() for _ in range(300)]
        await asyncio.gather(*(read_rest(call) for call in calls))
        codes = [await call.code() for call in calls]
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 20
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 280
    assert server.service.active_sessions == 0


async def test_clients_that_stop_reading_lose_their_sessions_and_places(
    start_server: StartServer,
) -> None:
    sessions, send_timeout_s = 20, 0.5
    server = await start_server(
        max_sessions=sessions,
        send_timeout_s=send_timeout_s,
        limits=SessionLimits(audio_buffer_bytes=64 * 1024),
    )
    sentence = "A sentence that makes a fair amount of tone audio to send."
    async with grpc.aio.insecure_channel(server.target, options=NO_BDP) as channel:
        stuck = []
        for _ in range(sessions):
            call = server.stub(channel).Stream()
            for _ in range(40):
                await call.write(text(sentence + " "))
            stuck.append(call)
        # Nobody reads: each session's messages wait on a full window until the send
        # timeout ends it, and its place is free again at once.
        await wait_for(lambda: server.service.active_sessions == 0, timeout_s=10)
        await wait_for(lambda: not server.service._sessions)  # closed, observers told
        started = server.tone.stats.started
        responses = await collect(server.stub(channel), [text("A new session.")])
        assert lifecycle_of(responses)[-1] == ("session_ended", 0, False)

        # A stuck client that reads again gets the audio it had been sent, then the end.
        for call in stuck:
            received = await read_rest(call)
            code, message, turn = ending(received)
            assert (code, turn) == (DEADLINE_EXCEEDED, 1)
            assert f"did not read for {send_timeout_s:g} s" in message
            assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert audio_of(received)
    # Their synthesis stopped when they were ended: only the new session's segment ran.
    assert server.tone.stats.started == started + 1


async def test_an_error_names_the_turn_it_cuts_short(start_server: StartServer) -> None:
    server = await start_server()
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        await call.write(text("A turn has started"))
        assert (await read_one(call)).HasField("session_started")
        started = await read_one(call)
        assert lifecycle_of([started]) == [("started", 1, False)]
        await call.write(config(voice="tone/square"))  # config after text: not allowed
        await call.done_writing()
        responses = [started, *await read_rest(call)]
    code, message, turn = ending(responses)
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "config is allowed only as the first message" in message
    # The error takes the place of the turn's TURN_ENDED: the turn is never left open.
    assert turn == 1
    assert lifecycle_of(responses) == [("started", 1, False), ("session_ended", 0, False)]


@pytest.mark.parametrize("first", [False, True])
async def test_text_that_is_not_utf8_is_invalid_argument(
    start_server: StartServer, first: bool
) -> None:
    server = await start_server()
    bad_text = b"\x12\x03ab\xff"  # field 2 (text), 3 bytes: not UTF-8
    requests = [bad_text] if first else [config().SerializeToString(), bad_text]
    async with grpc.aio.insecure_channel(server.target) as channel:
        raw: grpc.aio.StreamStreamMultiCallable[bytes, Response] = channel.stream_stream(
            STREAM, response_deserializer=Response.FromString
        )
        call = raw(iter(requests))
        responses = await read_rest(call)  # type: ignore[arg-type]
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        after = await collect(server.stub(channel), [text("Still serving.")])
    code, message, _ = ending(responses)
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "must be valid UTF-8" in message
    assert lifecycle_of(after)[-1] == ("session_ended", 0, False)


async def test_a_bug_in_the_server_is_logged_once_and_reported_as_internal(
    start_server: StartServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server()

    def broken(self: SessionDispatcher, text: str) -> None:
        raise RuntimeError("a bug")

    async with grpc.aio.insecure_channel(server.target) as channel:
        monkeypatch.setattr(SessionDispatcher, "send_text", broken)
        call = server.stub(channel).Stream(iter([config(), text("Hello.")]))
        responses = await read_rest(call)
        assert await call.code() == grpc.StatusCode.INTERNAL
        monkeypatch.undo()
        after = await collect(server.stub(channel), [text("Other sessions go on.")])
    code, message, _ = ending(responses)
    assert code == grpc.StatusCode.INTERNAL.value[0]
    assert "internal error in the server (session " in message
    assert "a bug" not in message  # nothing of the server's insides goes to the caller
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "RuntimeError: a bug" in caplog.text
    assert lifecycle_of(after)[-1] == ("session_ended", 0, False)


async def test_piper_raising_mid_segment_fails_that_segment_only(
    start_server: StartServer,
    piper_engine: PiperEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server(extra_engines=[piper_engine])
    voice = piper_engine.voices()[0]
    loaded = piper_engine._voices[voice.name]
    runs = 0

    def second_run_fails(real_run: Callable[..., object]) -> Callable[..., object]:
        def run(ids: list[int], config: SynthesisConfig) -> object:
            nonlocal runs
            runs += 1
            if runs == 2:
                raise RuntimeError("onnxruntime fell over")
            return real_run(ids, config)

        return run

    for model in (loaded.shared, loaded.lone):  # a copy for lone runs, one for the others
        if model is not None:
            real = model.voice.phoneme_ids_to_audio
            monkeypatch.setattr(model.voice, "phoneme_ids_to_audio", second_run_fails(real))
    requests: list[Request] = [
        # One segment of two sentences: its second run fails.
        config(
            voice=voice.name,
            min_sentence_chars=200,
            segmentation=speech_pb2.SEGMENTATION_SENTENCES,
        ),
        text("The first sentence is fine. The second one is where it breaks."),
        turn_done(),
    ]
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream(iter(requests))
        responses = await read_rest(call)
        assert await call.code() == grpc.StatusCode.INTERNAL
        monkeypatch.undo()
        after = await collect(server.stub(channel), [config(voice=voice.name), text("Fine.")])
    *_, error, _ = responses
    assert (error.error.turn, error.error.segment) == (1, 1)
    assert "the engine failed on this segment (session " in error.error.message
    assert audio_of(responses)  # the first sentence's audio went out before the failure
    logged = [r for r in caplog.records if "onnxruntime fell over" in r.getMessage() or r.exc_info]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR  # once, with its traceback
    assert "RuntimeError: onnxruntime fell over" in caplog.text
    assert lifecycle_of(after)[-1] == ("session_ended", 0, False)


async def test_bytes_that_cannot_be_parsed_after_a_refusal_keep_the_refusals_status(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server()
    refused = config(voice="nope/x").SerializeToString()
    async with grpc.aio.insecure_channel(server.target) as channel:
        raw: grpc.aio.StreamStreamMultiCallable[bytes, Response] = channel.stream_stream(
            STREAM, response_deserializer=Response.FromString
        )
        call = raw(iter([refused, b"\x12\x03ab\xff"]))
        responses = await read_rest(call)  # type: ignore[arg-type]
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown voice 'nope/x'" in (await call.details() or "")
    assert ending(responses)[0] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_that_goes_away_while_its_failed_call_drains_frees_its_place(
    start_server: StartServer,
) -> None:
    server = await start_server()
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = server.stub(channel).Stream()
        await call.write(config())
        await call.write(config())  # a second config: the session fails...
        while (await read_one(call)).WhichOneof("response") != "error":
            pass
        call.cancel()  # ...and its client leaves without half-closing
    await wait_for(lambda: server.service.active_sessions == 0)


CLIENT = """
import sys, grpc
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    text = "A long answer that goes on for a good while. " * 40
    requests = iter([speech_pb2.StreamRequest(text=text)])
    for response in speech_pb2_grpc.SpeechStub(channel).Stream(requests):
        if response.WhichOneof("response") == "audio":
            print("playing", flush=True)
            sys.stdin.read()  # until killed
"""


async def test_a_client_killed_mid_stream_ends_its_session_and_synthesis(
    start_server: StartServer,
) -> None:
    server = await start_server(ms_per_char=50, realtime_factor=1.0)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, server.target,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert client.stdout is not None
    assert await asyncio.wait_for(client.stdout.readline(), 30) == b"playing\n"
    assert server.service.active_sessions == 1 and server.tone.stats.active >= 1
    client.kill()
    await client.wait()
    await wait_for(lambda: server.service.active_sessions == 0)
    await asyncio.wait_for(server.tone.idle.wait(), 5)
    assert server.tone.stats.cancelled >= 1


async def test_clients_cancelling_while_the_server_writes_log_no_error(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(ms_per_char=20)
    long_text = text("Audio for a while, sent as fast as the client takes it. " * 30)
    async with grpc.aio.insecure_channel(server.target) as channel:
        for _ in range(50):
            call = server.stub(channel).Stream()
            await call.write(long_text)
            while (await read_one(call)).WhichOneof("response") != "audio":
                pass
            call.cancel()
        await wait_for(lambda: server.service.active_sessions == 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
