"""Servers the benchmarks measure: voxrelay in-process or as a process, over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.app import create_server
from voxrelay_server.config import ServerSettings
from voxrelay_server.dispatcher import SessionLimits
from voxrelay_server.engines.base import SpeechEngine
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.service import SpeechService
from voxrelay_server.voices import VoiceCatalog


@dataclass
class InProcessServer:
    target: str
    service: SpeechService
    tone: ToneEngine | None


@asynccontextmanager
async def in_process_server(
    engines: Sequence[SpeechEngine],
    default_voice: str,
    *,
    max_inflight_segments: int = 4,
    max_sessions: int = 10000,
    limits: SessionLimits | None = None,
) -> AsyncIterator[InProcessServer]:
    """A voxrelay server on a free loopback port in this process."""
    catalog = VoiceCatalog(list(engines), default_voice)
    service = SpeechService(
        catalog,
        default_max_inflight_segments=max_inflight_segments,
        max_sessions=max_sessions,
        limits=limits,
    )
    server, port = create_server(service, ServerSettings(listen="127.0.0.1:0"))
    await server.start()
    tone = next((e for e in engines if isinstance(e, ToneEngine)), None)
    try:
        yield InProcessServer(f"127.0.0.1:{port}", service, tone)
    finally:
        await server.stop(None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServerProcess:
    target: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def start_server_process(
    arguments: Sequence[str],
    timeout_s: float = 60.0,
    extra_env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> ServerProcess:
    """`voxrelay serve` as its own process (so its CPU and memory can be measured alone).

    `extra_env` adds to (or overrides) this process's environment for the server.
    `log`, when given, receives the server's stdout and stderr (appended); otherwise
    they are dropped. `arguments` come after `--log-level warning`, so they may override it.
    """
    port = free_port()
    binary = Path(sys.executable).parent / "voxrelay"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXRELAY_")}
    env.update(extra_env or {})
    output = log.open("ab") if log is not None else None
    try:
        process = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                *arguments,
            ],
            env=env,
            stdout=output or subprocess.DEVNULL,
            stderr=output or subprocess.DEVNULL,
        )
    finally:
        if output is not None:
            output.close()  # the server has its own copy
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = speech_pb2_grpc.SpeechStub(channel)
        while True:
            try:
                stub.ListVoices(speech_pb2.ListVoicesRequest(), timeout=0.5)
                break
            except grpc.RpcError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError("voxrelay serve did not start") from None
    return ServerProcess(target, process)


def stop_server_process(server: ServerProcess) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


def scrape_metrics(url: str) -> dict[str, float]:
    """Every sample of a Prometheus `/metrics` page, by name with labels; {} on failure."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def no_active_sessions(
    url: str, limit_s: float, stop: Callable[[], bool] = lambda: False
) -> float | None:
    """Wait until the server whose metrics are at `url` has no active session (up to
    `limit_s`, or until `stop()`): how long that took, or None when it never came."""
    started = time.monotonic()
    while not stop() and time.monotonic() - started < limit_s:
        if (await asyncio.to_thread(scrape_metrics, url)).get("voxrelay_active_sessions") == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    return None


async def send_requests(
    call: grpc.aio.StreamStreamCall[Any, Any], *requests: Any, close: bool = False
) -> bool:
    """Write `requests` (then half-close); False if the call ended under them."""
    try:
        for request in requests:
            await call.write(request)
        if close:
            await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        return False
    return True


class BareSpeechServicer(speech_pb2_grpc.SpeechServicer):
    """Base of the bare-grpcio baselines: the same service, only `Stream` implemented."""

    async def Synthesize(
        self,
        request: speech_pb2.SynthesizeRequest,
        context: grpc.aio.ServicerContext[speech_pb2.SynthesizeRequest, speech_pb2.StreamResponse],
    ) -> AsyncIterator[speech_pb2.StreamResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare baseline serves Stream only")
        yield speech_pb2.StreamResponse()  # unreachable: makes this an async generator

    async def ListVoices(
        self,
        request: speech_pb2.ListVoicesRequest,
        context: grpc.aio.ServicerContext[
            speech_pb2.ListVoicesRequest, speech_pb2.ListVoicesResponse
        ],
    ) -> speech_pb2.ListVoicesResponse:
        return speech_pb2.ListVoicesResponse()


def lifecycle_response(
    event: speech_pb2.LifecycleEvent.ValueType, turn: int
) -> speech_pb2.StreamResponse:
    """A lifecycle message, as the baselines send it."""
    return speech_pb2.StreamResponse(lifecycle=speech_pb2.Lifecycle(event=event, turn=turn))
