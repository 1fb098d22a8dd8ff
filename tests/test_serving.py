"""Serving for real: health while loading and draining, SIGTERM, keepalive and connection age.

The shutdown tests run `voxrelay serve` as a subprocess and send it a real signal
while a session speaks; the tone engine, paced at real time, makes speaking take
a known time and produce a known number of samples.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.processes import ServeProcess, free_port, running_serve, start_serve, user_env
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server import app
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.health import HealthServicer
from voxrelay_server.service import SpeechService
from voxrelay_server.serving import LOADING_MESSAGE, SHUTTING_DOWN_MESSAGE
from voxrelay_server.voices import VoiceCatalog

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SPEECH = app.SPEECH_SERVICE_NAME
READY_TIMEOUT_S = 30.0
SENTENCE = "This sentence is spoken at the pace of real time."


def health_request(service: str = SPEECH) -> Any:
    return health_pb2.HealthCheckRequest(service=service)


def wait_until_serving(process: subprocess.Popen[bytes], target: str, log: Path) -> None:
    """Watch the health of Speech until it says SERVING (the watch waits for the port)."""
    with grpc.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_request(), timeout=READY_TIMEOUT_S, wait_for_ready=True
        )
        try:
            for response in watch:
                if response.status == SERVING:
                    watch.cancel()
                    return
        except grpc.RpcError as error:
            raise AssertionError(
                f"voxrelay serve never reported SERVING ({error.code()}, exit code "
                f"{process.poll()}):\n{log.read_text()}"
            ) from None


@contextmanager
def voxrelay_serve(args: Sequence[str], tmp_path: Path) -> Iterator[ServeProcess]:
    """`voxrelay serve ARGS` on a free port, SERVING; killed if the test leaves it running."""
    target = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    process = start_serve(["--listen", target, *args], log, user_env())
    try:
        wait_until_serving(process, target, log)
        yield ServeProcess(process, target, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def tone_args(*, ms_per_char: int, grace_s: float) -> list[str]:
    return [
        "--engines",
        "tone",
        "--default-voice",
        TONE_VOICE,
        "--tone-ms-per-char",
        str(ms_per_char),
        "--tone-realtime-factor",
        "1",
        "--shutdown-grace",
        str(grace_s),
    ]


async def read_until_audio(
    call: grpc.aio.UnaryStreamCall[Any, speech_pb2.StreamResponse],
) -> list[speech_pb2.StreamResponse]:
    """Read a call's responses up to and including its first audio message."""
    received: list[speech_pb2.StreamResponse] = []
    while True:
        response = await call.read()
        assert isinstance(response, speech_pb2.StreamResponse), f"ended early: {received}"
        received.append(response)
        if response.WhichOneof("response") == "audio":
            return received


Call = (
    grpc.aio.UnaryStreamCall[Any, speech_pb2.StreamResponse]
    | grpc.aio.StreamStreamCall[Any, speech_pb2.StreamResponse]
)


async def read_to_end(
    call: Call, received: list[speech_pb2.StreamResponse]
) -> list[speech_pb2.StreamResponse]:
    """Read the rest of a call (read with `read()` so far); its status is `call.code()`."""
    try:
        while (response := await call.read()) is not grpc.aio.EOF:
            assert isinstance(response, speech_pb2.StreamResponse)
            received.append(response)
    except grpc.aio.AioRpcError:
        pass  # a status other than OK: the caller checks it
    return received


async def exit_code(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    return await asyncio.to_thread(process.wait, timeout_s)


def audio_samples(responses: Sequence[speech_pb2.StreamResponse]) -> int:
    return sum(len(r.audio.data) // 2 for r in responses if r.WhichOneof("response") == "audio")


def kinds(responses: Sequence[speech_pb2.StreamResponse]) -> list[str]:
    """`started`, `audio`, `ended`, `session_ended` or `error` for each response."""
    names = {
        speech_pb2.LIFECYCLE_EVENT_TURN_STARTED: "started",
        speech_pb2.LIFECYCLE_EVENT_TURN_ENDED: "ended",
        speech_pb2.LIFECYCLE_EVENT_SESSION_ENDED: "session_ended",
    }
    result = []
    for response in responses:
        kind = response.WhichOneof("response")
        result.append(names[response.lifecycle.event] if kind == "lifecycle" else str(kind))
    return result


def squeeze(items: list[str]) -> list[str]:
    """Runs of the same item as one: ["a", "a", "b"] -> ["a", "b"]."""
    return [item for index, item in enumerate(items) if index == 0 or items[index - 1] != item]


async def test_sigterm_lets_the_speaking_session_finish_then_exits_0(tmp_path: Path) -> None:
    ms_per_char, grace_s = 40, 10.0  # about 2 s of speech, well within the grace period
    with voxrelay_serve(tone_args(ms_per_char=ms_per_char, grace_s=grace_s), tmp_path) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_request())
            assert (await watch.read()).status == SERVING
            call = speech_pb2_grpc.SpeechStub(channel).Synthesize(
                speech_pb2.SynthesizeRequest(text=SENTENCE)
            )
            received = await read_until_audio(call)

            server.process.send_signal(signal.SIGTERM)
            assert (await watch.read()).status == NOT_SERVING
            assert not call.done(), "health should say NOT_SERVING while the call drains"
            # New calls are refused while the server drains.
            with (
                grpc.insecure_channel(server.target) as fresh,
                pytest.raises(grpc.RpcError) as refused,
            ):
                speech_pb2_grpc.SpeechStub(fresh).ListVoices(
                    speech_pb2.ListVoicesRequest(), timeout=2.0
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            received = await read_to_end(call, received)
            assert await call.code() == grpc.StatusCode.OK
            finished_at = time.monotonic()
            # The open health watch must not hold the exit up until the grace period ends.
            code = await exit_code(server.process, timeout_s=grace_s)
    assert code == 0, server.log.read_text()
    assert time.monotonic() - finished_at < grace_s / 2
    assert squeeze(kinds(received)) == [
        "session_started",
        "started",
        "audio",
        "ended",
        "session_ended",
    ]
    assert audio_samples(received) == ToneEngine(ms_per_char=ms_per_char).samples_for(SENTENCE)
    log = server.log.read_text()
    assert "stopping (NOT_SERVING)" in log and "stopped" in log


async def test_calls_still_running_after_the_grace_period_end_unavailable(
    tmp_path: Path,
) -> None:
    ms_per_char, grace_s = 100, 0.5  # about 5 s of speech, ten times the grace period
    with voxrelay_serve(tone_args(ms_per_char=ms_per_char, grace_s=grace_s), tmp_path) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = speech_pb2_grpc.SpeechStub(channel)
            # A Stream call that has sent nothing yet has no session: it must end too.
            # Opened first, so the server has taken it by the time the other one speaks.
            waiting = stub.Stream()
            await waiting.wait_for_connection()
            speaking = stub.Synthesize(speech_pb2.SynthesizeRequest(text=SENTENCE))
            received = await read_until_audio(speaking)

            signalled_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            received = await read_to_end(speaking, received)
            cut_off_after = time.monotonic() - signalled_at
            waiting_responses = await read_to_end(waiting, [])
            assert await speaking.code() == grpc.StatusCode.UNAVAILABLE
            assert await speaking.details() == SHUTTING_DOWN_MESSAGE
            assert await waiting.code() == grpc.StatusCode.UNAVAILABLE
            code = await exit_code(server.process, timeout_s=10.0)
    assert code == 0, server.log.read_text()
    assert grace_s <= cut_off_after < grace_s + app.ABORT_GRACE_S
    speech_s = len(SENTENCE) * ms_per_char / 1000
    assert cut_off_after < speech_s / 2
    assert squeeze(kinds(received)) == [
        "session_started",
        "started",
        "audio",
        "error",
        "session_ended",
    ]
    error = received[-2].error
    assert (error.code, error.message) == (
        grpc.StatusCode.UNAVAILABLE.value[0],
        SHUTTING_DOWN_MESSAGE,
    )
    assert kinds(waiting_responses) == ["error", "session_ended"]
    assert waiting_responses[0].error.message == SHUTTING_DOWN_MESSAGE
    assert "ending them with UNAVAILABLE" in server.log.read_text()


def tone_service(tone: ToneEngine) -> SpeechService:
    return SpeechService(VoiceCatalog([tone], TONE_VOICE), default_max_inflight_segments=4)


async def test_health_is_not_serving_while_the_voices_load(unused_target: str) -> None:
    """`serve()` listens first: NOT_SERVING and UNAVAILABLE calls until the voices are in."""
    loading = threading.Event()
    release = threading.Event()

    def slow_build(settings: ServerSettings) -> SpeechService:
        loading.set()
        release.wait(timeout=30)
        return tone_service(ToneEngine())

    stop = asyncio.Event()
    settings = ServerSettings(listen=unused_target, shutdown_grace_s=1.0)
    serving = asyncio.create_task(app.serve(settings, stop=stop, build=slow_build))
    try:
        async with grpc.aio.insecure_channel(unused_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            speech = speech_pb2_grpc.SpeechStub(channel)
            overall = await health.Check(health_request(""), wait_for_ready=True, timeout=10)
            assert overall.status == NOT_SERVING
            # Loading runs in a thread that a busy machine may start after the listener.
            assert await asyncio.to_thread(loading.wait, 10)
            watch = health.Watch(health_request())
            assert (await watch.read()).status == NOT_SERVING

            with pytest.raises(grpc.aio.AioRpcError) as listing:
                await speech.ListVoices(speech_pb2.ListVoicesRequest(), timeout=5)
            assert listing.value.code() == grpc.StatusCode.UNAVAILABLE
            assert listing.value.details() == LOADING_MESSAGE
            synthesize = speech.Synthesize(speech_pb2.SynthesizeRequest(text="Too early."))
            early = await read_to_end(synthesize, [])
            assert await synthesize.code() == grpc.StatusCode.UNAVAILABLE
            assert kinds(early) == ["error", "session_ended"]
            assert early[0].error.message == LOADING_MESSAGE

            release.set()
            assert (await watch.read()).status == SERVING
            overall = await health.Check(health_request(""), timeout=5)
            assert overall.status == SERVING
            voices = await speech.ListVoices(speech_pb2.ListVoicesRequest(), timeout=5)
            assert [voice.name for voice in voices.voices] == [TONE_VOICE]

            stop.set()
            assert (await watch.read()).status == NOT_SERVING
            await asyncio.wait_for(serving, timeout=10)
    finally:
        release.set()
        stop.set()
        await asyncio.gather(serving, return_exceptions=True)


async def test_health_knows_when_every_watcher_has_heard_a_status() -> None:
    servicer = HealthServicer()
    await servicer.set(SPEECH, SERVING)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        assert await servicer.watchers_sent(NOT_SERVING, timeout_s=1.0)  # nobody watches
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_request())
            assert (await watch.read()).status == SERVING
            assert not await servicer.watchers_sent(NOT_SERVING, timeout_s=0.05)

            await servicer.enter_graceful_shutdown()
            assert await servicer.watchers_sent(NOT_SERVING, timeout_s=5.0)
            await server.stop(None)  # what a draining server does next
            assert (await watch.read()).status == NOT_SERVING
    finally:
        await server.stop(None)


@pytest.fixture
def unused_target() -> str:
    return f"127.0.0.1:{free_port()}"


def test_server_options_carry_the_connection_settings() -> None:
    settings = ServerSettings(
        keepalive_time_s=30,
        keepalive_timeout_s=5,
        max_connection_age_s=600,
        max_connection_age_grace_s=45,
    )
    options = dict(app.server_options(settings))
    assert options == {
        "grpc.keepalive_time_ms": 30_000,
        "grpc.keepalive_timeout_ms": 5_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.http2.min_ping_interval_without_data_ms": 10_000,
        "grpc.max_connection_age_ms": 600_000,
        "grpc.max_connection_age_grace_ms": 45_000,
        "grpc.so_reuseport": 0,
    }


def test_zero_turns_keepalive_and_connection_age_off() -> None:
    options = dict(app.server_options(ServerSettings(keepalive_time_s=0, max_connection_age_s=0)))
    assert options["grpc.keepalive_time_ms"] == 2**31 - 1  # gRPC's "never"
    assert "grpc.max_connection_age_ms" not in options
    assert "grpc.max_connection_age_grace_ms" not in options


async def test_a_long_lived_channel_keeps_working_across_max_connection_age() -> None:
    """Connections are recycled after their age; calls in flight finish, later ones reconnect."""
    tone = ToneEngine(ms_per_char=10, realtime_factor=1.0)  # about 0.5 s of speech
    settings = ServerSettings(
        listen="127.0.0.1:0", max_connection_age_s=0.2, max_connection_age_grace_s=5.0
    )
    parts = app.create_server_parts(settings, tone_service(tone))
    await parts.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{parts.port}") as channel:
            stub = speech_pb2_grpc.SpeechStub(channel)
            request = speech_pb2.SynthesizeRequest(text=SENTENCE)
            # Outlives the connection's age: finishes whole within the age's grace period.
            first = [response async for response in stub.Synthesize(request)]
            assert audio_samples(first) == tone.samples_for(SENTENCE)
            # Then the server closes the aged connection, and the channel notices.
            state = channel.get_state()
            if state == grpc.ChannelConnectivity.READY:
                await asyncio.wait_for(channel.wait_for_state_change(state), timeout=2.0)
            assert channel.get_state() != grpc.ChannelConnectivity.READY
            # The same channel reconnects by itself for the next calls.
            for _ in range(2):
                voices = await stub.ListVoices(speech_pb2.ListVoicesRequest(), timeout=2.0)
                assert voices.voices[0].name == TONE_VOICE
    finally:
        await parts.server.stop(None)


async def play_in_real_time(
    target: str, voice: str, text: str, playing: asyncio.Event
) -> list[speech_pb2.StreamResponse]:
    """A listener that plays what it receives at real-time pace, at most LEAD_S ahead:
    it reads a message only once it has room for it, as a telephony bridge does.
    `playing` is set at its first audio."""
    received: list[speech_pb2.StreamResponse] = []
    async with grpc.aio.insecure_channel(target, options=NO_BDP) as channel:
        call = speech_pb2_grpc.SpeechStub(channel).Synthesize(
            speech_pb2.SynthesizeRequest(config=speech_pb2.SessionConfig(voice=voice), text=text)
        )
        started: float | None = None
        played_s = 0.0
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                assert isinstance(response, speech_pb2.StreamResponse)
                received.append(response)
                if response.WhichOneof("response") != "audio":
                    continue
                playing.set()
                started = started or time.monotonic()
                played_s += len(response.audio.data) // 2 / response.audio.sample_rate_hz
                # Playing: the next read waits until the audio in hand runs low.
                await asyncio.sleep(max(0.0, started + played_s - LEAD_S - time.monotonic()))
        except grpc.aio.AioRpcError:
            pass  # the status is checked through the messages before it
    return received


NO_BDP = [("grpc.http2.bdp_probe", 0)]
LEAD_S = 0.5


@pytest.mark.timeout(120)
async def test_every_session_cut_by_shutdown_gets_its_error_even_behind_unplayed_audio(
    tmp_path: Path,
) -> None:
    # piper hands over a whole sentence of audio at once, here about ten seconds of it;
    # a listener playing in real time takes it a message at a time, and the last
    # messages of a session cut short wait behind what it has been sent.
    grace_s, sessions = 1.0, 2
    sentence = (
        "This is a long sentence of a long answer, one that goes on and on, clause after "
        "clause, so that the voice has a great deal to say before it stops"
    )
    text = ". ".join([sentence] * 6) + "."
    voice = "piper/en_US-joe-medium"
    with voxrelay_serve(
        ["--engines", "piper", "--shutdown-grace", str(grace_s)], tmp_path
    ) as server:
        playing = [asyncio.Event() for _ in range(sessions)]
        listeners = [
            asyncio.create_task(play_in_real_time(server.target, voice, text, event))
            for event in playing
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in playing)), 60)
        signalled_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*listeners)
        code = await exit_code(server.process, timeout_s=30.0)
        exited_after = time.monotonic() - signalled_at
    assert code == 0, server.log.read_text()
    for received in results:
        assert squeeze(kinds(received))[-3:] == ["audio", "error", "session_ended"], kinds(received)
        assert received[-2].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert received[-2].error.message == SHUTTING_DOWN_MESSAGE
    assert exited_after < grace_s + app.ABORT_GRACE_S + app.WATCHERS_GRACE_S + app.RELEASE_BOUND_S


async def test_sigterm_with_clients_that_do_not_read_exits_within_its_bound(
    tmp_path: Path,
) -> None:
    grace_s = 0.5
    args = [*tone_args(ms_per_char=50, grace_s=grace_s), "--tone-realtime-factor", "0"]
    with voxrelay_serve(args, tmp_path) as server:
        async with grpc.aio.insecure_channel(server.target, options=NO_BDP) as channel:
            stuck = []
            for _ in range(10):
                call = speech_pb2_grpc.SpeechStub(channel).Synthesize(
                    speech_pb2.SynthesizeRequest(text=SENTENCE * 100)
                )
                await call.wait_for_connection()
                stuck.append(call)
            signalled_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = await exit_code(server.process, timeout_s=30.0)
            exited_after = time.monotonic() - signalled_at
            for call in stuck:
                call.cancel()
    assert code == 0, server.log.read_text()
    assert exited_after < grace_s + app.ABORT_GRACE_S + app.WATCHERS_GRACE_S + app.RELEASE_BOUND_S
    assert "stopped" in server.log.read_text()


async def test_synthesize_calls_cancelled_while_the_server_waits_to_write_log_no_error(
    tmp_path: Path,
) -> None:
    args = [*tone_args(ms_per_char=50, grace_s=1.0), "--tone-realtime-factor", "0"]
    with voxrelay_serve(args, tmp_path) as server:
        async with grpc.aio.insecure_channel(server.target, options=NO_BDP) as channel:
            calls = [
                speech_pb2_grpc.SpeechStub(channel).Synthesize(
                    speech_pb2.SynthesizeRequest(text=SENTENCE * 100)
                )
                for _ in range(8)
            ]
            for call in calls:
                await call.read()
            # Unread, each call's window fills at once (the engine is instant) and the
            # server's next send waits: no event tells a client that, so give it time.
            await asyncio.sleep(1.0)
            for call in calls:
                call.cancel()
            # Until the server has noticed: a new call then finds every place free.
            summaries = await asyncio.to_thread(
                _wait_for_log, server.log, "outcome=CANCELLED", count=8
            )
        server.process.send_signal(signal.SIGTERM)
        assert await exit_code(server.process, timeout_s=30.0) == 0
    log = server.log.read_text()
    assert summaries == 8, log
    assert " ERROR " not in log and "Traceback" not in log, log


def _wait_for_log(log: Path, marker: str, *, count: int, timeout_s: float = 10.0) -> int:
    """How many times `marker` is in `log` once it is there `count` times (or at timeout)."""
    deadline = time.monotonic() + timeout_s
    while (found := log.read_text().count(marker)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_a_second_server_on_the_same_address_is_refused(tmp_path: Path) -> None:
    """gRPC binds with SO_REUSEPORT unless told not to, so a second `voxrelay serve` on a
    running one's address used to start, SERVING, and take a share of its new
    connections (each to a server with other settings, voices or tokens); it now stops
    at once, saying the address is in use."""
    with running_serve(["--engines", "tone"], tmp_path / "first.log") as first:
        second = start_serve(
            ["--engines", "tone", "--listen", first.target], tmp_path / "second.log", user_env()
        )
        try:
            assert second.wait(timeout=60) == 2
        finally:
            second.kill()
            second.wait()
        assert first.process.poll() is None
    logged = (tmp_path / "second.log").read_text()
    assert f"cannot listen on {first.target}" in logged and "in use" in logged, logged
    assert "Traceback" not in logged
