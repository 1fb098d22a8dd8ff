"""Metrics, traces and logs of real sessions on a real server over loopback sockets.

Each server is built the way `serve()` builds it (`build_service` with an
`Observability`, its interceptors in `create_server`); metrics are scraped over
real HTTP, spans go to an in-memory exporter of a tracer provider that is
passed in (the global provider is never touched), and log lines are formatted
by the real formatters.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    Request,
    Response,
    audio_of,
    cancel,
    collect,
    config,
    read_one,
    read_rest,
    text,
    turn_done,
    wait_for,
)
from voxrelay.v1 import speech_pb2, speech_pb2_grpc
from voxrelay_server.app import build_service, configure_logging, create_server
from voxrelay_server.config import ServerSettings
from voxrelay_server.engines.tone import SAMPLE_RATE_HZ as TONE_RATE_HZ
from voxrelay_server.engines.tone import VOICE_NAME as TONE_VOICE
from voxrelay_server.engines.tone import ToneEngine
from voxrelay_server.observability import Observability
from voxrelay_server.observability import tracing as t
from voxrelay_server.observability.logs import (
    SESSION_LOGGER,
    SUMMARY_MESSAGE,
    JsonFormatter,
)
from voxrelay_server.observability.metrics import parse_listen
from voxrelay_server.service import SpeechService

if TYPE_CHECKING:
    from voxrelay.v1.speech_pb2_grpc import SpeechAsyncStub

# Two turns, three segments; the splitter cuts them exactly here (min 20 chars).
# Each text ends with a space, so its last sentence is complete as it arrives: without
# one, a slow run lets the dry rule cut a segment before the turn's end reaches it.
TURN_1 = ["The first sentence is right here. ", "And a second one follows it. "]
TURN_2 = ["Then a third sentence closes. "]
SEGMENTS = [
    (1, 1, "The first sentence is right here."),
    (1, 2, "And a second one follows it."),
    (2, 1, "Then a third sentence closes."),
]
TWO_TURNS = [
    config(voice=TONE_VOICE),
    *map(text, TURN_1),
    turn_done(),
    *map(text, TURN_2),
    turn_done(),
]
FAILING_TEXT = "This segment is doomed to fail [[fail]] right now."


@dataclass
class Observed:
    """A started server with its metrics endpoint, span exporter and log buffer."""

    target: str
    metrics_port: int
    observability: Observability
    service: SpeechService
    tone: ToneEngine
    spans: InMemorySpanExporter
    logs: io.StringIO

    def stub(self, channel: grpc.aio.Channel) -> SpeechAsyncStub:
        return speech_pb2_grpc.SpeechStub(channel)

    def scrape(self) -> Metrics:
        """/metrics over HTTP (blocking: call through `scrape_async` from the loop)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return Metrics(response.read().decode())

    async def scrape_async(self) -> Metrics:
        return await asyncio.to_thread(self.scrape)

    def recorded(self, code: str) -> float:
        """Sessions with this outcome, read in-process (for waiting, not asserting)."""
        registry = self.observability.metrics.registry  # type: ignore[union-attr]
        return registry.get_sample_value("voxrelay_sessions_total", {"code": code}) or 0.0

    async def wait_recorded(self, code: str, count: int = 1) -> None:
        await wait_for(lambda: self.recorded(code) >= count)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines()]


class Metrics:
    """A parsed scrape: `value(name, **labels)` of any sample."""

    def __init__(self, exposition: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a labelled counter child never incremented."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)


ObservedFactory = Callable[..., Awaitable[Observed]]


@pytest.fixture
def session_logger() -> Iterator[logging.Logger]:
    """The session logger at DEBUG, restored afterwards."""
    logger = logging.getLogger(SESSION_LOGGER)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield logger
    logger.setLevel(level)


@pytest_asyncio.fixture
async def observed_server(session_logger: logging.Logger) -> AsyncIterator[ObservedFactory]:
    """Start servers wired like `serve()`, each with its own registry, spans and logs."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(**settings: Any) -> Observed:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "engines": ("tone",),
            "default_voice": TONE_VOICE,
            "tone_first_audio_ms": 2.0,
        }
        server_settings = ServerSettings(**(values | settings))
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        observability = Observability(server_settings, tracer_provider=provider)
        service = build_service(server_settings, observability=observability)
        server, port = create_server(
            service, server_settings, interceptors=observability.server_interceptors()
        )
        metrics_port = observability.start()
        assert metrics_port
        await server.start()
        logs = io.StringIO()
        handler = logging.StreamHandler(logs)
        handler.setFormatter(JsonFormatter())
        session_logger.addHandler(handler)

        async def cleanup() -> None:
            session_logger.removeHandler(handler)
            await server.stop(grace=None)
            await service.aclose()
            observability.shutdown()
            provider.shutdown()

        cleanups.append(cleanup)
        (tone,) = service.catalog.engines
        assert isinstance(tone, ToneEngine)
        return Observed(
            f"127.0.0.1:{port}", metrics_port, observability, service, tone, exporter, logs
        )

    yield start
    for cleanup in reversed(cleanups):
        await cleanup()


async def run_session(observed: Observed, requests: Sequence[Request]) -> list[Response]:
    """One Stream call that ends OK; waits until the server has recorded it."""
    async with grpc.aio.insecure_channel(observed.target) as channel:
        responses = await collect(observed.stub(channel), requests)
    await observed.wait_recorded("OK")
    return responses


async def run_failing_session(
    observed: Observed, requests: Sequence[Request], code: grpc.StatusCode
) -> list[Response]:
    """One Stream call that ends with `code`; waits until the server has recorded it."""
    before = observed.recorded(code.name)
    async with grpc.aio.insecure_channel(observed.target) as channel:
        call = observed.stub(channel).Stream(iter(requests))
        responses = await read_rest(call)
        assert await call.code() == code
    await wait_for(lambda: observed.recorded(code.name) > before)
    return responses


# Metrics


async def test_metrics_count_turns_segments_audio_and_latency(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server()
    responses = await run_session(observed, TWO_TURNS)

    metrics = await observed.scrape_async()
    expected_samples = sum(observed.tone.samples_for(segment) for _, _, segment in SEGMENTS)
    received_samples = sum(len(chunk.data) // 2 for chunk in audio_of(responses))
    assert received_samples == expected_samples
    assert metrics.value("voxrelay_sessions_total", code="OK") == 1
    assert metrics.value("voxrelay_turns_total", cancelled="false") == 2
    assert metrics.value("voxrelay_turns_total", cancelled="true") == 0
    assert metrics.value("voxrelay_segments_total", outcome="ok") == 3
    assert metrics.value("voxrelay_segments_total", outcome="cancelled") == 0
    assert metrics.value("voxrelay_audio_seconds_total") == pytest.approx(
        expected_samples / TONE_RATE_HZ
    )
    # One time-to-first-audio and one engine latency per segment, each a real duration.
    ttfa = "voxrelay_time_to_first_audio_seconds"
    assert metrics.value(f"{ttfa}_count", engine="tone") == 3
    assert 0 < metrics.value(f"{ttfa}_sum", engine="tone") < 3 * 5.0
    assert metrics.value(f"{ttfa}_bucket", engine="tone", le="5.0") == 3
    latency = "voxrelay_engine_latency_seconds"
    assert metrics.value(f"{latency}_count", engine="tone") == 3
    # The tone engine waits `tone_first_audio_ms` (2 ms) before its first audio.
    assert metrics.value(f"{latency}_sum", engine="tone") >= 3 * 0.002
    assert metrics.value("voxrelay_errors_total", code="INTERNAL") == 0
    assert metrics.value("voxrelay_active_sessions") == 0
    assert metrics.value("voxrelay_synthesis_slots", engine="tone") == observed.tone.max_concurrency
    assert metrics.value("voxrelay_synthesis_queue_depth", engine="tone") == 0


async def test_metrics_show_a_mid_turn_silence_a_listener_would_hear(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server()
    # 10 ms of tone per character: the first sentence plays for about 0.4 s, and the
    # second's engine only starts to speak after 1.2 s. Then a turn that keeps up.
    late_turn = [
        text("This first sentence plays for a short while. "),
        text("[[latency_ms=1200]]The second one comes too late. "),
        turn_done(),
    ]
    in_time_turn = [
        text("This first sentence plays for a short while. "),
        text("The second one is ready long before that. "),
        turn_done(),
    ]
    await run_session(observed, [config(voice=TONE_VOICE), *late_turn, *in_time_turn])

    metrics = await observed.scrape_async()
    gap = "voxrelay_playback_gap_seconds"
    # One observation per segment after its turn's first.
    assert metrics.value(f"{gap}_count", engine="tone") == 2
    assert metrics.value(f"{gap}_bucket", engine="tone", le="0.0") == 1  # the one in time
    # The listener ran dry for about 1.2 s less the first sentence's 0.45 s.
    assert 0.5 < metrics.value(f"{gap}_sum", engine="tone") < 1.2


async def test_metrics_count_errors_by_status_code(observed_server: ObservedFactory) -> None:
    observed = await observed_server()
    # The engine fails half-way through the second segment.
    await run_failing_session(
        observed,
        [config(), text("A first sentence that works. "), text(FAILING_TEXT), turn_done()],
        grpc.StatusCode.INTERNAL,
    )
    # An empty text chunk breaks the contract after the session opened.
    await run_failing_session(
        observed, [config(), text("Some words. "), text("")], grpc.StatusCode.INVALID_ARGUMENT
    )

    metrics = await observed.scrape_async()
    assert metrics.value("voxrelay_errors_total", code="INTERNAL") == 1
    assert metrics.value("voxrelay_errors_total", code="INVALID_ARGUMENT") == 1
    assert metrics.value("voxrelay_sessions_total", code="INTERNAL") == 1
    assert metrics.value("voxrelay_sessions_total", code="INVALID_ARGUMENT") == 1
    assert metrics.value("voxrelay_sessions_total", code="OK") == 0
    assert metrics.value("voxrelay_segments_total", outcome="error") == 1
    assert metrics.value("voxrelay_segments_total", outcome="ok") >= 1
    # The failed segment's first half was still sent: it had a first audio.
    assert metrics.value("voxrelay_time_to_first_audio_seconds_count", engine="tone") >= 2


async def test_metrics_count_sessions_refused_before_they_start(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server()
    await run_failing_session(
        observed, [config(voice="nope/none"), text("Hi.")], grpc.StatusCode.INVALID_ARGUMENT
    )
    await run_failing_session(
        observed, [config(speed=9.0), text("Hi.")], grpc.StatusCode.INVALID_ARGUMENT
    )

    metrics = await observed.scrape_async()
    assert metrics.value("voxrelay_sessions_total", code="INVALID_ARGUMENT") == 2
    assert metrics.value("voxrelay_errors_total", code="INVALID_ARGUMENT") == 2
    assert metrics.value("voxrelay_active_sessions") == 0


async def test_active_sessions_gauge_follows_a_session(observed_server: ObservedFactory) -> None:
    observed = await observed_server()
    assert (await observed.scrape_async()).value("voxrelay_active_sessions") == 0
    async with grpc.aio.insecure_channel(observed.target) as channel:
        call = observed.stub(channel).Stream()
        await call.write(config())
        await call.write(text("Hello there, how are you today? "))
        assert (await read_one(call)).HasField("session_started")
        started = await read_one(call)
        assert started.lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_STARTED
        metrics = observed.scrape()  # blocking the loop: no task comes or goes meanwhile
        assert metrics.value("voxrelay_active_sessions") == 1
        # This test's own tasks, the server's, and the session's: the gauge counts them.
        assert metrics.value("voxrelay_event_loop_tasks") == len(asyncio.all_tasks())
        await call.write(turn_done())
        await call.done_writing()
        await read_rest(call)
        assert await call.code() == grpc.StatusCode.OK
    await observed.wait_recorded("OK")
    assert (await observed.scrape_async()).value("voxrelay_active_sessions") == 0


async def test_queue_depth_gauge_and_cancelled_session(observed_server: ObservedFactory) -> None:
    # One synthesis slot: while a slow segment holds it, the others wait in the queue.
    observed = await observed_server(tone_concurrency=1)
    slow = "This sentence takes its time [[latency_ms=30000]]. "
    async with grpc.aio.insecure_channel(observed.target) as channel:
        call = observed.stub(channel).Stream()
        await call.write(config())
        for chunk in [slow, "The second one must wait. ", "And so must the third."]:
            await call.write(text(chunk))
        await call.write(turn_done())

        async def queue_depth() -> float:
            return (await observed.scrape_async()).value(
                "voxrelay_synthesis_queue_depth", engine="tone"
            )

        await _wait_async(lambda: queue_depth(), 2)
        metrics = await observed.scrape_async()
        assert metrics.value("voxrelay_synthesis_slots_in_use", engine="tone") == 1
        call.cancel()  # the client goes away mid-session
    await observed.wait_recorded("CANCELLED")
    await _wait_async(lambda: queue_depth(), 0)
    metrics = await observed.scrape_async()
    assert metrics.value("voxrelay_sessions_total", code="CANCELLED") == 1
    assert metrics.value("voxrelay_segments_total", outcome="cancelled") == 3
    assert metrics.value("voxrelay_turns_total", cancelled="true") == 1
    assert metrics.value("voxrelay_active_sessions") == 0


async def _wait_async(
    read: Callable[[], Awaitable[float]], expected: float, timeout_s: float = 5.0
) -> None:
    """Poll an HTTP-scraped value until it equals `expected`, within a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (value := await read()) != expected:
        if loop.time() > deadline:
            raise AssertionError(f"value {value}, expected {expected}")
        await asyncio.sleep(0.01)


async def test_metrics_server_serves_on_a_real_port_and_stops(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server()
    assert observed.observability.metrics_port == observed.metrics_port
    samples = (await observed.scrape_async()).samples
    assert any(name == "voxrelay_active_sessions" for name, _ in samples)
    observed.observability.shutdown()
    with pytest.raises(urllib.error.URLError):
        await observed.scrape_async()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    with pytest.raises(ValueError, match="host:port"):
        parse_listen("localhost")


def test_metrics_are_off_without_an_address() -> None:
    observability = Observability(ServerSettings())
    assert observability.metrics is None
    assert observability.tracing is None
    assert observability.start() is None
    assert observability.server_interceptors() == []


# Traces


def _spans(observed: Observed) -> list[ReadableSpan]:
    return list(observed.spans.get_finished_spans())


async def _wait_for_rpc_span(observed: Observed) -> ReadableSpan:
    """The Stream rpc span: it ends last, after the session's turn and segment spans."""

    def rpc_spans() -> list[ReadableSpan]:
        return [s for s in _spans(observed) if s.name == "/voxrelay.v1.Speech/Stream"]

    await wait_for(lambda: bool(rpc_spans()))
    (rpc,) = rpc_spans()
    return rpc


def _by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def _attribute(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(key)


async def test_spans_of_turns_and_segments_under_the_rpc_span(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server()
    await run_session(observed, TWO_TURNS)
    rpc = await _wait_for_rpc_span(observed)
    spans = _spans(observed)
    assert rpc.kind is SpanKind.SERVER
    assert rpc.context is not None

    turns = {_attribute(span, t.ATTR_TURN): span for span in _by_name(spans, t.TURN_SPAN)}
    assert sorted(turns) == [1, 2]
    for turn in turns.values():
        assert turn.parent is not None and turn.context is not None
        assert turn.parent.span_id == rpc.context.span_id
        assert turn.context.trace_id == rpc.context.trace_id
        assert _attribute(turn, t.ATTR_CANCELLED) is False
        assert _attribute(turn, t.ATTR_VOICE) == TONE_VOICE
        assert _attribute(turn, t.ATTR_FIRST_AUDIO_AT)
    assert _attribute(turns[1], t.ATTR_SEGMENTS) == 2
    assert _attribute(turns[2], t.ATTR_SEGMENTS) == 1

    segments = _by_name(spans, t.SEGMENT_SPAN)
    assert len(segments) == len(SEGMENTS)
    for span in segments:
        turn_number, number = _attribute(span, t.ATTR_TURN), _attribute(span, t.ATTR_SEGMENT)
        (segment_text,) = [s for tn, n, s in SEGMENTS if (tn, n) == (turn_number, number)]
        turn_span = turns[turn_number]
        assert span.parent is not None and turn_span.context is not None
        assert span.parent.span_id == turn_span.context.span_id
        assert _attribute(span, t.ATTR_TEXT_LENGTH) == len(segment_text)
        assert _attribute(span, t.ATTR_OUTCOME) == "ok"
        assert _attribute(span, t.ATTR_AUDIO_SECONDS) == pytest.approx(
            observed.tone.samples_for(segment_text) / TONE_RATE_HZ
        )
        assert span.status.status_code is StatusCode.UNSET
        # The first audio was sent while the span was open, after synthesis started.
        events = {event.name: event.timestamp for event in span.events}
        first_audio = events[t.FIRST_AUDIO_EVENT]
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= events[t.SYNTHESIS_STARTED_EVENT] <= first_audio
        assert first_audio <= span.end_time
        assert _attribute(span, t.ATTR_FIRST_AUDIO_AT)
        assert _attribute(span, t.ATTR_TIME_TO_FIRST_AUDIO_MS) > 0

    # Without log_sensitive_text no span carries the text, under any attribute.
    for span in spans:
        assert t.ATTR_TEXT not in (span.attributes or {})
        for value in (span.attributes or {}).values():
            assert not any(segment in str(value) for _, _, segment in SEGMENTS)


async def test_failed_segment_span_records_the_error(observed_server: ObservedFactory) -> None:
    observed = await observed_server()
    await run_failing_session(
        observed,
        [config(), text("A first sentence that works. "), text(FAILING_TEXT), turn_done()],
        grpc.StatusCode.INTERNAL,
    )
    rpc = await _wait_for_rpc_span(observed)
    spans = _spans(observed)
    segments = {_attribute(s, t.ATTR_SEGMENT): s for s in _by_name(spans, t.SEGMENT_SPAN)}
    assert _attribute(segments[1], t.ATTR_OUTCOME) == "ok"
    assert segments[1].status.status_code is StatusCode.UNSET
    failed = segments[2]
    assert _attribute(failed, t.ATTR_OUTCOME) == "error"
    assert _attribute(failed, t.ATTR_ERROR_CODE) == "INTERNAL"
    assert failed.status.status_code is StatusCode.ERROR
    assert "INTERNAL" in (failed.status.description or "")
    # Its turn never ended normally; the rpc carries the status too.
    (turn,) = _by_name(spans, t.TURN_SPAN)
    assert turn.status.status_code is StatusCode.ERROR
    assert rpc.status.status_code is StatusCode.ERROR


async def test_barge_in_marks_spans_cancelled_not_failed(observed_server: ObservedFactory) -> None:
    observed = await observed_server()
    async with grpc.aio.insecure_channel(observed.target) as channel:
        call = observed.stub(channel).Stream()
        await call.write(config())
        await call.write(text("A sentence that is slow to speak [[latency_ms=30000]]. "))
        assert (await read_one(call)).HasField("session_started")
        started = await read_one(call)
        assert started.lifecycle.event == speech_pb2.LIFECYCLE_EVENT_TURN_STARTED
        await call.write(cancel())
        await call.done_writing()
        await read_rest(call)
        assert await call.code() == grpc.StatusCode.OK
    await observed.wait_recorded("OK")
    await _wait_for_rpc_span(observed)
    spans = _spans(observed)
    (segment,) = _by_name(spans, t.SEGMENT_SPAN)
    assert _attribute(segment, t.ATTR_OUTCOME) == "cancelled"
    assert _attribute(segment, t.ATTR_CANCELLED) is True
    assert segment.status.status_code is StatusCode.UNSET
    assert t.FIRST_AUDIO_EVENT not in {event.name for event in segment.events}
    (turn,) = _by_name(spans, t.TURN_SPAN)
    assert _attribute(turn, t.ATTR_CANCELLED) is True
    metrics = await observed.scrape_async()
    assert metrics.value("voxrelay_turns_total", cancelled="true") == 1
    assert metrics.value("voxrelay_segments_total", outcome="cancelled") == 1


async def test_sensitive_text_goes_into_spans_only_when_enabled(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server(log_sensitive_text=True)
    await run_session(observed, TWO_TURNS)
    await _wait_for_rpc_span(observed)
    texts = {
        (_attribute(s, t.ATTR_TURN), _attribute(s, t.ATTR_SEGMENT)): _attribute(s, t.ATTR_TEXT)
        for s in _by_name(_spans(observed), t.SEGMENT_SPAN)
    }
    assert texts == {(turn, number): segment for turn, number, segment in SEGMENTS}


# Logs


async def test_summary_line_is_json_with_counts_and_no_text(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server()
    await run_session(observed, TWO_TURNS)
    raw = observed.logs.getvalue()
    lines = observed.log_lines()  # every line parses as JSON
    assert lines
    summaries = [line for line in lines if line["message"] == SUMMARY_MESSAGE]
    assert len(summaries) == 1
    (summary,) = summaries
    assert summary["level"] == "INFO"
    assert summary["logger"] == SESSION_LOGGER
    assert summary["time"].endswith("+00:00")
    assert summary["voice"] == TONE_VOICE
    assert summary["turns"] == 2
    assert summary["segments"] == 3
    assert summary["outcome"] == "OK"
    assert 0 < summary["ttfa_ms"] < 5000
    expected_samples = sum(observed.tone.samples_for(segment) for _, _, segment in SEGMENTS)
    assert summary["audio_s"] == round(expected_samples / TONE_RATE_HZ, 3)
    # Debug lines name their session, turn and segment; none holds the text.
    released = [line for line in lines if line["message"] == "segment released"]
    assert [(line["turn"], line["segment"]) for line in released] == [
        (turn, number) for turn, number, _ in SEGMENTS
    ]
    assert {line["session"] for line in lines} == {summary["session"]}
    for _, _, segment in SEGMENTS:
        assert segment not in raw
    assert '"text"' not in raw


async def test_summary_of_a_failed_session_names_its_status(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server()
    whole = config(segmentation=speech_pb2.SEGMENTATION_SENTENCES)  # one segment
    await run_failing_session(
        observed, [whole, text(FAILING_TEXT), turn_done()], grpc.StatusCode.INTERNAL
    )
    (summary,) = [line for line in observed.log_lines() if line["message"] == SUMMARY_MESSAGE]
    assert summary["outcome"] == "INTERNAL"
    assert summary["turns"] == 1
    assert summary["segments"] == 1


async def test_debug_lines_carry_text_only_with_log_sensitive_text(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server(log_sensitive_text=True)
    await run_session(observed, TWO_TURNS)
    released = [line for line in observed.log_lines() if line["message"] == "segment released"]
    assert [line["text"] for line in released] == [segment for _, _, segment in SEGMENTS]


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logging")
def test_configure_logging_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(ServerSettings(log_format="json", log_level="debug"))
    configure_logging(ServerSettings(log_format="json", log_level="info"))  # replaces, no twin
    logger = logging.getLogger("voxrelay.test")
    logger.debug("not at info level")
    logger.info("turn %d done", 3, extra={"session": "abc123", "turn": 3, "segment": 2})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it broke")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert set(first) == {"time", "level", "logger", "message", "session", "turn", "segment"}
    assert first["level"] == "INFO"
    assert first["logger"] == "voxrelay.test"
    assert first["message"] == "turn 3 done"
    assert (first["session"], first["turn"], first["segment"]) == ("abc123", 3, 2)
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["exception"]


@pytest.mark.usefixtures("restore_root_logging")
def test_configure_logging_text_appends_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(ServerSettings(log_format="text", log_level="info"))
    logging.getLogger("voxrelay.test").info(
        SUMMARY_MESSAGE, extra={"session": "abc123", "voice": "tone/square", "note": "two words"}
    )
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(
        'INFO voxrelay.test: session summary session=abc123 voice=tone/square note="two words"'
    )


async def test_each_call_is_counted_under_the_status_its_client_saw(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server(tone_ms_per_char=50.0, tone_realtime_factor=1.0)
    long_turn = [config(), text("A long answer that will not finish in time."), turn_done()]
    async with grpc.aio.insecure_channel(observed.target) as channel:
        stub = observed.stub(channel)
        late = stub.Stream(iter(long_turn), timeout=0.4)  # the client's deadline passes
        await read_rest(late)
        assert await late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await observed.wait_recorded("DEADLINE_EXCEEDED")

        cancelled = stub.Stream(iter(long_turn))
        await read_one(cancelled)
        cancelled.cancel()
        await observed.wait_recorded("CANCELLED")

        silent = stub.Stream()  # cancelled before its first message: counted all the same
        await silent.wait_for_connection()
        await wait_for(lambda: observed.service.active_sessions == 1)
        silent.cancel()
        await observed.wait_recorded("CANCELLED", count=2)
    metrics = await observed.scrape_async()
    assert metrics.value("voxrelay_sessions_total", code="DEADLINE_EXCEEDED") == 1
    assert metrics.value("voxrelay_sessions_total", code="CANCELLED") == 2
    assert metrics.value("voxrelay_active_sessions") == 0


async def test_every_stream_starts_with_session_started_and_its_id_is_in_the_logs(
    observed_server: ObservedFactory,
) -> None:
    observed = await observed_server()
    mulaw_8k = speech_pb2.AudioFormat(encoding=speech_pb2.AUDIO_ENCODING_MULAW, sample_rate_hz=8000)
    responses = await run_session(
        observed, [config(audio_format=mulaw_8k), text("Hello there. "), turn_done()]
    )
    kinds = [r.WhichOneof("response") for r in responses]
    assert kinds.count("session_started") == 1
    assert kinds[:3] == ["session_started", "lifecycle", "audio"]  # then TURN_STARTED, audio
    started = responses[0].session_started
    assert started.voice == TONE_VOICE  # the server's default: none was asked for
    assert started.encoding == speech_pb2.AUDIO_ENCODING_MULAW
    assert started.sample_rate_hz == 8000
    assert all(r.audio.sample_rate_hz == 8000 for r in responses if r.HasField("audio"))
    lines = observed.log_lines()
    (summary,) = [line for line in lines if line["message"] == SUMMARY_MESSAGE]
    assert summary["session"] == started.session_id
    assert len(started.session_id) == 12 and int(started.session_id, 16) >= 0
    assert {line["session"] for line in lines} == {started.session_id}  # every line
