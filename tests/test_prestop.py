"""`--prestop-delay` for real: a `voxrelay serve` process, real signals, real sockets.

On SIGTERM the server first says NOT_SERVING while still serving new calls, so
load balancers that poll health stop sending before the listener closes; then it
drains. A second signal cuts the delay short.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from tests.conftest import collect, config, text, turn_done
from tests.test_serving import (
    NOT_SERVING,
    SERVING,
    SPEECH,
    _wait_for_log,
    audio_samples,
    exit_code,
    health_request,
    kinds,
    read_to_end,
    read_until_audio,
    squeeze,
    tone_args,
    voxrelay_serve,
)
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server import app
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.tone import ToneEngine

pytestmark = pytest.mark.timeout(90)

REPLY = "Served whole while the server says it is stopping. "
PRESTOP_OVER = "prestop delay of"


async def check(channel: grpc.aio.Channel, service: str) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_request(service))
    status: int = response.status
    return status


async def test_during_the_delay_health_is_not_serving_and_new_calls_are_served_whole(
    tmp_path: Path,
) -> None:
    # The delay is far longer than the test needs: the steps below wait on events, and the
    # test ends it with a second signal (not timing-dependent either way).
    args = [*tone_args(ms_per_char=5, grace_s=5.0), "--prestop-delay", "120"]
    with voxrelay_serve(args, tmp_path) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_request())
            assert (await watch.read()).status == SERVING
            signalled_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert (await watch.read()).status == NOT_SERVING
            assert await check(channel, "") == NOT_SERVING
            assert await check(channel, SPEECH) == NOT_SERVING
            # A new connection and a new Stream call: served whole, status OK.
            async with grpc.aio.insecure_channel(server.target) as fresh:
                stub = speech_pb2_grpc.SpeechStub(fresh)
                responses = await collect(stub, [config(), text(REPLY), turn_done()])
            assert squeeze(kinds(responses)) == [
                "session_started",
                "started",
                "audio",
                "ended",
                "session_ended",
            ]
            assert audio_samples(responses) == ToneEngine(ms_per_char=5).samples_for(REPLY.strip())
            assert not watch.done(), "the watch stays open through the delay"
            assert server.process.poll() is None
            # The second signal skips the rest of the delay: the server drains and exits.
            server.process.send_signal(signal.SIGINT)
            code = await exit_code(server.process, timeout_s=60.0)
            exited_after = time.monotonic() - signalled_at
    assert code == 0, server.log.read_text()
    assert exited_after < 60.0  # half the delay: it was cut short
    log = server.log.read_text()
    assert "prestop (NOT_SERVING)" in log
    assert "second signal: skipping the rest of the prestop delay" in log
    assert PRESTOP_OVER not in log
    phases = [log.index(m) for m in ("prestop (NOT_SERVING)", "stopping (NOT_SERVING)", "stopped")]
    assert phases == sorted(phases), log


async def test_after_the_delay_new_calls_are_refused_while_calls_in_flight_drain(
    tmp_path: Path,
) -> None:
    # A call in flight through the delay and past it (about 6 s of speech at real-time
    # pace; 1 s of delay), so the server is still draining when the delay is over.
    ms_per_char, delay_s, grace_s = 100, 1.0, 30.0
    sentence = "A reply that goes on speaking well past the end of the delay. "
    args = [*tone_args(ms_per_char=ms_per_char, grace_s=grace_s), "--prestop-delay", str(delay_s)]
    with voxrelay_serve(args, tmp_path) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            speaking = speech_pb2_grpc.SpeechStub(channel).Synthesize(
                speech_pb2.SynthesizeRequest(text=sentence)
            )
            received = await read_until_audio(speaking)
            server.process.send_signal(signal.SIGTERM)
            over = await asyncio.to_thread(_wait_for_log, server.log, PRESTOP_OVER, count=1)
            assert over == 1, server.log.read_text()
            assert not speaking.done(), "the call should still be speaking after the delay"
            # The listener is closed: a new connection is refused.
            with (
                grpc.insecure_channel(server.target) as fresh,
                pytest.raises(grpc.RpcError) as refused,
            ):
                speech_pb2_grpc.SpeechStub(fresh).ListVoices(
                    speech_pb2.ListVoicesRequest(), timeout=2.0
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            received = await read_to_end(speaking, received)
            assert await speaking.code() == grpc.StatusCode.OK
            code = await exit_code(server.process, timeout_s=30.0)
    assert code == 0, server.log.read_text()
    expected = ToneEngine(ms_per_char=ms_per_char).samples_for(sentence.strip())
    assert audio_samples(received) == expected
    log = server.log.read_text()
    assert log.index(PRESTOP_OVER) < log.index("stopping (NOT_SERVING)") < log.index("stopped")


async def test_without_a_delay_the_listener_closes_at_once(tmp_path: Path) -> None:
    """The default (0): no prestop phase, as before the setting existed."""
    with voxrelay_serve(tone_args(ms_per_char=5, grace_s=1.0), tmp_path) as server:
        server.process.send_signal(signal.SIGTERM)
        assert await exit_code(server.process, timeout_s=30.0) == 0
    log = server.log.read_text()
    assert "prestop" not in log and "stopping (NOT_SERVING)" in log


async def test_the_process_exits_within_its_bound_even_while_an_engine_holds_the_loop(
    tmp_path: Path,
) -> None:
    """The shutdown's bound holds whatever an engine does: here a segment that blocks
    the event loop (tone's `hold_ms`) for far longer, so no timer of the loop fires."""
    latency_s, hold_s, grace_s = 4.0, 300.0, 8.0
    held = f"[[latency_ms={latency_s * 1000:.0f}]][[hold_ms={hold_s * 1000:.0f}]] Held. "
    with voxrelay_serve(tone_args(ms_per_char=5, grace_s=grace_s), tmp_path) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = speech_pb2_grpc.SpeechStub(channel).Stream()
            await call.write(config())
            await call.write(text(held))
            started = await call.read()
            assert isinstance(started, speech_pb2.StreamResponse)
            assert started.WhichOneof("response") == "session_started"
            # The drain begins within the latency; the hold then starts within the grace.
            signalled_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = await exit_code(server.process, timeout_s=60.0)
            exited_after = time.monotonic() - signalled_at
            call.cancel()
    log = server.log.read_text()
    assert code == app.FORCED_EXIT_CODE, log
    bound = grace_s + app.ABORT_GRACE_S + app.WATCHERS_GRACE_S + app.RELEASE_BOUND_S
    # It waited for the calls (a grace's worth) and no longer than its bound and margin,
    # far less than the hold that was in progress had left.
    assert grace_s <= exited_after <= bound + app.EXIT_MARGIN_S + 5.0 < hold_s / 4, log
    assert log.index("stopping (NOT_SERVING)") < log.index("overran its bound"), log


def test_the_exit_deadline_exits_once_when_its_time_runs_out_unless_rearmed_or_disarmed() -> None:
    exits: list[int] = []
    exited = threading.Event()

    def record(code: int) -> None:
        exits.append(code)
        exited.set()

    deadline = app.ExitDeadline(record)
    deadline.arm(0.05, "first")
    deadline.arm(0.2, "re-armed")  # replaces the first: one exit, the later one
    assert exited.wait(10.0)
    assert exits == [app.FORCED_EXIT_CODE]
    exited.clear()
    disarmed = app.ExitDeadline(record)
    disarmed.arm(0.05, "disarmed")
    disarmed.disarm()
    deadline.arm(0.2, "after it")  # fires after the disarmed one would have
    assert exited.wait(10.0)
    assert exits == [app.FORCED_EXIT_CODE] * 2


def test_the_shutdown_bound_is_the_grace_and_the_documented_bounds() -> None:
    assert app.shutdown_bound_s(10.0) == 10.0 + 5.0 + 2.0 + 5.0 + 1.0
    help_text = next(
        f.metadata["help"]
        for f in dataclasses.fields(ServerSettings)
        if f.name == "shutdown_grace_s"
    )
    assert f"at most {app.shutdown_bound_s(0):g} s after it" in help_text
