"""Prometheus metrics: per-session counters and latencies, server gauges, /metrics over HTTP.

Every server has its own `CollectorRegistry`, so two servers in one process (as
in the tests) never share or collide on metrics. Gauges of server state (active
sessions, synthesis queues) are read from the `SpeechService` at scrape time
rather than tracked by hand, so they cannot drift from the truth.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voxrelay_server.errors import SpeechError
from voxrelay_server.observability.timeline import SegmentRecord, TimelineObserver, TurnRecord
from voxrelay_server.settings import SessionSettings

if TYPE_CHECKING:
    from voxrelay_server.service import SpeechService

OK = "OK"
"""The `code` label of sessions that ended normally."""

LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
)  # fmt: skip
"""Histogram buckets from 5 ms (an instant engine) to 5 s (a stalled one)."""
GAP_BUCKETS_S = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Playback gaps: the first bucket (0) counts segments whose audio was in time."""


class ServerMetrics:
    """The metrics of one server, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._watched = False
        self.loop: asyncio.AbstractEventLoop | None = None
        """The server's event loop, once known: its task count is a gauge."""
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.sessions = Counter(
            "voxrelay_sessions",
            "Sessions ended, by status code (OK for a normal end)",
            ["code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "voxrelay_errors",
            "Sessions that ended with an error, by status code",
            ["code"],
            registry=self.registry,
        )
        self.turns = Counter(
            "voxrelay_turns",
            "Turns ended; cancelled=true for barge-in or a session cut short",
            ["cancelled"],
            registry=self.registry,
        )
        self.segments = Counter(
            "voxrelay_segments",
            "Segments finished, by how their synthesis ended (ok, error, cancelled)",
            ["outcome"],
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "voxrelay_audio_seconds",
            "Seconds of audio sent to callers",
            registry=self.registry,
        )
        self.time_to_first_audio = Histogram(
            "voxrelay_time_to_first_audio_seconds",
            "From the text completing a segment to its first audio message sent",
            ["engine"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.playback_gap = Histogram(
            "voxrelay_playback_gap_seconds",
            "Per segment after a turn's first: how long a listener playing at real-time "
            "pace had nothing to play before its first audio (0: in time)",
            ["engine"],
            buckets=GAP_BUCKETS_S,
            registry=self.registry,
        )
        self.engine_latency = Histogram(
            "voxrelay_engine_latency_seconds",
            "From a segment getting a synthesis slot to its engine's first audio",
            ["engine"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def watch(self, service: SpeechService) -> None:
        """Export `service`'s active sessions and synthesis pools as gauges."""
        if self._watched:
            raise RuntimeError("these metrics already watch a service")
        self._watched = True
        self.registry.register(_ServiceCollector(service, self))

    def session_rejected(self, error: SpeechError) -> None:
        """Count a session refused before it started, like one that failed."""
        self.sessions.labels(error.code.name).inc()
        self.errors.labels(error.code.name).inc()

    def observer(self, session_id: str, settings: SessionSettings) -> MetricsObserver:
        """The observer that records one session into these metrics."""
        return MetricsObserver(self, session_id, settings)


class MetricsObserver(TimelineObserver):
    """Counts one session's turns, segments, audio and latencies."""

    def __init__(self, metrics: ServerMetrics, session_id: str, settings: SessionSettings) -> None:
        super().__init__(session_id, settings)
        self._metrics = metrics

    def on_engine_first_audio(self, segment: SegmentRecord) -> None:
        if segment.engine_latency_s is not None:
            self._metrics.engine_latency.labels(self.engine).observe(segment.engine_latency_s)

    def on_first_audio(self, segment: SegmentRecord, *, first_of_turn: bool) -> None:
        if segment.time_to_first_audio_s is not None:
            self._metrics.time_to_first_audio.labels(self.engine).observe(
                segment.time_to_first_audio_s
            )
        if segment.playback_gap_s is not None:
            self._metrics.playback_gap.labels(self.engine).observe(segment.playback_gap_s)

    def on_audio_sent(self, segment: SegmentRecord, samples: int) -> None:
        self._metrics.audio_seconds.inc(samples / self.settings.output.sample_rate_hz)

    def on_segment_finished(self, segment: SegmentRecord) -> None:
        assert segment.outcome is not None
        self._metrics.segments.labels(segment.outcome.value).inc()

    def on_turn_finished(self, turn: TurnRecord) -> None:
        self._metrics.turns.labels("true" if turn.cancelled else "false").inc()

    def on_session_ended(self, error: SpeechError | None) -> None:
        code = OK if error is None else error.code.name
        self._metrics.sessions.labels(code).inc()
        if error is not None:
            self._metrics.errors.labels(code).inc()


class _ServiceCollector(Collector):
    """Gauges read from the service when Prometheus scrapes."""

    def __init__(self, service: SpeechService, metrics: ServerMetrics) -> None:
        self._service = service
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        active, queued, in_use, slots, tasks = families
        active.add_metric([], _read(lambda: self._service.active_sessions))
        loop = self._metrics.loop
        if loop is not None:
            tasks.add_metric([], _read(lambda: len(asyncio.all_tasks(loop))))
        for name, scheduler in list(self._service.schedulers.items()):
            queued.add_metric([name], _read(lambda: scheduler.queued))  # noqa: B023
            in_use.add_metric([name], _read(lambda: scheduler.in_use))  # noqa: B023
            slots.add_metric([name], scheduler.slots)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "voxrelay_active_sessions",
                "Calls holding a place under --max-sessions: sessions, and calls not yet "
                "past their first message",
            ),
            GaugeMetricFamily(
                "voxrelay_synthesis_queue_depth",
                "Segments waiting for a synthesis slot, per engine",
                labels=["engine"],
            ),
            GaugeMetricFamily(
                "voxrelay_synthesis_slots_in_use",
                "Segments being synthesized now, per engine",
                labels=["engine"],
            ),
            GaugeMetricFamily(
                "voxrelay_synthesis_slots",
                "Segments an engine can synthesize at once, server-wide",
                labels=["engine"],
            ),
            GaugeMetricFamily(
                "voxrelay_event_loop_tasks",
                "asyncio tasks alive in the server's event loop (a leak shows as growth)",
            ),
        ]


def _read(value: Callable[[], int]) -> float:
    # Scrapes run on the HTTP server's thread while the event loop mutates the
    # service's dicts; iterating one mid-change raises RuntimeError. A retry is
    # enough for a gauge, and cheaper than a round trip through the loop.
    for _ in range(3):
        try:
            return float(value())
        except RuntimeError:
            continue
    return float("nan")


class MetricsHttpServer:
    """Serves a registry at http://host:port/metrics on a daemon thread."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        host, port = parse_listen(listen)
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)

    @property
    def port(self) -> int:
        """The port bound (the real one when asked for port 0)."""
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) as (host, port); raises ValueError if malformed."""
    host, separator, port = listen.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(
            f"metrics address {listen!r} is not host:port: use e.g. 127.0.0.1:9464 or [::]:9464"
        )
    return host.strip("[]") or "0.0.0.0", int(port)
