"""OpenTelemetry traces: the rpc span, a span per turn and one per segment.

The rpc span comes from opentelemetry-instrumentation-grpc's aio server
interceptor (it also continues a caller's `traceparent`). Each session's turn
spans ("voxrelay.turn") are children of it, and each segment span
("voxrelay.segment") is a child of its turn's span, with events at synthesis
start, the engine's first audio and the first audio sent to the caller.

Nothing here touches the global tracer provider: the provider is passed in, so
tests can use an in-memory exporter and two servers never share one.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

from voxrelay_server.errors import ErrorCode, SpeechError
from voxrelay_server.observability.timeline import (
    SegmentOutcome,
    SegmentRecord,
    TimelineObserver,
    TurnRecord,
)
from voxrelay_server.settings import SessionSettings

TURN_SPAN = "voxrelay.turn"
SEGMENT_SPAN = "voxrelay.segment"
FIRST_AUDIO_EVENT = "voxrelay.first_audio"
"""Event on turn and segment spans: the first audio message was sent."""
SYNTHESIS_STARTED_EVENT = "voxrelay.synthesis_started"
ENGINE_FIRST_AUDIO_EVENT = "voxrelay.engine_first_audio"

# Attribute names, in one place so dashboards and tests agree.
ATTR_SESSION = "voxrelay.session_id"
ATTR_VOICE = "voxrelay.voice"
ATTR_TURN = "voxrelay.turn"
ATTR_SEGMENT = "voxrelay.segment"
ATTR_TEXT_LENGTH = "voxrelay.text_length"
ATTR_TEXT = "voxrelay.text"
"""Only set with `log_sensitive_text`."""
ATTR_FIRST_AUDIO_AT = "voxrelay.first_audio_at"
"""ISO 8601 UTC time of the first audio message, like the reference SDK's first_content_at."""
ATTR_TIME_TO_FIRST_AUDIO_MS = "voxrelay.time_to_first_audio_ms"
ATTR_ENGINE_LATENCY_MS = "voxrelay.engine_latency_ms"
ATTR_AUDIO_SECONDS = "voxrelay.audio_seconds"
ATTR_OUTCOME = "voxrelay.outcome"
ATTR_CANCELLED = "voxrelay.cancelled"
ATTR_SEGMENTS = "voxrelay.segments"
ATTR_ERROR_CODE = "voxrelay.error.code"


def otlp_tracer_provider(endpoint: str) -> TracerProvider:
    """A provider that batches spans to an OTLP/gRPC collector at `endpoint`."""
    # Imported here: the exporter pulls in its own gRPC stubs, needed only when on.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "voxrelay")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


class Tracing:
    """Traces of one server: the rpc interceptor and a span observer per session."""

    def __init__(self, provider: trace.TracerProvider, *, log_sensitive_text: bool) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("voxrelay_server")
        self._log_sensitive_text = log_sensitive_text

    def server_interceptor(self) -> grpc.aio.ServerInterceptor:
        """The interceptor that opens a span per rpc (continuing the caller's trace)."""
        # The instrumentation package ships no type hints.
        interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider
        )
        return interceptor

    def observer(self, session_id: str, settings: SessionSettings) -> TracingObserver:
        """The span observer of a session opened now.

        Called from the rpc handler, so the current context holds the rpc span:
        it becomes the parent of the session's turn spans.
        """
        return TracingObserver(
            self._tracer,
            otel_context.get_current(),
            session_id,
            settings,
            log_sensitive_text=self._log_sensitive_text,
        )


class TracingObserver(TimelineObserver):
    """Opens and ends one session's turn and segment spans."""

    def __init__(
        self,
        tracer: trace.Tracer,
        parent: otel_context.Context,
        session_id: str,
        settings: SessionSettings,
        *,
        log_sensitive_text: bool,
    ) -> None:
        super().__init__(session_id, settings)
        self._tracer = tracer
        self._parent = parent
        self._log_sensitive_text = log_sensitive_text
        self._turn_spans: dict[int, Span] = {}
        self._segment_spans: dict[tuple[int, int], Span] = {}
        self._session_error: SpeechError | None = None

    def on_turn_opened(self, turn: TurnRecord) -> None:
        self._turn_spans[turn.turn] = self._tracer.start_span(
            TURN_SPAN,
            context=self._parent,
            attributes={
                ATTR_SESSION: self.session_id,
                ATTR_VOICE: self.settings.voice,
                ATTR_TURN: turn.turn,
            },
        )

    def on_segment_released(self, segment: SegmentRecord, text: str) -> None:
        turn_span = self._turn_spans.get(segment.turn)
        parent = trace.set_span_in_context(turn_span) if turn_span else self._parent
        attributes: dict[str, Any] = {
            ATTR_SESSION: self.session_id,
            ATTR_VOICE: self.settings.voice,
            ATTR_TURN: segment.turn,
            ATTR_SEGMENT: segment.segment,
            ATTR_TEXT_LENGTH: segment.text_chars,
        }
        if self._log_sensitive_text:
            attributes[ATTR_TEXT] = text
        self._segment_spans[(segment.turn, segment.segment)] = self._tracer.start_span(
            SEGMENT_SPAN, context=parent, attributes=attributes
        )

    def on_segment_started(self, segment: SegmentRecord) -> None:
        span = self._segment_spans.get((segment.turn, segment.segment))
        if span is not None:
            span.add_event(SYNTHESIS_STARTED_EVENT)

    def on_engine_first_audio(self, segment: SegmentRecord) -> None:
        span = self._segment_spans.get((segment.turn, segment.segment))
        if span is not None:
            span.add_event(ENGINE_FIRST_AUDIO_EVENT)
            if segment.engine_latency_s is not None:
                span.set_attribute(ATTR_ENGINE_LATENCY_MS, segment.engine_latency_s * 1000)

    def on_first_audio(self, segment: SegmentRecord, *, first_of_turn: bool) -> None:
        now_ns = time.time_ns()
        first_audio_at = _iso(now_ns)
        spans = [self._segment_spans.get((segment.turn, segment.segment))]
        if first_of_turn:
            spans.append(self._turn_spans.get(segment.turn))
        for span in spans:
            if span is not None:
                span.add_event(FIRST_AUDIO_EVENT, timestamp=now_ns)
                span.set_attribute(ATTR_FIRST_AUDIO_AT, first_audio_at)
        segment_span = spans[0]
        if segment_span is not None and segment.time_to_first_audio_s is not None:
            segment_span.set_attribute(
                ATTR_TIME_TO_FIRST_AUDIO_MS, segment.time_to_first_audio_s * 1000
            )

    def on_segment_finished(self, segment: SegmentRecord) -> None:
        span = self._segment_spans.pop((segment.turn, segment.segment), None)
        if span is None:
            return
        assert segment.outcome is not None
        span.set_attribute(ATTR_OUTCOME, segment.outcome.value)
        span.set_attribute(ATTR_AUDIO_SECONDS, self._seconds(segment.samples_sent))
        if segment.outcome is SegmentOutcome.CANCELLED:
            span.set_attribute(ATTR_CANCELLED, True)
        error = segment.error
        if error is None and segment.outcome is SegmentOutcome.CANCELLED:
            error = self._session_error  # cut short by the session's failure, if any
        if error is not None and error.code is not ErrorCode.CANCELLED:
            _record_error(span, error)
        span.end()

    def on_turn_finished(self, turn: TurnRecord) -> None:
        span = self._turn_spans.pop(turn.turn, None)
        if span is None:
            return
        span.set_attribute(ATTR_CANCELLED, turn.cancelled)
        span.set_attribute(ATTR_SEGMENTS, len(turn.segments))
        span.set_attribute(ATTR_TEXT_LENGTH, turn.text_chars)
        span.set_attribute(ATTR_AUDIO_SECONDS, self._seconds(turn.samples_sent))
        error = self._session_error
        if not turn.completed and error is not None and error.code is not ErrorCode.CANCELLED:
            _record_error(span, error)
        span.end()

    def session_ended(self, error: SpeechError | None) -> None:
        # Known before the base class ends the open spans, so they can carry it.
        self._session_error = error
        super().session_ended(error)

    def _seconds(self, samples: int) -> float:
        return samples / self.settings.output.sample_rate_hz


def _record_error(span: Span, error: SpeechError) -> None:
    span.set_attribute(ATTR_ERROR_CODE, error.code.name)
    span.set_status(Status(StatusCode.ERROR, f"{error.code.name}: {error.message}"))


def _iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, tz=UTC).isoformat(timespec="microseconds")
