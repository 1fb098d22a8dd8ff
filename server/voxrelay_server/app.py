"""Builds the engines, the service and the gRPC server, and runs it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Mapping

import grpc

from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.config import ALL_ENGINES, ServerSettings
from voxrelay_server.engines.base import SpeechEngine
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.openai_engine import DEFAULT_BASE_URL as DEFAULT_OPENAI_BASE_URL
from voxrelay_server.engines.openai_engine import OpenAIEngine
from voxrelay_server.engines.piper_engine import PiperEngine, bundled_joe_voice
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.grpc_service import SpeechServicer
from voxrelay_server.service import SpeechService
from voxrelay_server.voices import VoiceCatalog

_LOG = logging.getLogger("voxrelay.server")
SPEECH_SERVICE_NAME = speech_pb2.DESCRIPTOR.services_by_name["Speech"].full_name


def build_engines(
    settings: ServerSettings, env: Mapping[str, str] = os.environ
) -> tuple[list[SpeechEngine], dict[str, str]]:
    """The engines enabled by `settings`, and hints for those that are not set up.

    The openai engine also takes `OPENAI_API_KEY` from `env` when no key is set.
    """
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
            api_key = settings.openai_api_key or env.get("OPENAI_API_KEY", "")
            if not (api_key or settings.openai_base_url):
                unconfigured["openai"] = (
                    "the openai engine is not configured on this server: start it with "
                    "VOXRELAY_OPENAI_API_KEY (or OPENAI_API_KEY) and/or "
                    "VOXRELAY_OPENAI_BASE_URL set"
                )
            else:
                engines.append(
                    OpenAIEngine(
                        base_url=settings.openai_base_url or DEFAULT_OPENAI_BASE_URL,
                        api_key=api_key,
                        model=settings.openai_model,
                        voices=settings.openai_voices,
                    )
                )
        else:
            raise ValueError(f"unknown engine {name!r}: choose from {', '.join(ALL_ENGINES)}")
    return engines, unconfigured


def build_service(settings: ServerSettings, env: Mapping[str, str] = os.environ) -> SpeechService:
    """Load every enabled engine (the piper model once) and wrap them in a service."""
    engines, unconfigured = build_engines(settings, env)
    catalog = VoiceCatalog(engines, settings.default_voice, unconfigured)
    return SpeechService(catalog, default_max_inflight_segments=settings.max_inflight_segments)


def create_server(service: SpeechService, settings: ServerSettings) -> tuple[grpc.aio.Server, int]:
    """A gRPC server serving `service` on `settings.listen`; returns it and the bound port."""
    server = grpc.aio.server()
    speech_pb2_grpc.add_SpeechServicer_to_server(SpeechServicer(service), server)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(
            f"cannot listen on {settings.listen}: the address is in use or not valid here"
        )
    return server, port


def configure_logging(settings: ServerSettings) -> None:
    """Log to stderr at `settings.log_level`."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def serve(settings: ServerSettings) -> None:
    """Run the server until SIGINT or SIGTERM, then stop gracefully."""
    started = time.perf_counter()
    service = await asyncio.to_thread(build_service, settings)
    server, port = create_server(service, settings)
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
