"""Builds the engines, the service and the gRPC server, and runs it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from voxrelay.v1 import speech_pb2_grpc
from voxrelay_server.engines.base import SpeechEngine
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.openai_engine import OpenAIEngine
from voxrelay_server.engines.piper_engine import PiperEngine, bundled_joe_voice
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.grpc_service import SpeechServicer
from voxrelay_server.service import SpeechService
from voxrelay_server.voices import VoiceCatalog

_LOG = logging.getLogger("voxrelay.server")

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_VOICE = "piper/en_US-joe-medium"
DEFAULT_MAX_INFLIGHT_SEGMENTS = 4
DEFAULT_SHUTDOWN_GRACE_S = 10.0
ALL_ENGINES = ("piper", "espeak", "tone", "openai")


@dataclass(frozen=True)
class ServerSettings:
    """Everything `voxrelay serve` can set; each has a flag and a VOXRELAY_* variable."""

    listen: str = DEFAULT_LISTEN
    default_voice: str = DEFAULT_VOICE
    engines: tuple[str, ...] = ALL_ENGINES
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Segments the piper engine synthesizes at once (one onnxruntime thread each)."""
    max_inflight_segments: int = DEFAULT_MAX_INFLIGHT_SEGMENTS
    tone_first_audio_ms: float = 0.0
    tone_ms_per_char: float = 10.0
    tone_realtime_factor: float = 0.0
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S


def build_engines(
    settings: ServerSettings, env: Mapping[str, str] = os.environ
) -> tuple[list[SpeechEngine], dict[str, str]]:
    """The engines enabled by `settings`, and hints for those that are not set up."""
    engines: list[SpeechEngine] = []
    unconfigured: dict[str, str] = {}
    for name in settings.engines:
        if name == "piper":
            engines.append(PiperEngine([bundled_joe_voice()], workers=settings.workers))
        elif name == "espeak":
            engines.append(EspeakEngine())
        elif name == "tone":
            engines.append(
                ToneEngine(
                    first_audio_ms=settings.tone_first_audio_ms,
                    ms_per_char=settings.tone_ms_per_char,
                    realtime_factor=settings.tone_realtime_factor,
                )
            )
        elif name == "openai":
            openai = OpenAIEngine.from_env(env)
            if openai is None:
                unconfigured["openai"] = (
                    "the openai engine is not configured on this server: start it with "
                    "VOXRELAY_OPENAI_API_KEY (or OPENAI_API_KEY) and/or "
                    "VOXRELAY_OPENAI_BASE_URL set"
                )
            else:
                engines.append(openai)
        else:
            raise ValueError(f"unknown engine {name!r}: choose from {', '.join(ALL_ENGINES)}")
    return engines, unconfigured


def build_service(settings: ServerSettings, env: Mapping[str, str] = os.environ) -> SpeechService:
    """Load every enabled engine (the piper model once) and wrap them in a service."""
    engines, unconfigured = build_engines(settings, env)
    catalog = VoiceCatalog(engines, settings.default_voice, unconfigured)
    return SpeechService(catalog, default_max_inflight_segments=settings.max_inflight_segments)


def create_server(service: SpeechService, listen: str) -> tuple[grpc.aio.Server, int]:
    """A gRPC server serving `service` on `listen`; returns it and the bound port."""
    server = grpc.aio.server()
    speech_pb2_grpc.add_SpeechServicer_to_server(SpeechServicer(service), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}: the address is in use or not valid here")
    return server, port


async def serve(settings: ServerSettings) -> None:
    """Run the server until SIGINT or SIGTERM, then stop gracefully."""
    started = time.perf_counter()
    service = await asyncio.to_thread(build_service, settings)
    server, port = create_server(service, settings.listen)
    await server.start()
    host = settings.listen.rpartition(":")[0]
    _LOG.info(
        "voxrelay listening on %s:%d with %d voices (default %s), ready in %.1f s",
        host,
        port,
        len(service.voices()),
        service.catalog.default_voice,
        time.perf_counter() - started,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    _LOG.info(
        "stopping: letting calls in flight finish for up to %.0f s", settings.shutdown_grace_s
    )
    await server.stop(settings.shutdown_grace_s)
    await service.aclose()
    _LOG.info("stopped")
