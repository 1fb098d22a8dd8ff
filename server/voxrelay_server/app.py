"""Builds the engines, the service and the gRPC server, and runs it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server import security
from voxrelay_server.config import ALL_ENGINES, ServerSettings
from voxrelay_server.dispatcher import SessionLimits
from voxrelay_server.engines.base import SpeechEngine
from voxrelay_server.engines.espeak_engine import EspeakEngine
from voxrelay_server.engines.openai_engine import DEFAULT_BASE_URL as DEFAULT_OPENAI_BASE_URL
from voxrelay_server.engines.openai_engine import OpenAIEngine
from voxrelay_server.engines.piper_engine import PiperEngine, bundled_joe_voice, voice_files
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.errors import ErrorCode, SpeechError
from voxrelay_server.grpc_service import SpeechServicer
from voxrelay_server.health import HealthServicer
from voxrelay_server.http import HttpListener
from voxrelay_server.http.openai_speech import voice_map
from voxrelay_server.memory import (
    EngineMemory,
    MemoryBound,
    memory_bound,
    trim_when_idle,
    tune_allocator,
)
from voxrelay_server.observability import Observability
from voxrelay_server.observability import configure_logging as configure_logging
from voxrelay_server.service import SpeechService
from voxrelay_server.serving import (
    SHUTTING_DOWN_MESSAGE,
    CallLimits,
    ListenError,
    ServiceHolder,
)
from voxrelay_server.voices import VoiceCatalog

_LOG = logging.getLogger("voxrelay.server")
SPEECH_SERVICE_NAME = speech_pb2.DESCRIPTOR.services_by_name["Speech"].full_name
HEALTH_SERVICE_NAMES = ("", SPEECH_SERVICE_NAME)
"""Names the health service answers for; "" is the server as a whole."""
CLIENT_PING_MIN_INTERVAL_S = 10.0
"""Clients may send keepalive pings this often; more often earns a GOAWAY."""
ABORT_GRACE_S = 5.0
"""After the shutdown grace: how long cut-off calls get to send their last messages. The
audio not yet sent is dropped, so these wait only behind what the client was already
sent: a second or two for a listener playing in real time (messages hold at most a
second of audio), plus whatever the client's own transport took in ahead."""
WATCHERS_GRACE_S = 2.0
"""Then: how long health watches get to hear NOT_SERVING before they are ended."""
RELEASE_BOUND_S = 5.0
"""Then: how long releasing the engines and flushing traces may take. The process
exits after it, whatever an engine is still doing, so SIGTERM ends it within
`--prestop-delay` + `--shutdown-grace` plus these three bounds and `EXIT_MARGIN_S`
(`ExitDeadline` enforces it even when the event loop is held)."""
EXIT_MARGIN_S = 1.0
"""Then: how long logging "stopped" and exiting may take before `ExitDeadline` forces it."""
FORCED_EXIT_CODE = 70
"""The exit status when `ExitDeadline` ends a shutdown that overran its bound (EX_SOFTWARE:
something held the server, typically an engine running blocking code in the event loop)."""
_GRPC_INT_MAX = 2**31 - 1  # gRPC's "never" for keepalive_time_ms


def shutdown_bound_s(grace_s: float) -> float:
    """The longest a drain with `grace_s` for calls in flight takes, then the exit."""
    return grace_s + ABORT_GRACE_S + WATCHERS_GRACE_S + RELEASE_BOUND_S + EXIT_MARGIN_S


class ExitDeadline:
    """Ends the process once a shutdown has overrun its bound, whatever it is doing.

    The bounds of `serve()`'s shutdown are timers of its event loop; an engine that
    blocks that loop (a blocking call in a coroutine) stops them all. This one runs on
    a thread of its own: armed when a shutdown begins, it flushes the logs and exits
    the process with `FORCED_EXIT_CODE` when its time runs out. `voxrelay serve`
    arms one; servers embedded in other programs (and tests) have none.
    """

    def __init__(self, exit_process: Callable[[int], object] = os._exit) -> None:
        self._exit_process = exit_process
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def arm(self, seconds: float, phase: str) -> None:
        """Exit `seconds` from now unless re-armed or disarmed; `phase` names it in the log."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(seconds, self._expire, args=(seconds, phase))
            self._timer.daemon = True  # never what keeps the process alive
            self._timer.start()

    def disarm(self) -> None:
        """The shutdown finished in time: no forced exit."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _expire(self, seconds: float, phase: str) -> None:
        _LOG.error(
            "shutdown overran its bound of %g s (%s): exiting now with status %d, whatever "
            "the server was still doing",
            seconds,
            phase,
            FORCED_EXIT_CODE,
        )
        _flush_logs()
        self._exit_process(FORCED_EXIT_CODE)


def _flush_logs() -> None:
    """Flush every handler of the root and named loggers (safe from any thread)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            with contextlib.suppress(Exception):  # a closed stream: nothing to flush
                handler.flush()


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
            voices = [bundled_joe_voice()]
            if settings.piper_voices:
                voices += voice_files(Path(settings.piper_voices))
            engines.append(PiperEngine(voices, workers=settings.workers))
        elif name == "espeak":
            engines.append(EspeakEngine(workers=settings.espeak_workers))
        elif name == "tone":
            engines.append(
                ToneEngine(
                    first_audio_ms=settings.tone_first_audio_ms,
                    ms_per_char=settings.tone_ms_per_char,
                    realtime_factor=settings.tone_realtime_factor,
                    concurrency=settings.tone_concurrency,
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
                        concurrency=settings.openai_concurrency,
                    )
                )
        else:
            raise ValueError(f"unknown engine {name!r}: choose from {', '.join(ALL_ENGINES)}")
    for name in ALL_ENGINES:
        if name not in settings.engines:
            unconfigured[name] = (
                f"the {name} engine is not loaded on this server"
                + (" (a synthetic engine for tests and benchmarks)" if name == "tone" else "")
                + f": voxrelay serve --engines {','.join([*settings.engines, name])} loads it"
            )
    return engines, unconfigured


def _check_voice_map(settings: ServerSettings, catalog: VoiceCatalog) -> None:
    """Refuse to start when `--http-voice-map` names a voice this server does not offer:
    otherwise every request for that OpenAI name would fail, blaming its caller."""
    for name, voice in voice_map(settings.http_voice_map).items():
        try:
            catalog.resolve(voice)
        except SpeechError as error:
            raise SpeechError(
                error.code,
                f"--http-voice-map (VOXRELAY_HTTP_VOICE_MAP) maps {name} to {voice}: "
                f"{error.message}",
            ) from None


def build_service(
    settings: ServerSettings,
    env: Mapping[str, str] = os.environ,
    *,
    observability: Observability | None = None,
) -> SpeechService:
    """Load every enabled engine (the piper model once) and wrap them in a service.

    Sessions report to `observability` (by default, what `settings` enable).
    """
    engines, unconfigured = build_engines(settings, env)
    catalog = VoiceCatalog(engines, settings.default_voice, unconfigured)
    _check_voice_map(settings, catalog)
    if observability is None:
        observability = Observability(settings)
    service = SpeechService(
        catalog,
        default_max_inflight_segments=settings.max_inflight_segments,
        max_sessions=settings.max_sessions,
        limits=SessionLimits(
            max_buffered_text_chars=settings.max_buffered_text_chars,
            max_segment_chars=settings.max_segment_chars,
            audio_buffer_bytes=settings.session_audio_buffer_bytes,
            idle_timeout_s=settings.idle_timeout_s,
        ),
        observer_factory=observability.observer_factory,
        on_rejected=observability.session_rejected,
        on_idle=trim_when_idle,  # a burst's freed memory goes back to the system
    )
    observability.watch(service)
    return service


def settings_memory_bound(settings: ServerSettings, service: SpeechService) -> MemoryBound:
    """How far the memory of a server with these settings and engines can grow."""
    return memory_bound(
        max_sessions=settings.max_sessions,
        piper_runs=sum(
            engine.runs_held
            for engine in service.catalog.engines
            if isinstance(engine, PiperEngine)
        ),
        engines=[EngineMemory.of(engine) for engine in service.catalog.engines],
        session_audio_buffer_bytes=settings.session_audio_buffer_bytes,
        max_buffered_text_chars=settings.max_buffered_text_chars,
        max_segment_chars=settings.max_segment_chars,
        http=bool(settings.http_listen),
    )


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """gRPC server options for keepalive and connection age, from `settings`."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    keepalive_ms = ms(settings.keepalive_time_s) if settings.keepalive_time_s > 0 else None
    options = [
        ("grpc.keepalive_time_ms", keepalive_ms or _GRPC_INT_MAX),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout_s)),
        # Idle connections are the ones whose peer may have vanished unnoticed: ping
        # them too, without a cap, and let clients keep idle channels alive the same way.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(CLIENT_PING_MIN_INTERVAL_S)),
        # gRPC binds with SO_REUSEPORT by default: a second server on this address would
        # start beside this one and take a share of its new connections. Without it the
        # bind fails and the start stops with "the address is in use".
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_s > 0:
        # Clients reconnect (maybe elsewhere) after a GOAWAY; calls on the old
        # connection get the grace period to finish.
        options += [
            ("grpc.max_connection_age_ms", ms(settings.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", ms(settings.max_connection_age_grace_s)),
        ]
    return options


@dataclass
class RunningParts:
    """A gRPC server and the parts `serve()` drives while it starts and stops.

    Start it with `start()` (not `server.start()`), so health never says SERVING
    before `set_service()`.
    """

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    speech: SpeechServicer
    service: ServiceHolder
    http: HttpListener | None = None
    """The HTTP listener (`--http-listen`), on the same calls runner; None when off."""

    async def start(self) -> None:
        """Set the health status, then listen (gRPC, then HTTP)."""
        ready = self.service.current is not None
        await self._set_health(
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.server.start()
        if self.http is not None:
            try:
                await self.http.start()
            except BaseException:
                await self.server.stop(None)
                raise

    async def set_service(self, service: SpeechService) -> None:
        """The voices are loaded: serve Speech calls and report SERVING."""
        self.service.set(service)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def report_stopping(self) -> None:
        """The prestop phase: NOT_SERVING on Check and Watch, while calls are still taken.

        Load balancers that poll health stop sending new calls; `stop()` then drains.
        """
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace_s: float) -> None:
        """Drain: NOT_SERVING, no new calls, `grace_s` for calls in flight, then UNAVAILABLE."""
        # Stop taking calls first, so nobody who sees NOT_SERVING can still start one;
        # the long timeout is only a backstop for the steps below.
        stopping = asyncio.create_task(self.server.stop(grace_s + ABORT_GRACE_S + WATCHERS_GRACE_S))
        await asyncio.sleep(0)  # let the shutdown begin: it closes the listener at once
        if self.http is not None:
            await self.http.drain()  # and the HTTP listener's, with its idle connections
        await self.health.enter_graceful_shutdown()
        calls = self.speech.calls
        if not await calls.wait_idle(grace_s):
            _LOG.warning(
                "%d calls still running after %g s: ending them with UNAVAILABLE",
                len(calls),
                grace_s,
            )
            error = SpeechError(ErrorCode.UNAVAILABLE, SHUTTING_DOWN_MESSAGE)
            calls.abort(error)
            if self.service.current is not None:
                self.service.current.fail_all(error)
            await calls.wait_idle(ABORT_GRACE_S)
        # Health watches never end by themselves: end them now rather than at the backstop,
        # once each has told its watcher NOT_SERVING. Meanwhile, within the same bound,
        # the HTTP connections close (a response still stuck writing is cut).
        await asyncio.gather(
            self.health.watchers_sent(health_pb2.HealthCheckResponse.NOT_SERVING, WATCHERS_GRACE_S),
            self.http.close() if self.http is not None else asyncio.sleep(0),
        )
        await self.server.stop(None)
        await stopping

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in HEALTH_SERVICE_NAMES:
            await self.health.set(name, status)


def create_server_parts(
    settings: ServerSettings,
    service: SpeechService | None = None,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningParts:
    """A gRPC server on `settings.listen` with Speech, health and reflection, not started.

    Without `service`, Speech calls get UNAVAILABLE until `set_service()`.
    `interceptors` (e.g. `Observability.server_interceptors()`) run after security's.
    """
    # Interceptors run in list order: later ones only see authenticated calls.
    interceptors = [*security.server_interceptors(settings), *interceptors]
    credentials = security.server_credentials(settings)
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
    holder = ServiceHolder(service)
    speech = SpeechServicer(
        holder,
        CallLimits(
            start_timeout_s=settings.start_timeout_s, send_timeout_s=settings.send_timeout_s
        ),
    )
    speech_pb2_grpc.add_SpeechServicer_to_server(speech, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SPEECH_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        raise ListenError(
            f"cannot listen on {settings.listen}: the address is in use or not valid here"
        )
    # The HTTP listener calls through the same runner: the same service, limits and
    # calls in flight, so it drains with the gRPC calls.
    http = HttpListener(settings, speech.runner) if settings.http_listen else None
    return RunningParts(server, port, health_servicer, speech, holder, http)


def create_server(
    service: SpeechService,
    settings: ServerSettings,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server serving `service` on `settings.listen`; returns it and the bound port.

    For tests and embedding; `create_server_parts` also gives the health service.
    """
    parts = create_server_parts(settings, service, interceptors=interceptors)
    return parts.server, parts.port


async def serve(
    settings: ServerSettings,
    *,
    stop: asyncio.Event | None = None,
    build: Callable[[ServerSettings], SpeechService] | None = None,
    deadline: ExitDeadline | None = None,
) -> None:
    """Run the server until SIGINT or SIGTERM (or `stop` is set), then stop gracefully.

    It listens before loading the voices, so health checks answer at once:
    NOT_SERVING while the voices load, SERVING once they have, NOT_SERVING
    again from the stop on: first for `settings.prestop_delay_s` while new calls
    are still served (until `stop` is set again), then while draining. `build`
    makes the service (tests slow it down); by default `build_service` with this
    server's metrics, traces and logs. `deadline`, when given, is armed as the
    shutdown begins: the process ends within the shutdown's bound
    (`--prestop-delay` + `shutdown_bound_s(--shutdown-grace)`) whatever holds it.
    """
    started = time.perf_counter()
    tune_allocator()
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    observability = Observability(settings)
    if build is None:
        build = functools.partial(build_service, observability=observability)
    observability.start()  # before listening: a metrics port in use fails the start
    parts = create_server_parts(settings, interceptors=observability.server_interceptors())
    await parts.start()
    host = settings.listen.rpartition(":")[0]
    _LOG.info("voxrelay listening on %s:%d (NOT_SERVING: loading voices)", host, parts.port)
    try:
        # A signal while loading is acted on once loading is done: engines
        # hold threads that a half-built service could not release.
        service = await asyncio.to_thread(build, settings)
    except BaseException:
        await parts.server.stop(None)
        if parts.http is not None:
            await parts.http.close()
        observability.shutdown()
        raise
    await parts.set_service(service)
    _LOG.info(
        "ready (SERVING) in %.1f s with %d voices (default %s); memory can grow by %s",
        time.perf_counter() - started,
        len(service.voices()),
        service.catalog.default_voice,
        settings_memory_bound(settings, service).describe(),
    )
    await stop.wait()
    if settings.prestop_delay_s > 0:
        if deadline is not None:
            bound_s = settings.prestop_delay_s + shutdown_bound_s(settings.shutdown_grace_s)
            deadline.arm(bound_s, "prestop delay, drain and release")
        await _prestop(parts, stop, settings.prestop_delay_s)
    if deadline is not None:
        # From the drain's start: the same end if the delay ran its course, an earlier
        # one if a second signal cut it short.
        deadline.arm(shutdown_bound_s(settings.shutdown_grace_s), "drain and release")
    _LOG.info(
        "stopping (NOT_SERVING): listener closed, letting calls in flight finish for up to %g s",
        settings.shutdown_grace_s,
    )
    await parts.stop(settings.shutdown_grace_s)
    # After the calls, so their last spans are flushed too; in a thread, as the flush
    # waits on the network (an unreachable collector retries for about 10 s).
    release = asyncio.gather(service.aclose(), asyncio.to_thread(observability.shutdown))
    try:
        await asyncio.wait_for(release, RELEASE_BOUND_S)
    except TimeoutError:
        _LOG.warning(
            "engines and traces not released within %g s: stopping without them",
            RELEASE_BOUND_S,
        )
    _LOG.info("stopped")


async def _prestop(parts: RunningParts, stop: asyncio.Event, delay_s: float) -> None:
    """Say NOT_SERVING for `delay_s` while still serving, or until `stop` is set again."""
    stop.clear()  # a second SIGTERM or SIGINT sets it again
    await parts.report_stopping()
    _LOG.info(
        "prestop (NOT_SERVING): for %g s (--prestop-delay) new calls are still "
        "served, so load balancers stop sending; a second signal skips the rest",
        delay_s,
    )
    try:
        await asyncio.wait_for(stop.wait(), delay_s)
    except TimeoutError:
        _LOG.info("prestop delay of %g s over", delay_s)
    else:
        _LOG.info("second signal: skipping the rest of the prestop delay")
